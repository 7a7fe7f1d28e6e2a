"""clip-tiny against clip-tiny-hardneg after the same training time: compositional probes, zero-shot, retrieval.

    python benchmarks/probes_hardneg.py --minutes 7 [--train-size 20000] [--eval-size 2000] [--json] [--out FILE]

Both recipes train side by side (one thread and one data worker each, so the machine's load falls on both alike;
``--sequential`` trains one after the other) on the built-in scenes (seed 0; ``--single-fraction`` single objects),
then are evaluated on held-out scenes (seed 1): the built-in probe suite (``vlmkit eval probes --suite builtin``),
zero-shot top-1 over the 30 color x shape classes, and text->image / image->text Recall@1. The issue's targets:
relation-swap and attribute-swap accuracy >= 0.9 with hard negatives, and retrieval R@1 within 2 points of the plain
run.

``--arm NAME KEY=VALUE ...`` adds clip-tiny-hardneg arms with overrides of their own (variants, or repeats with
another ``train.seed``), trained from the same warm start and scored against the same plain run; ``--reuse`` scores
finished arms as they are (when they were trained with the settings asked for now), so that arms can join a round.
The report names the machine and each arm's steps: a CPU-minute budget bought four times fewer steps on an AVX2-only
CPU at fp32 than on the bf16-capable one of the README's rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

from lit_vs_scratch import train_all, trained_run  # noqa: E402  (shared benchmark plumbing)
from train_throughput import machine_info  # noqa: E402

MODELS = ("clip-tiny", "clip-tiny-hardneg")
TARGET_PROBES = ("aro_relation", "aro_attribute")
ARM_RECORD = "benchmark_arm.json"  # in each arm's run folder: the recipe, minutes and overrides it was trained with


def prepare_data(workdir: Path, train_size: int, eval_size: int, single_fraction: float) -> tuple[Path, Path]:
    """Training scenes (seed 0) with ``single_fraction`` single-object scenes; held-out scenes (seed 1, half)."""
    from vlmkit.demo import _synth

    train_dir, heldout_dir = workdir / "data" / "train", workdir / "data" / "heldout"
    _synth(train_dir, train_size, seed=0, single_fraction=single_fraction)
    _synth(heldout_dir, eval_size, seed=1)
    return train_dir, heldout_dir


def evaluate(model: Any, heldout_dir: Path, seed: int) -> dict[str, Any]:
    from vlmkit.data import load_samples
    from vlmkit.data.probes import builtin_suite
    from vlmkit.eval.probes import evaluate_probes
    from vlmkit.eval.retrieval import evaluate_retrieval
    from vlmkit.eval.zeroshot import evaluate_zeroshot, read_classes

    probes = evaluate_probes(model, builtin_suite(heldout_dir, seed))
    samples = load_samples(str(heldout_dir / "captions.csv"))
    zeroshot = evaluate_zeroshot(model, samples, read_classes(heldout_dir / "classes.txt"))
    retrieval = evaluate_retrieval(model, samples)
    choices = {kind: values for kind, values in probes.per_type.items() if "accuracy" in values}
    return {"probes": {kind: round(values["accuracy"], 4) for kind, values in choices.items()},
            "probe_counts": {kind: values["num"] for kind, values in choices.items()},
            "winoground": {k: round(v, 4) for k, v in probes.metrics.items() if k.endswith("_score")},
            "mean_probe_accuracy": round(probes.metrics.get("mean_accuracy", float("nan")), 4),
            "zeroshot_acc1": round(zeroshot.metrics["acc1"], 4),
            "t2i_r1": round(retrieval["image_retrieval_recall@1"], 4),
            "i2t_r1": round(retrieval["text_retrieval_recall@1"], 4),
            **({"phrase_heads": phrase_heads(model)} if getattr(model, "phrase_heads", None) is not None else {})}


def phrase_heads(model: Any, scenes: int = 300) -> dict[str, Any]:
    """What each tower's own phrase head reads (binding_diagnostics.head_checks) on fresh two-object scenes."""
    from binding_diagnostics import head_checks, two_object_scenes

    size = int(model.config.vision.image_size)
    return {k: round(v, 4) if isinstance(v, float) else v
            for k, v in head_checks(model, two_object_scenes(scenes, size, seed=14)).items()}


def table(report: dict[str, Any]) -> str:
    arms, machine = list(report["results"]), report["machine"]
    results, training = report["results"], report["training"]
    widths = [max(10, len(arm)) for arm in arms]

    def row(label: str, values: list[str]) -> str:
        return f"{label:24}" + "".join(f" {value:>{width}}" for value, width in zip(values, widths))

    lines = [f"machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['cores']} cores; load average "
             f"{report['load_average']}",
             row("arm", ["clip-tiny", "hardneg", *arms[2:]]),
             row("steps", [str(training[arm]["steps"]) for arm in arms])]
    for kind in results["clip-tiny"]["probes"]:
        lines.append(row(kind, [f"{results[arm]['probes'].get(kind, float('nan')):.3f}" for arm in arms]))
    for key in ("mean_probe_accuracy", "zeroshot_acc1", "t2i_r1", "i2t_r1"):
        lines.append(row(key, [f"{results[arm][key]:.3f}" for arm in arms]))
    for arm, targets in report["arm_targets"].items():
        for key, value in targets.items():
            lines.append(f"target {key}{'' if arm == 'clip-tiny-hardneg' else f' [{arm}]'}: {value}")
    return "\n".join(lines)


def targets_of(plain: dict[str, Any], hard: dict[str, Any]) -> dict[str, str]:
    """The issue's three targets for one hard-negative arm against the plain run."""
    targets = {f"{kind} >= 0.9 with hard negatives": ("met" if hard["probes"].get(kind, 0) >= 0.9 else "NOT met")
               + f" ({hard['probes'].get(kind, float('nan')):.3f}; plain {plain['probes'].get(kind, float('nan')):.3f})"
               for kind in TARGET_PROBES}
    drop = max(plain["t2i_r1"] - hard["t2i_r1"], plain["i2t_r1"] - hard["i2t_r1"])
    targets["retrieval R@1 within 2 points"] = ("met" if drop <= 0.02 else "NOT met") + f" (largest drop {drop:+.3f})"
    return targets


def parse_arms(specs: list[list[str]], parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """``--arm NAME KEY=VALUE ...`` -> {NAME: overrides}, checked."""
    arms: dict[str, list[str]] = {}
    for name, *overrides in specs:
        taken = name in MODELS or name == "warm-start" or name in arms
        if taken or not name.replace("-", "").replace("_", "").isalnum():
            parser.error(f"--arm {name!r}: give each extra arm its own name of letters, digits, - and _ (not "
                         f"{', '.join(MODELS)} or warm-start)")
        bad = [item for item in overrides if "=" not in item]
        if bad:
            parser.error(f"--arm {name}: {bad[0]!r} is not KEY=VALUE")
        arms[name] = overrides
    return arms


def check_reusable(run: Path, wanted: dict[str, Any] | None, parser: argparse.ArgumentParser) -> None:
    """A finished arm is scored again only if it was trained as asked now (recipe, minutes, overrides; not
    checked when ``wanted`` is None: --eval-only scores what is there)."""
    if not (run / "summary.json").exists():
        parser.error(f"{run} has no finished run to evaluate: train it first (drop --eval-only)")
    if wanted is None:
        return
    record = run / ARM_RECORD
    if not record.exists():
        parser.error(f"{run} does not say how it was trained ({ARM_RECORD} is missing): delete it to train it again")
    done = json.loads(record.read_text())
    if done != wanted:
        changed = ", ".join(key for key in wanted if done.get(key) != wanted[key])
        parser.error(f"{run} was trained with other settings ({changed}: {done}); delete it to train it again, or "
                     "ask for what it was trained with")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=7.0, help="training time budget per model")
    parser.add_argument("--workdir", default="runs/probes_hardneg")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="probe suite seed")
    parser.add_argument("--single-fraction", type=float, default=0.2,
                        help="fraction of single-object training scenes (default 0.2: most captions name several "
                             "objects, their colours and relations, which is what hard negatives can rewrite)")
    parser.add_argument("--warm-start", type=float, default=0.0, metavar="MINUTES",
                        help="NegCLIP's protocol: first train a plain clip-tiny for MINUTES on demo-style scenes "
                             "(--warm-single-fraction), then both runs fine-tune from it for --minutes each (a "
                             "finished warm start in --workdir is reused: delete runs/warm-start to retrain it)")
    parser.add_argument("--warm-single-fraction", type=float, default=0.8,
                        help="single-object share of the warm-start scenes (the demo's 0.8: shapes learned fast)")
    parser.add_argument("--warm-positions", choices=("random", "sincos"), default="sincos",
                        help="the warm start's vision position embeddings at init (both runs inherit them): 2-D "
                             "sine-cosine codes (default; clip-tiny-hardneg's), with which a tower can learn left "
                             "from right, or clip-tiny's random ones, with which it did not")
    parser.add_argument("--warm-pool", choices=("mean", "moments"), default="moments",
                        help="the warm start's vision pooling (both runs inherit it): the mean plus where each feature "
                             "is (default; clip-tiny-hardneg's), which keeps the layout, or clip-tiny's plain mean, "
                             "which pools a scene and its mirror image alike")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what --minutes counts: elapsed time, or each run's own CPU time (load-independent)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--arm", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                        help="one more clip-tiny-hardneg arm, named NAME, with these overrides on top of --set's "
                             "(repeatable), trained from the same warm start and scored alike: a variant "
                             "(--arm map3x 'train.lr_scales={text: 0.3, visual.moment_map: 3}') or a repeat with "
                             "another seed (--arm seed1 train.seed=1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="arms trained at once, side by side (default: one per core); the others wait")
    parser.add_argument("--reuse", action="store_true",
                        help="an arm whose run in --workdir has finished is scored as it is, not trained again "
                             "(to add arms to a round); it must have been trained with the recipe, minutes and "
                             "overrides asked for now (delete runs/NAME to retrain one)")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the finished runs in --workdir")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    arms = {"clip-tiny": ("clip-tiny", []), "clip-tiny-hardneg": ("clip-tiny-hardneg", []),
            **{name: ("clip-tiny-hardneg", extra) for name, extra in parse_arms(args.arm, parser).items()}}

    from vlmkit.eval import write_json
    from vlmkit.models.hub import load

    workdir = Path(args.workdir)
    started = time.perf_counter()
    train_dir, heldout_dir = prepare_data(workdir, args.train_size, args.eval_size, args.single_fraction)
    runs = workdir / "runs"
    args.overrides = [f"train.clock={args.clock}"] + args.overrides
    warm: dict[str, Any] | None = None
    if args.warm_start:
        warm_dir = workdir / "data" / "warm"
        from vlmkit.demo import _synth

        _synth(warm_dir, args.train_size, seed=2, single_fraction=args.warm_single_fraction)
        if args.eval_only or (runs / "warm-start" / "summary.json").exists():  # a finished warm start is reused
            warm = trained_run(runs / "warm-start")
        else:
            (warm,) = train_all(["clip-tiny"], warm_dir, runs, args.warm_start,
                                args.overrides + [f"model.vision.position_init={args.warm_positions}",
                                                  f"model.vision.pool={args.warm_pool}"],
                                args.sequential, run_names=["warm-start"])
        from vlmkit.config import load_config

        vision = load_config(runs / "warm-start" / "config.yaml")["model"]["vision"]  # what was trained, if reused
        warm.update(minutes=args.warm_start, single_fraction=args.warm_single_fraction,
                    positions=vision.get("position_init", "random"), pool=vision.get("pool", "cls"))
        args.overrides = args.overrides + [f"train.init={runs / 'warm-start' / 'model'}"]
    wanted = {name: {"recipe": recipe, "minutes": args.minutes, "overrides": args.overrides + extra}
              for name, (recipe, extra) in arms.items()}
    finished = {name for name in arms if args.eval_only or (args.reuse and (runs / name / "summary.json").exists())}
    for name in sorted(finished):
        check_reusable(runs / name, None if args.eval_only else wanted[name], parser)
    todo = [name for name in arms if name not in finished]
    if todo:
        train_all([arms[name][0] for name in todo], train_dir, runs, args.minutes, args.overrides, args.sequential,
                  run_names=todo, run_overrides=[arms[name][1] for name in todo], workers=args.workers)
    for name in todo:  # what each arm was trained with, for a later --reuse
        (runs / name / ARM_RECORD).write_text(json.dumps(wanted[name], indent=1))
    training = {name: trained_run(runs / name) for name in arms}  # one record, trained now or reused
    for name, record in training.items():
        record.update(reused=name in finished, **({"overrides": arms[name][1]} if arms[name][1] else {}))
    results = {name: evaluate(load(runs / name), heldout_dir, args.seed) for name in arms}
    arm_targets = {name: targets_of(results["clip-tiny"], results[name]) for name in arms if name != "clip-tiny"}
    report = {"machine": machine_info(threads=1 if not args.sequential else (os.cpu_count() or 1)),
              "minutes_per_model": args.minutes, "train_size": args.train_size, "eval_size": args.eval_size,
              "single_fraction": args.single_fraction, "clock": args.clock, "warm_start": warm,
              "training": training, "results": results, "targets": arm_targets["clip-tiny-hardneg"],
              "arm_targets": arm_targets,
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "seconds": round(time.perf_counter() - started, 1)}
    if args.out:
        write_json(Path(args.out), report)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return report


if __name__ == "__main__":
    main()

"""Curation on built-in data: does a DataComp-style pipeline make a better training pool than the raw one?

    python benchmarks/curation.py [--json] [--out FILE] [--pool 5000] [--steps 250] [--tiny]

1. A noisy pool of built-in scenes (``vlmkit.curate.noisy``: 30% mismatched captions, 20% exact or near
   duplicates, 1% corrupt files, 5% captions in French/German/Spanish, a few short / boilerplate captions and
   tiny / thin images), every sample labelled with its noise.
2. A scorer: clip-tiny trained on a small clean set of other scenes (seed 2) for ``--scorer-steps``.
3. Curation with the scorer (caption length, boilerplate, language, image size, exact / pHash / embedding dedup,
   CLIP score top fraction), on the local executor and on Ray (same kept set, checked), timed.
4. clip-tiny trained for the same ``--steps`` (batch 64, same seed) on the raw and on the curated pool, both
   evaluated on held-out clean scenes (seed 1): zero-shot top-1 over the 30 color x shape classes and
   Recall@1 both ways. JSON keys ``raw`` and ``curated``; each stage's precision and recall against the noise
   labels; pass-1 samples/s per executor.

Step counts are fixed (not time budgets), so the machine's load changes the time, not the result. The models are
clip-tiny with smaller towers and 32 px images (``MODEL``) so three trainings fit in minutes on 2 cores;
``--full-size`` uses the clip-tiny recipe as it is on 64 px scenes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent),) if p not in sys.path]

MODEL = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=96", "model.vision.layers=2",
         "model.vision.heads=4", "model.text.context_length=24", "model.text.width=96", "model.text.layers=2",
         "model.text.heads=4", "model.embed_dim=64", "tokenizer.vocab_size=512"]
TINY_MODEL = ["model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2", "model.text.width=32",
              "model.text.layers=1", "model.text.heads=2", "model.embed_dim=16", "tokenizer.vocab_size=300"]
# which injected noise each stage is meant to catch (precision: share of its drops that carry it; recall: share
# of the samples carrying it that the stage dropped)
TARGETS = {"decodable": ("corrupt",), "caption_length": ("short",), "boilerplate": ("boilerplate",),
           "language": ("foreign",), "image_size": ("bad_size",), "exact_dedup": ("duplicate",),
           "phash_dedup": ("near_duplicate",), "embedding_dedup": ("near_duplicate",), "clip_score": ("mismatched",)}


def benchmark_pipeline(image_size: int, top_fraction: float) -> dict[str, Any]:
    """The pipeline under test: DataComp's basic filter scaled to the scenes' size, dedup, CLIP score."""
    return {"description": "benchmark pipeline", "shard_size": 1000, "stages": [
        {"caption_length": {"min_words": 3, "min_chars": 6}}, "boilerplate", {"language": {"languages": ["en"]}},
        {"image_size": {"min_side": max(8, image_size * 3 // 4), "max_aspect": 3.0}}, "exact_dedup",
        {"phash_dedup": {"max_distance": 0}}, {"embedding_dedup": {"min_similarity": 0.999}},
        {"clip_score": {"top_fraction": top_fraction}}]}


def train_clip(data: Path, out: Path, steps: int, overrides: list[str], reuse: bool = False) -> dict[str, Any]:
    """Train clip-tiny (with ``overrides``) for ``steps``; ``reuse`` keeps a finished run with the same config."""
    from vlmkit.config import load_config
    from vlmkit.train import train

    config = load_config("clip-tiny", overrides + [f"train.steps={steps}", "train.minutes=null",
                                                   f"train.warmup={max(1, steps // 10)}", "train.seed=0"])
    marker = out / "benchmark.json"
    if reuse and marker.exists() and json.loads(marker.read_text())["config"] == config:
        return json.loads(marker.read_text())["result"]
    if out.exists():
        shutil.rmtree(out)  # this benchmark's own previous run
    result = train(config, data=str(data), out=out, progress=False)
    record = {"steps": result.steps, "seconds": round(result.seconds, 1), "final_loss": round(result.final_loss, 4),
              "model_dir": str(result.model_dir)}
    marker.write_text(json.dumps({"config": config, "result": record}, default=str))
    return record


def evaluate(model_dir: str, heldout: Path) -> dict[str, float]:
    import vlmkit
    from vlmkit.data import load_samples
    from vlmkit.eval.retrieval import evaluate_retrieval
    from vlmkit.eval.zeroshot import evaluate_zeroshot, read_classes

    model = vlmkit.load(model_dir, device="cpu")
    samples = load_samples(str(heldout / "captions.csv"))
    zeroshot = evaluate_zeroshot(model, samples, read_classes(heldout / "classes.txt"), workers=0)
    retrieval = evaluate_retrieval(model, samples, workers=0)
    return {"zeroshot_acc1": round(zeroshot.metrics["acc1"], 4),
            "t2i_r1": round(retrieval["image_retrieval_recall@1"], 4),
            "i2t_r1": round(retrieval["text_retrieval_recall@1"], 4)}


def stage_quality(ids: list[str], dropped_by: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """Per stage: dropped, precision and recall against the injected noise it targets; per noise kind: the
    share dropped by any stage (clean: the share kept)."""
    stages: dict[str, Any] = {}
    for stage, targets in TARGETS.items():
        dropped = [i for i, name in enumerate(dropped_by) if name == stage]
        carrying = [i for i, sample in enumerate(ids) if labels[sample] in targets]
        hits = sum(1 for i in dropped if labels[ids[i]] in targets)
        stages[stage] = {"targets": list(targets), "dropped": len(dropped),
                         "precision": round(hits / len(dropped), 4) if dropped else None,
                         "recall": round(hits / len(carrying), 4) if carrying else None}
    kinds = sorted(set(labels.values()))
    removed = {}
    for kind in kinds:
        members = [i for i, sample in enumerate(ids) if labels[sample] == kind]
        share = sum(1 for i in members if dropped_by[i]) / max(1, len(members))
        removed[kind] = round(1 - share if kind == "clean" else share, 4)
    return {"stages": stages, "removed_by_any_stage": {k: v for k, v in removed.items() if k != "clean"},
            "clean_kept": removed.get("clean")}


def run_curation(pool: Path, out: Path, pipeline: dict[str, Any], scorer: str, executor: str) -> Any:
    from vlmkit.curate import curate, pipeline_from_dict

    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    result = curate([pool / "shards"], out, pipeline_from_dict(pipeline), model=scorer, executor=executor,
                    progress=False)
    seconds = time.perf_counter() - started
    return result, {"seconds": round(seconds, 2), "samples_per_s": round(len(result.table) / seconds, 1),
                    "pass1_samples_per_s": result.report["pass1"]["samples_per_s"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/curation")
    parser.add_argument("--pool", type=int, default=5000, help="samples in the noisy pool")
    parser.add_argument("--scorer-size", type=int, default=1000, help="clean scenes the scorer trains on")
    parser.add_argument("--scorer-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=250, help="training steps on each pool (batch 64)")
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--top-fraction", type=float, default=0.5, help="clip_score stage: share kept")
    parser.add_argument("--executors", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--curate-only", action="store_true",
                        help="stop after curation: stage precision/recall and executor speed, no training")
    parser.add_argument("--full-size", action="store_true",
                        help="the clip-tiny recipe's own towers on 64 px scenes (slower: minutes per training)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long run (for the test): tiny everything")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)
    from vlmkit.curate.noisy import make_noisy_pool
    from vlmkit.data.synth import generate

    image_size, overrides = 32, MODEL + ["train.batch_size=64", "data.workers=1"]
    if args.full_size:  # the clip-tiny recipe as it is, on 64 px scenes
        image_size, overrides = 64, ["train.batch_size=64", "data.workers=1"]
    if args.tiny:
        args.pool, args.scorer_size, args.scorer_steps, args.steps, args.eval_size = 160, 60, 3, 3, 40
        overrides = MODEL + TINY_MODEL + ["train.batch_size=16", "data.workers=0", "train.threads=1"]
    executors = [name for name in args.executors.split(",") if name]
    workdir = Path(args.workdir)
    started = time.perf_counter()
    pool = workdir / "pool"
    summary = make_noisy_pool(pool, args.pool, seed=0, image_size=image_size)
    generate(str(workdir / "scorer_data"), args.scorer_size, seed=2, image_size=image_size, workers=1)
    generate(str(workdir / "heldout"), args.eval_size, seed=1, image_size=image_size, workers=1)
    scorer = train_clip(workdir / "scorer_data" / "shards", workdir / "scorer", args.scorer_steps, overrides,
                        reuse=True)
    pipeline = benchmark_pipeline(image_size, args.top_fraction)
    curated, timings = None, {}
    for executor in executors:
        if executor == "ray":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        result, timings[executor] = run_curation(pool, workdir / f"curated-{executor}", pipeline,
                                                 scorer["model_dir"], executor)
        if executor == "ray":
            ray.shutdown()
        if curated is None:
            curated = result
        else:
            timings[executor]["same_kept_set_as_" + executors[0]] = result.kept_ids == curated.kept_ids
    quality = stage_quality(curated.table.ids, list(curated.decisions.dropped_by), summary["labels"])
    runs: dict[str, Any] = {}
    for name, data in (("raw", pool / "shards"), ("curated", curated.out / "shards"))[:0 if args.curate_only else 2]:
        runs[name] = {**train_clip(data, workdir / f"train-{name}", args.steps, overrides)}
        runs[name].update(evaluate(runs[name].pop("model_dir"), workdir / "heldout"))
        runs[name]["pool_size"] = len(curated.table) if name == "raw" else int(curated.decisions.kept.sum())
    report = {"benchmark": "curation", "pool": summary["n"], "noise": summary["counts"], "image_size": image_size,
              "model_overrides": overrides,
              "scorer": {k: v for k, v in scorer.items() if k != "model_dir"}, "steps": args.steps,
              "pipeline": pipeline, "raw": runs.get("raw"), "curated": runs.get("curated"),
              "curated_wins": bool(runs) and all(runs["curated"][k] > runs["raw"][k]
                                                 for k in ("zeroshot_acc1", "t2i_r1", "i2t_r1")),
              "stage_counts": {s["stage"]: {"input": s["input"], "dropped": s["dropped"]}
                               for s in curated.report["stages"]},
              **quality, "executors": timings, "seconds": round(time.perf_counter() - started, 1)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = []
    if report["raw"]:
        lines.append(f"{'':16} {'raw':>8} {'curated':>8}")
        for key in ("pool_size", "zeroshot_acc1", "t2i_r1", "i2t_r1", "final_loss"):
            lines.append(f"{key:16} {report['raw'][key]:8} {report['curated'][key]:8}")
    lines.append(f"{'stage':16} {'dropped':>8} {'prec.':>8} {'recall':>8}")
    for stage, values in report["stages"].items():
        lines.append(f"{stage:16} {values['dropped']:8} {str(values['precision']):>8} {str(values['recall']):>8}")
    lines.append(f"clean kept: {report['clean_kept']}; executors: {json.dumps(report['executors'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""LiT on a pretrained text encoder against CLIP from scratch, on phrasings seen and unseen in training.

    python benchmarks/lit_vs_scratch.py [--minutes M] [--json] [--out FILE] [--workdir DIR]

Generates the built-in scenes as ``make demo`` does (20,000 training scenes, 80% single objects; 2,000 held-out
scenes, half single), trains ``clip-tiny`` and ``lit-minilm-tiny`` for the same time budget each with the demo's
settings (batch 64, warmup 50, the schedule fitted to the budget), and evaluates both on the held-out scenes.
By default the two train side by side, one CPU thread each, so that other load on a shared machine slows both
alike (``--sequential``: one after the other with all threads). Then:

- zero-shot top-1/top-5 over the 30 color x shape classes of the single-object scenes, with class prompts in
  (a) the training phrasing (every template family the captions use), (b) unseen templates with the training
  words ("a picture showing a red circle"), (c) unseen templates and synonyms ("a picture showing a crimson disk");
- text->image and image->text retrieval Recall@1/5/10 over all held-out scenes with (a) their own captions,
  (b) two captions per scene rewritten with unseen templates, (c) with unseen templates and synonyms.

The unseen phrasings come from ``vlmkit.data.paraphrase`` (tests check that training never produces them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent),) if p not in sys.path]

MODELS = ("clip-tiny", "lit-minilm-tiny")
CONDITIONS = ("seen", "unseen_templates", "unseen_words")
CONDITION_TITLES = {"seen": "training phrasing", "unseen_templates": "unseen templates",
                    "unseen_words": "unseen templates + synonyms"}


def prepare_data(workdir: Path, train_size: int, eval_size: int) -> tuple[Path, Path]:
    from vlmkit.demo import TRAIN_SINGLE_FRACTION, _synth

    train_dir, heldout_dir = workdir / "data" / "train", workdir / "data" / "heldout"
    _synth(train_dir, train_size, seed=0, single_fraction=TRAIN_SINGLE_FRACTION)
    _synth(heldout_dir, eval_size, seed=1)
    return train_dir, heldout_dir


def train_model(recipe: str, train_dir: Path, run_dir: Path, minutes: float, overrides: list[str]) -> dict[str, Any]:
    from vlmkit.config import load_config
    from vlmkit.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)  # this benchmark's own previous run
    settings = ["train.steps=null", f"train.minutes={minutes}", "train.batch_size=64", "train.warmup=50"]
    config = load_config(recipe, settings + overrides)
    result = train(config, data=train_dir / "shards", out=run_dir, progress=False)
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "samples_per_s": round(result.samples_per_s, 1),
            "final_loss": round(result.final_loss, 4), "precision": config["train"]["precision"],
            "model_dir": str(result.model_dir)}


def train_all(recipes: list[str], train_dir: Path, runs_dir: Path, minutes: float, overrides: list[str],
              sequential: bool, run_names: list[str] | None = None, run_overrides: list[list[str]] | None = None,
              workers: int | None = None) -> list[dict[str, Any]]:
    """Train each recipe for ``minutes`` into ``runs_dir / name`` (``run_names``, default the recipe names), with
    ``overrides`` and then that run's own ``run_overrides``: one after the other, or at the same time in separate
    processes with one thread and one data worker each (machine load then falls on all of them alike), at most
    ``workers`` at once (default: all)."""
    names = run_names or recipes
    own = run_overrides or [[] for _ in recipes]
    if sequential:
        return [train_model(r, train_dir, runs_dir / name, minutes, overrides + extra)
                for r, name, extra in zip(recipes, names, own)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    overrides = overrides + ["train.threads=1", "data.workers=1"]
    # spawn: a fresh interpreter per run; the executor's processes may start DataLoader workers of their own
    with ProcessPoolExecutor(min(len(recipes), workers or len(recipes)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_model, r, train_dir, runs_dir / name, minutes, overrides + extra)
                   for r, name, extra in zip(recipes, names, own)]
        return [future.result() for future in futures]


def trained_run(run_dir: Path) -> dict[str, Any]:
    """The training record of a finished run folder (for --eval-only), from its summary.json."""
    from vlmkit.config import load_config

    summary = json.loads((run_dir / "summary.json").read_text())
    record = {"steps": summary["steps"], "seconds": summary["seconds"],
              "samples_per_s": round(summary["samples_seen"] / max(summary["seconds"], 1e-9), 1),
              "final_loss": round(summary["final_loss"], 4),
              "precision": load_config(run_dir / "config.yaml")["train"]["precision"],
              "model_dir": str(run_dir / "model")}
    stage = summary.get("relation_text_stage")
    if stage:  # a text stage's steps come before the joint ones
        record["relation_text_stage"] = {k: stage[k] for k in ("steps", "seconds", "final_loss") if k in stage}
    return record


def heldout_samples(heldout_dir: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    """One sample per held-out scene (its own captions, its label) and the scene records of metadata.jsonl."""
    from vlmkit.data.sources import ImageRef, Sample

    metas = [json.loads(line) for line in (heldout_dir / "metadata.jsonl").read_text().splitlines() if line]
    samples = [Sample(key=m["key"], image=ImageRef(str(heldout_dir / "images" / f"{m['key']}.png")),
                      captions=list(m["captions"]), label=m["label"]) for m in metas]
    return samples, metas


def class_vectors(model: Any, prompts: list[list[str]]) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings (same count per class)."""
    from vlmkit.eval.embed import embed_texts

    per_class = len(prompts[0])
    flat = [prompt for group in prompts for prompt in group]
    embeddings = F.normalize(embed_texts(model, flat), dim=-1).view(len(prompts), per_class, -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def evaluate(model: Any, samples: list[Any], metas: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    from vlmkit.data import paraphrase
    from vlmkit.data.scenes import CLASS_NAMES, COLORS, SHAPES
    from vlmkit.eval import retrieval_metrics, zeroshot_logits, zeroshot_metrics
    from vlmkit.eval.embed import embed_images, embed_texts

    image_embeddings, kept = embed_images(model, samples)
    assert len(kept) == len(samples), "every built-in scene decodes"
    results: dict[str, Any] = {"zeroshot": {}, "retrieval": {}}

    single = [i for i, meta in enumerate(metas) if meta["label"]]
    targets = torch.tensor([CLASS_NAMES.index(metas[i]["label"]) for i in single])
    prompts = {"seen": [paraphrase.training_class_prompts(name) for name in CLASS_NAMES],
               "unseen_templates": [paraphrase.class_prompts(name, words=False) for name in CLASS_NAMES],
               "unseen_words": [paraphrase.class_prompts(name, words=True) for name in CLASS_NAMES]}
    colors = torch.tensor([list(COLORS).index(name.split()[0]) for name in CLASS_NAMES])
    shapes = torch.tensor([SHAPES.index(name.split()[1]) for name in CLASS_NAMES])
    training_classes = class_vectors(model, prompts["seen"])
    results["text_agreement"] = {}
    for condition, groups in prompts.items():
        classes = class_vectors(model, groups)
        logits = zeroshot_logits(image_embeddings[single], classes)
        predicted = logits.argmax(dim=1)
        results["zeroshot"][condition] = {
            **zeroshot_metrics(logits, targets),
            "color_acc": (colors[predicted] == colors[targets]).float().mean().item(),
            "shape_acc": (shapes[predicted] == shapes[targets]).float().mean().item(), "num_images": len(single),
            "prompts_per_class": len(groups[0]), "example": groups[0][0]}
        # language alone: is each prompt nearest, in the model's space, to its class in the training phrasing?
        flat = F.normalize(embed_texts(model, [prompt for group in groups for prompt in group]), dim=-1)
        nearest = (flat @ training_classes.T).argmax(dim=1)
        truth = torch.arange(len(groups)).repeat_interleave(len(groups[0]))
        results["text_agreement"][condition] = (nearest == truth).float().mean().item()

    rng = np.random.default_rng(seed)  # the same rewritten captions for every model
    captions = {"seen": [meta["captions"] for meta in metas],
                "unseen_templates": [paraphrase.paraphrase_scene(m, rng, 2, words=False) for m in metas],
                "unseen_words": [paraphrase.paraphrase_scene(m, rng, 2, words=True) for m in metas]}
    for condition, per_image in captions.items():
        texts = [caption for group in per_image for caption in group]
        text_to_image = torch.tensor([i for i, group in enumerate(per_image) for _ in group])
        metrics = retrieval_metrics(image_embeddings, embed_texts(model, texts), text_to_image)
        results["retrieval"][condition] = {**metrics, "num_images": len(per_image), "num_texts": len(texts),
                                           "example": per_image[1][0]}
    return results


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per metric and phrasing, one column per model."""
    models = list(report["models"])
    lines = []
    for model in models:
        training = report["models"][model]["training"]
        lines.append(f"{model}: {training['steps']} steps of batch 64 in {training['seconds']:.0f} s, "
                     f"{training['samples_per_s']:.0f} samples/s, {training['precision']}, "
                     f"final loss {training['final_loss']:.3f}")
    lines += ["", " | ".join(["metric", *models]), " | ".join(["---"] + ["---:"] * len(models))]
    metrics = [("zeroshot", "acc1", "zero-shot top-1"), ("zeroshot", "color_acc", "zero-shot color right"),
               ("zeroshot", "shape_acc", "zero-shot shape right")]
    metrics += [("retrieval", f"image_retrieval_recall@{k}", f"text->image R@{k}") for k in (1, 5, 10)]
    metrics += [("retrieval", "text_retrieval_recall@1", "image->text R@1")]
    for condition in CONDITIONS:
        for task, key, label in metrics:
            values = [report["models"][m]["eval"][task][condition][key] for m in models]
            lines.append(" | ".join([f"{label}, {CONDITION_TITLES[condition]}", *(f"{v:.3f}" for v in values)]))
        values = [report["models"][m]["eval"]["text_agreement"][condition] for m in models]
        lines.append(" | ".join([f"prompt -> own class in training phrasing (text only), "
                                 f"{CONDITION_TITLES[condition]}", *(f"{v:.3f}" for v in values)]))
    chance = report["chance"]
    lines += ["", f"chance: zero-shot top-1 {chance['zeroshot_acc1']:.3f}, R@1 {chance['retrieval_recall@1']:.4f}"]
    first = report["models"][models[0]]["eval"]
    lines += [f"{CONDITION_TITLES[c]}: e.g. prompt {first['zeroshot'][c]['example']!r}, "
              f"caption {first['retrieval'][c]['example']!r}" for c in CONDITIONS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training time budget per model")
    parser.add_argument("--workdir", default="runs/lit_vs_scratch", help="data and runs (reused data)")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated recipes")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="recipe override for every model (e.g. train.precision=fp32)")
    parser.add_argument("--sequential", action="store_true",
                        help="train one model after the other with all threads (default: side by side, 1 thread each)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the finished runs in --workdir")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args(argv)

    from vlmkit.eval import write_json
    from vlmkit.models.hub import load

    workdir = Path(args.workdir)
    started = time.perf_counter()
    print(f"generating {args.train_size} training and {args.eval_size} held-out scenes in {workdir / 'data'}",
          file=sys.stderr)
    train_dir, heldout_dir = prepare_data(workdir, args.train_size, args.eval_size)
    samples, metas = heldout_samples(heldout_dir)
    report: dict[str, Any] = {
        "minutes_per_model": args.minutes, "train_size": args.train_size, "eval_size": args.eval_size,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_start": os.getloadavg()[0]},
        "chance": {"zeroshot_acc1": 1 / 30, "retrieval_recall@1": 1 / len(samples)}, "models": {}}
    recipes = args.models.split(",")
    if args.eval_only:
        print(f"evaluating the runs in {workdir / 'runs'}", file=sys.stderr)
    else:
        print(f"training {', '.join(recipes)} for {args.minutes:g} minutes each"
              + (" one after the other" if args.sequential else " side by side, one thread each"), file=sys.stderr)
    if args.eval_only:
        trainings = [trained_run(workdir / "runs" / recipe) for recipe in recipes]
    else:
        trainings = train_all(recipes, train_dir, workdir / "runs", args.minutes, args.overrides, args.sequential)
        report["side_by_side"] = not args.sequential
    for recipe, training in zip(recipes, trainings):
        print(f"evaluating {recipe}", file=sys.stderr)
        model = load(training["model_dir"])
        report["models"][recipe] = {"training": training, "eval": evaluate(model, samples, metas)}
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return report


if __name__ == "__main__":
    main()

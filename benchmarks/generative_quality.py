"""Generative VLMs on the built-in scenes: captioning and VQA quality after the same training time, against baselines.

    python benchmarks/generative_quality.py [--minutes M] [--train-size N] [--eval-size N] [--json] [--out FILE]
                                            [--tiny] [--sequential] [--eval-only] [--meteor]

Generates the built-in scenes at 64 px (``vlmkit.data.synth.generate``: training seed 0, held-out seed 1; every
format, VQA files included), trains each model for the same time budget (``train.minutes``, ``train.steps: null``,
batch 64, warmup 50) and evaluates it on the held-out scenes:

- captioning (trained on ``captions.csv``): ``coca-tiny`` and ``llava-tiny``, greedy captions scored with CIDEr-D,
  BLEU-4, ROUGE-L (METEOR with ``--meteor``) against the held-out ``coco.json``; baseline: the caption of the
  nearest training image, by the image embeddings of a ``clip-tiny`` trained for the same budget;
- VQA (trained on ``vqa_questions.json`` + ``data.vqa_annotations``): ``llava-tiny``, ``blip2-tiny`` and
  ``fuyu-tiny``, greedy answers scored with the VQA accuracy, overall and per question family (existence, color,
  shape, count, relation); baselines that see only the question (see ``blind_answers``).

By default every model trains at the same time (one CPU thread and one data worker each, as in
``lit_vs_scratch.py``), so that other load on a shared machine slows all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

from lit_vs_scratch import trained_run  # a sibling benchmark's helper

CAPTION_MODELS = ("coca-tiny", "llava-tiny")
VQA_MODELS = ("llava-tiny", "blip2-tiny", "fuyu-tiny")
NN_MODEL = "clip-tiny"  # the nearest-neighbour captioning baseline's image encoder
PREFIX_MODELS = ("llava-tiny", "blip2-tiny")  # the models with a CLIP-style vision tower (--vision-from-clip)
# The families of vlmkit/data/scene_vqa.py and the question_type strings each one writes.
FAMILIES = {"existence": ("is there a",), "color": ("what color is the",), "shape": ("what shape is the",),
            "count": ("how many",), "relation": ("where is the", "is the")}
SETTINGS = ["train.steps=null", "train.batch_size=64", "train.warmup=50"]  # lit_vs_scratch.py's demo settings

# --tiny: the tests' model sizes (vlmkit/tests), 32 px images, a few steps of batch 8.
_TINY_COMMON = ["tokenizer.vocab_size=300", "train.batch_size=8", "train.warmup=1", "train.precision=fp32",
                "train.steps=3", "train.minutes=null", "data.workers=0", "train.log_every=1", "train.threads=1"]
_TINY_VISION = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
                "model.vision.layers=1", "model.vision.heads=2"]
_TINY_LANGUAGE = ["model.language.width=32", "model.language.layers=1", "model.language.heads=2",
                  "model.language.context_length=64"]
TINY_OVERRIDES = {
    "clip-tiny": _TINY_VISION + ["model.text.context_length=24", "model.text.width=32", "model.text.layers=1",
                                 "model.text.heads=2", "model.embed_dim=16"],
    "coca-tiny": _TINY_VISION + _TINY_LANGUAGE + ["model.multimodal_layers=1", "model.embed_dim=16"],
    "llava-tiny": _TINY_VISION + _TINY_LANGUAGE,
    "blip2-tiny": _TINY_VISION + _TINY_LANGUAGE + ["model.connector.layers=1", "model.connector.heads=2"],
    "fuyu-tiny": ["model.vision.image_size=32", "model.vision.patch_size=8"] + _TINY_LANGUAGE,
}


def prepare_data(workdir: Path, train_size: int, eval_size: int, image_size: int) -> tuple[Path, Path]:
    """Training (seed 0) and held-out (seed 1) scenes; reused when a folder already holds the same ones."""
    from vlmkit.data.synth import generate

    folders = {}
    for name, size, seed in (("train", train_size, 0), ("heldout", eval_size, 1)):
        folder = workdir / "data" / name
        marker, wanted = folder / "benchmark.json", {"n": size, "seed": seed, "image_size": image_size}
        if not (marker.exists() and json.loads(marker.read_text()) == wanted):
            generate(str(folder), size, seed=seed, image_size=image_size)
            marker.write_text(json.dumps(wanted))
        folders[name] = folder
    return folders["train"], folders["heldout"]


def training_jobs(train_dir: Path, tiny: bool, vision_from_clip: Path | None = None) -> list[dict[str, Any]]:
    """One job per trained model: run name, recipe, data file, the job's own overrides and its report label.

    With ``vision_from_clip`` (the clip-tiny run's model folder), the LLaVA- and BLIP-2-style models are trained a
    second time with their vision tower starting from that CLIP (``train.init_vision``), as LLaVA and BLIP-2 start
    from a pretrained CLIP: runs ``<recipe>-<task>-clipvision``."""
    vqa = [f"data.vqa_annotations={train_dir / 'vqa_annotations.json'}"]
    jobs = [{"run": f"{recipe}-captions", "recipe": recipe, "data": str(train_dir / "captions.csv"), "overrides": []}
            for recipe in (*CAPTION_MODELS, NN_MODEL)]
    jobs += [{"run": f"{recipe}-vqa", "recipe": recipe, "data": str(train_dir / "vqa_questions.json"),
              "overrides": vqa} for recipe in VQA_MODELS]
    if vision_from_clip is not None:
        jobs += [{**job, "run": f"{job['run']}-clipvision", "vision_from": str(vision_from_clip),
                  "overrides": job["overrides"] + [f"train.init_vision={vision_from_clip}"]}
                 for job in list(jobs) if job["recipe"] in PREFIX_MODELS]
    for job in jobs:
        job["overrides"] = (TINY_OVERRIDES[job["recipe"]] + _TINY_COMMON if tiny else []) + job["overrides"]
        job["label"] = job["recipe"] + (f" (vision from {NN_MODEL})" if job.get("vision_from") else "")
    return jobs


def train_job(job: dict[str, Any], run_dir: Path, minutes: float, overrides: list[str]) -> dict[str, Any]:
    """Train one job for ``minutes`` on the clock ``train.clock`` says (a fresh run in ``run_dir``); the record."""
    from vlmkit.config import load_config
    from vlmkit.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)  # this benchmark's own previous run
    config = load_config(job["recipe"], SETTINGS + [f"train.minutes={minutes}"] + overrides + job["overrides"])
    result = train(config, data=job["data"], out=run_dir, progress=False)
    return {"recipe": job["recipe"], "data": Path(job["data"]).name, "steps": result.steps,
            "batch_size": int(config["train"]["batch_size"]), "seconds": round(result.seconds, 1),
            "samples_per_s": round(result.samples_per_s, 1), "final_loss": round(result.final_loss, 4),
            "precision": config["train"]["precision"], "model_dir": str(result.model_dir),
            "clock": config["train"]["clock"],
            "budget_elapsed_s": json.loads((run_dir / "summary.json").read_text())["budget_elapsed_s"]}


def train_all(jobs: list[dict[str, Any]], runs_dir: Path, minutes: float, overrides: list[str],
              sequential: bool) -> list[dict[str, Any]]:
    """As ``lit_vs_scratch.train_all``, for jobs with their own data: one after the other, or all at the same time
    in spawned processes with one thread and one data worker each."""
    if sequential:
        return [train_job(job, runs_dir / job["run"], minutes, overrides) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    overrides = overrides + ["train.threads=1", "data.workers=1"]
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_job, job, runs_dir / job["run"], minutes, overrides) for job in jobs]
        return [future.result() for future in futures]


def finished_run(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The training record of a finished run folder (for --eval-only), as ``train_job`` gives it."""
    from vlmkit.config import load_config

    batch_size = int(load_config(run_dir / "config.yaml")["train"]["batch_size"])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"recipe": job["recipe"], "data": Path(job["data"]).name, "batch_size": batch_size,
            "clock": summary.get("clock"), "budget_elapsed_s": summary.get("budget_elapsed_s"),
            **trained_run(run_dir)}


def caption_references(data_dir: Path) -> tuple[list[Any], dict[str, list[str]]]:
    """One sample per image of ``coco.json`` and {str(image id): reference captions}."""
    from vlmkit.data import group_by_image, load_samples

    samples = group_by_image(load_samples(str(data_dir / "coco.json")))
    return samples, {str(sample.key): list(sample.captions) for sample in samples}


def nearest_neighbour_captions(model: Any, train_samples: list[Any], heldout_samples: list[Any]) -> dict[str, str]:
    """For each held-out image, the first caption of the training image whose embedding is most similar (cosine)."""
    from vlmkit.eval.embed import embed_images

    train_embeddings, train_kept = embed_images(model, train_samples)
    heldout_embeddings, heldout_kept = embed_images(model, heldout_samples)
    similarity = F.normalize(heldout_embeddings, dim=-1) @ F.normalize(train_embeddings, dim=-1).T
    nearest = similarity.argmax(dim=1).tolist()
    return {str(heldout_samples[i].key): train_samples[train_kept[j]].captions[0]
            for i, j in zip(heldout_kept, nearest)}


def score_captions(predictions: dict[str, str], references: dict[str, list[str]], meteor: bool) -> dict[str, Any]:
    from vlmkit.eval.captioning import caption_metrics

    result = caption_metrics(predictions, references, meteor=meteor)
    first = next(iter(predictions))
    return {"metrics": result.metrics, "num_images": result.num_images, "tokenizer": result.tokenizer,
            "unavailable": result.unavailable, "example": {"image": first, "prediction": predictions[first],
                                                           "references": references[first]}}


def blind_answers(train_questions: list[Any], questions: list[Any], by_question: bool) -> dict[Any, str]:
    """The most frequent training answer for each question's question_type; with ``by_question``, for each exact
    question string seen in training (falling back to its question_type otherwise). Ties: the answer seen first."""
    from vlmkit.data.vqa import training_answer

    per_type: dict[Any, Counter] = {}
    per_text: dict[str, Counter] = {}
    for question in train_questions:
        answer = training_answer(question)
        per_type.setdefault(question.question_type, Counter())[answer] += 1
        per_text.setdefault(question.question, Counter())[answer] += 1
    overall = Counter(training_answer(q) for q in train_questions)
    predictions = {}
    for question in questions:
        counts = per_text.get(question.question) if by_question else None
        counts = counts or per_type.get(question.question_type) or overall
        predictions[question.question_id] = counts.most_common(1)[0][0]
    return predictions


def score_answers(predictions: dict[Any, str], questions: list[Any]) -> dict[str, Any]:
    """VQA accuracy (percent) overall, per family of ``FAMILIES``, per question_type and per answer_type."""
    from vlmkit.eval.vqa import evaluate_vqa

    result = evaluate_vqa(predictions, questions)
    by_id = {question.question_id: question for question in questions}
    per_family = {}
    for family, types in FAMILIES.items():
        scores = [score for key, score in result.per_question.items() if by_id[key].question_type in types]
        per_family[family] = sum(scores) / len(scores) if scores else None
    first = questions[0]
    return {"accuracy": result.metrics["accuracy"], "per_family": per_family,
            "per_question_type": result.metrics.get("accuracy_per_question_type", {}),
            "per_answer_type": result.metrics.get("accuracy_per_answer_type", {}),
            "num_questions": result.num_questions,
            "questions_per_family": {family: sum(by_id[k].question_type in types for k in result.per_question)
                                     for family, types in FAMILIES.items()},
            # 1 = the same answer to every question of the family, as a blind baseline gives
            "distinct_answers_per_family": {family: len({predictions[k] for k in result.per_question
                                                         if by_id[k].question_type in types})
                                            for family, types in FAMILIES.items()},
            "example": {"question": first.question, "prediction": predictions.get(first.question_id),
                        "answer": first.multiple_choice_answer}}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_tables(report: dict[str, Any]) -> str:
    """Markdown tables: captioning per model and baseline, VQA per family, training per run."""
    trainings, machine = report["trainings"], report["machine"]
    lines = ["| model | trained on | steps (batch) | wall seconds | budget seconds (clock) | final loss |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for training in trainings.values():
        budget = (f"{training['budget_elapsed_s']:.0f} ({training['clock']})"
                  if training.get("budget_elapsed_s") is not None else "-")
        lines.append(f"| {training['recipe']} | {training['data']} | {training['steps']} ({training['batch_size']}) "
                     f"| {training['seconds']:.0f} | {budget} | {training['final_loss']:.3f} |")
    lines.append(f"\nload average (1 min): {machine['load_average_start']:.2f} at start, "
                 f"{_fmt(machine.get('load_average_after_training'), 2)} after training, "
                 f"{machine['load_average_end']:.2f} at end; {machine['cpu_count']} CPUs")
    caption = report["captioning"]
    meteor = any("METEOR" in entry["metrics"] for entry in caption.values())
    names = ["CIDEr-D", "BLEU-4", "ROUGE-L"] + (["METEOR"] if meteor else [])
    keys = ["CIDEr", "Bleu_4", "ROUGE_L"] + (["METEOR"] if meteor else [])
    lines += ["", f"Captioning, {next(iter(caption.values()))['num_images']} held-out images:", "",
              "| model | steps | " + " | ".join(names) + " |", "| --- | ---: |" + " ---: |" * len(names)]
    for name, entry in caption.items():
        steps = trainings[entry["run"]]["steps"]
        values = [f"{100 * entry['metrics'][k]:.1f}" if k in entry["metrics"] else "-" for k in keys]
        lines.append(f"| {name} | {steps} | " + " | ".join(values) + " |")
    vqa = report["vqa"]
    first = next(iter(vqa.values()))
    families = ", ".join(f"{family} {count}" for family, count in first["questions_per_family"].items())
    lines += ["", f"VQA accuracy (%), {first['num_questions']} held-out questions ({families}):", "",
              "| model | steps | overall | " + " | ".join(FAMILIES) + " |", "| --- | ---: | ---: |"
              + " ---: |" * len(FAMILIES)]
    for name, entry in vqa.items():
        steps = trainings[entry["run"]]["steps"] if entry.get("run") else "-"
        lines.append(f"| {name} | {steps} | {entry['accuracy']:.1f} | "
                     + " | ".join(_fmt(entry["per_family"][f]) for f in FAMILIES) + " |")
    lines += ["", f"distinct answers per family ({' / '.join(FAMILIES)}): " + "; ".join(
        f"{name} {' / '.join(str(n) for n in entry['distinct_answers_per_family'].values())}"
        for name, entry in vqa.items() if entry.get("run"))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training time budget per model")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what --minutes counts: elapsed time, or each run's own CPU time (load-independent)")
    parser.add_argument("--workdir", default="runs/generative_quality", help="data and runs (reused data)")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="recipe override for every model (e.g. train.precision=fp32)")
    parser.add_argument("--sequential", action="store_true",
                        help="train one model after the other with all threads (default: side by side, 1 thread each)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the finished runs in --workdir")
    parser.add_argument("--vision-from-clip", action="store_true",
                        help="also train llava-tiny and blip2-tiny with the vision tower of the clip-tiny run "
                             "(train.init_vision; that run trains first)")
    parser.add_argument("--train-only", metavar="RUNS",
                        help="comma-separated run names to train; the others are read from finished runs in "
                             "--workdir (e.g. the -clipvision runs after a first full run)")
    parser.add_argument("--meteor", action="store_true", help="also METEOR (Java, ~10 s to start)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="caption length limit (answers: 6)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models, 3 steps, 100 + 40 scenes at 32 px (for the test)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.train_size, args.eval_size = min(args.train_size, 100), min(args.eval_size, 40)
        args.max_new_tokens = min(args.max_new_tokens, 8)

    from vlmkit.data.vqa import load_vqa
    from vlmkit.eval import write_json
    from vlmkit.eval.predict import predict_answers, predict_captions
    from vlmkit.models.hub import load

    workdir, started = Path(args.workdir), time.perf_counter()
    image_size = 32 if args.tiny else 64
    print(f"generating {args.train_size} training and {args.eval_size} held-out scenes ({image_size} px) in "
          f"{workdir / 'data'}", file=sys.stderr)
    train_dir, heldout_dir = prepare_data(workdir, args.train_size, args.eval_size, image_size)
    jobs = training_jobs(train_dir, args.tiny)
    args.overrides = [f"train.clock={args.clock}"] + args.overrides
    report: dict[str, Any] = {
        "minutes_per_model": None if args.tiny else args.minutes, "clock": args.clock, "train_size": args.train_size,
        "eval_size": args.eval_size, "image_size": image_size, "tiny": args.tiny, "overrides": args.overrides,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_start": os.getloadavg()[0]},
        "trainings": {}, "captioning": {}, "vqa": {}}
    runs_dir = workdir / "runs"
    clip_job = next(job for job in jobs if job["recipe"] == NN_MODEL)
    if args.vision_from_clip:
        jobs = training_jobs(train_dir, args.tiny, runs_dir / clip_job["run"] / "model")
    to_train = [] if args.eval_only else [job for job in jobs if args.train_only is None
                                          or job["run"] in args.train_only.split(",")]
    if args.train_only and not to_train:
        parser.error(f"--train-only names none of the runs: {', '.join(job['run'] for job in jobs)}")
    # runs that start from the CLIP's vision tower train after it
    phases = [[job for job in to_train if not job.get("vision_from")], [job for job in to_train if job.get("vision_from")]]
    records: dict[str, dict[str, Any]] = {}
    for phase in phases:
        if not phase:
            continue
        print(f"training {len(phase)} models ({', '.join(job['run'] for job in phase)}) "
              + ("for 3 steps each" if args.tiny else f"for {args.minutes:g} {args.clock} minutes each")
              + (" one after the other" if args.sequential else " side by side, one thread each"), file=sys.stderr)
        for job, record in zip(phase, train_all(phase, runs_dir, args.minutes, args.overrides, args.sequential)):
            records[job["run"]] = record
    if to_train:
        report["side_by_side"] = not args.sequential
        report["machine"]["load_average_after_training"] = os.getloadavg()[0]
    trainings = [records.get(job["run"]) or finished_run(job, runs_dir / job["run"]) for job in jobs]
    report["trained_now"] = [job["run"] for job in to_train]
    report["trainings"] = {job["run"]: training for job, training in zip(jobs, trainings)}
    model_dirs = {job["run"]: training["model_dir"] for job, training in zip(jobs, trainings)}

    heldout_samples, references = caption_references(heldout_dir)
    for job in jobs:
        if job["run"].startswith(tuple(f"{recipe}-captions" for recipe in CAPTION_MODELS)):
            print(f"captioning with {job['run']}", file=sys.stderr)
            predictions = predict_captions(load(model_dirs[job["run"]]), heldout_samples, batch_size=64,
                                           max_new_tokens=args.max_new_tokens)
            report["captioning"][job["label"]] = {"run": job["run"],
                                                  **score_captions(predictions, references, args.meteor)}
    print(f"nearest-neighbour captions by {NN_MODEL}", file=sys.stderr)
    train_samples, _ = caption_references(train_dir)
    run = clip_job["run"]
    predictions = nearest_neighbour_captions(load(model_dirs[run]), train_samples, heldout_samples)
    report["captioning"][f"nearest-neighbour caption ({NN_MODEL})"] = {
        "run": run, **score_captions(predictions, references, args.meteor)}

    questions = load_vqa(heldout_dir / "vqa_questions.json", heldout_dir / "vqa_annotations.json")
    for job in jobs:
        if job["run"].startswith(tuple(f"{recipe}-vqa" for recipe in VQA_MODELS)):
            print(f"answering with {job['run']}", file=sys.stderr)
            predictions = predict_answers(load(model_dirs[job["run"]]), questions, batch_size=64, max_new_tokens=6)
            report["vqa"][job["label"]] = {"run": job["run"], **score_answers(predictions, questions)}
    train_questions = load_vqa(train_dir / "vqa_questions.json", train_dir / "vqa_annotations.json")
    report["vqa"]["blind: most frequent answer per question type"] = {
        "run": None, **score_answers(blind_answers(train_questions, questions, by_question=False), questions)}
    report["vqa"]["blind: per question string, else per type"] = {
        "run": None, **score_answers(blind_answers(train_questions, questions, by_question=True), questions)}

    report["machine"]["load_average_end"] = os.getloadavg()[0]
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2) if args.json else format_tables(report))
    return report


if __name__ == "__main__":
    main()

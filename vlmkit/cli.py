"""The ``vlmkit`` command. Each subcommand is a thin wrapper over a Python function."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

EPILOG = """examples:
  vlmkit data synth --out data/train --n 20000
  vlmkit train --recipe clip-tiny --data data/train/captions.csv --out runs/clip --set train.minutes=5
  torchrun --nproc_per_node=2 -m vlmkit train --recipe clip-tiny --data train.csv --out runs/ddp
  vlmkit eval zeroshot --model runs/clip --data data/val/captions.csv --classes data/val/classes.txt
  vlmkit eval retrieval --model runs/clip --data data/val/coco.json --json
  vlmkit eval captioning --results preds.json --annotations data/val/coco.json
  vlmkit eval vqa --results answers.json --annotations data/val/vqa_annotations.json
  vlmkit eval probes --model runs/clip --suite builtin --data data/val --out probes
  vlmkit embed --model runs/clip --images photos/ --out photos.npy
  vlmkit curate --input pool/shards --out curated --pipeline datacomp --model runs/clip --set image_based.reference=ref/
  vlmkit index build --model runs/clip --images photos/ --out photos.index ; vlmkit index search photos.index "a red car"
  vlmkit classify cat.jpg --model hf:openai/clip-vit-base-patch32 --labels cat,dog,car
  vlmkit caption photo.jpg --model path/to/blip ; vlmkit ask photo.jpg "what color is the car?" --model path/to/vilt
  vlmkit convert hf:openai/clip-vit-base-patch32 --to native --out models/clip-b32
  vlmkit serve --model runs/clip --index photos.index --port 8000
  vlmkit demo --out demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmkit", description="Train, evaluate and use vision-language models.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from vlmkit import __version__

    parser.add_argument("--version", action="version", version=f"vlmkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="built-in data").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate procedural scenes of shapes (CSV, COCO JSON, WebDataset shards)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0, help="random seed (use another seed for held-out data)")
    synth.add_argument("--image-size", type=int, default=96, help="side of the square images in pixels")
    synth.add_argument("--single-fraction", type=float, default=0.5,
                       help="fraction of single-object scenes (these carry a color+shape label)")
    synth.set_defaults(func=cmd_synth)

    train = commands.add_parser("train", help="train a model from a recipe",
                                description="Train a model from a recipe. The merged config, metrics.jsonl, a "
                                            "loss curve, checkpoints and the final model are written to --out.")
    train.add_argument("--recipe", default="clip-tiny", help="built-in recipe name or YAML path (default clip-tiny)")
    train.add_argument("--data", required=True,
                       help="CSV/TSV/JSONL manifest, COCO captions JSON, WebDataset shards (dir, glob or "
                            "{00000..00009}.tar) or a folder of images with captions")
    train.add_argument("--val-data", help="held-out data for validation loss and retrieval")
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set train.steps=500 --set data.caption_key=text")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--init", metavar="MODEL",
                       help="fine-tune this model instead of a fresh one (native folder or run, Hugging Face CLIP "
                            "folder, hf:REPO_ID, open_clip:ARCH:CHECKPOINT); its config replaces the recipe's "
                            "model section")
    train.add_argument("--on-bad-sample", choices=["skip", "error"],
                       help="skip (count and report) or stop at the first undecodable sample")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a model").add_subparsers(dest="eval_command",
                                                                                   required=True)
    zeroshot = evaluate.add_parser("zeroshot", help="zero-shot classification (top-1, top-5, mean per-class recall)")
    _eval_arguments(zeroshot)
    zeroshot.add_argument("--classes", required=True, help="file with one class name per line, or 'cat,dog,...'")
    zeroshot.add_argument("--templates", help="file with one prompt template per line containing {} "
                                              "(default: a built-in ensemble of 8)")
    zeroshot.set_defaults(func=cmd_zeroshot)
    retrieval = evaluate.add_parser("retrieval", help="image<->text Recall@1/5/10, mean and median rank")
    _eval_arguments(retrieval)
    retrieval.set_defaults(func=cmd_retrieval)
    captioning = evaluate.add_parser(
        "captioning", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr-D of captions (pycocoevalcap's numbers)",
        description="Score captions as pycocoevalcap does (PTB tokenisation and METEOR run in Java when it is "
                    "installed; SPICE is not available offline).")
    _eval_results_arguments(captioning, "COCO results JSON: [{\"image_id\", \"caption\"}, ...]")
    captioning.add_argument("--annotations", help="COCO captions JSON with the reference captions")
    captioning.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves ~10 s of Java start-up)")
    captioning.set_defaults(func=cmd_captioning)
    vqa = evaluate.add_parser("vqa", help="official VQA accuracy, overall and per question/answer type")
    _eval_results_arguments(vqa, "VQA results JSON: [{\"question_id\", \"answer\"}, ...]")
    vqa.add_argument("--questions", help="VQAv2 questions JSON (optional: checks ids, gives question text)")
    vqa.add_argument("--annotations", help="VQAv2 annotations JSON, or a VQA JSONL file with answers")
    vqa.set_defaults(func=cmd_vqa)
    probes = evaluate.add_parser(
        "probes", help="compositional probes: ARO, SugarCrepe, counting, word order, Winoground",
        description="Score a model on compositional probes: the built-in suite generated from scenes made by "
                    "`vlmkit data synth` (use a held-out seed), or public ARO / SugarCrepe / Winoground files.")
    from vlmkit.cli_use import MODEL_HELP

    probes.add_argument("--model", required=True, help=MODEL_HELP)
    source = probes.add_mutually_exclusive_group(required=True)
    source.add_argument("--suite", choices=["builtin"], help="the built-in suite, from the scenes in --data")
    source.add_argument("--aro", help="ARO VG-Relation / VG-Attribution JSON (with --images)")
    source.add_argument("--sugarcrepe", help="SugarCrepe JSON file, or a folder of them (with --images)")
    source.add_argument("--winoground", help="Winoground examples.jsonl (with --images)")
    probes.add_argument("--data", help="folder of built-in scenes (metadata.jsonl) for --suite builtin")
    probes.add_argument("--images", help="image folder of the public files")
    probes.add_argument("--seed", type=int, default=0, help="seed of the built-in suite's negatives (default 0)")
    probes.add_argument("--batch-size", type=int, default=256)
    probes.add_argument("--device", default="auto", help="auto | cpu | cuda")
    probes.add_argument("--out", help="folder for probes.json and probe_failures.png")
    probes.add_argument("--json", action="store_true", help="print the result as JSON (CLIP_benchmark shape)")
    probes.set_defaults(func=cmd_probes)

    from vlmkit.cli_use import add_commands

    add_commands(commands)
    from vlmkit.cli_curate import add_commands as add_curate_commands

    add_curate_commands(commands)
    from vlmkit.cli_index import add_commands as add_index_commands

    add_index_commands(commands)
    from vlmkit.cli_serve import add_commands as add_serve_commands

    add_serve_commands(commands)

    recipes = commands.add_parser("recipes", help="list the built-in recipes")
    recipes.set_defaults(func=cmd_recipes)

    demo = commands.add_parser("demo", help="the main job on built-in data: generate, train clip-tiny, evaluate")
    demo.add_argument("--out", default="demo", help="output folder (default: demo)")
    demo.add_argument("--minutes", type=float, default=7.5, help="training time budget (default 7.5; the whole "
                                                                 "demo takes about 9 minutes on 2 cores)")
    demo.add_argument("--train-size", type=int, default=20000, help="training images (default 20000)")
    demo.add_argument("--eval-size", type=int, default=2000, help="held-out images (default 2000)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a clip-tiny recipe value")
    demo.set_defaults(func=cmd_demo)
    return parser


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    from vlmkit.cli_use import MODEL_HELP

    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--data", required=True, help="CSV/TSV/JSONL, COCO JSON, shards or image folder")
    parser.add_argument("--image-key", default="image")
    parser.add_argument("--caption-key", default="caption")
    parser.add_argument("--label-key", default="label")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="image decoding worker processes")
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed"], default="fp32")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", help="folder for the JSON result and plots")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (CLIP_benchmark shape)")


def _eval_results_arguments(parser: argparse.ArgumentParser, results_help: str) -> None:
    from vlmkit.cli_use import MODEL_HELP

    parser.add_argument("--results", help=results_help)
    parser.add_argument("--model", help=f"generate with this model instead of reading --results ({MODEL_HELP})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per generation batch (with --model)")
    parser.add_argument("--max-new-tokens", type=int, help="longest generated text (with --model)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (with --model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (with --model)")
    parser.add_argument("--out", help="folder for the JSON result, the per-item scores and (with --model) the "
                                      "predictions in the results format")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (CLIP_benchmark shape)")


def _model_predictions(args: argparse.Namespace, what: str, predict: Any) -> str:
    """Generate with --model, write the predictions in the results format, and return the file's path."""
    from vlmkit.cli_use import load_model
    from vlmkit.data.report import BadSampleReport
    from vlmkit.files import atomic_write_text

    if not args.annotations:
        raise ValueError("give --annotations with the ground truth (and the images to generate for)")
    decoding = {"num_beams": args.num_beams} if args.num_beams > 1 else {}
    if args.max_new_tokens:
        decoding["max_new_tokens"] = args.max_new_tokens
    report = BadSampleReport()
    records = predict(load_model(args), batch_size=args.batch_size, progress=not args.json, report=report, **decoding)
    if report:
        print(report.summary(), file=sys.stderr)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vlmkit-"))
    path = folder / f"{what}.json"
    atomic_write_text(path, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    args.results = str(path)
    return str(path)


def _results_path(args: argparse.Namespace, what: str) -> str:
    if args.results is None:
        raise ValueError("give --results (a predictions file) to score, or --model to generate them")
    if not args.annotations:
        raise ValueError("give --annotations with the ground truth")
    return str(args.results)


def _emit_scores(args: argparse.Namespace, task: str, metrics: dict[str, Any], extra: dict[str, Any],
                 per_item: dict[str, Any], table: str) -> None:
    from vlmkit.eval import benchmark_record, write_json

    record = benchmark_record(task, str(args.model or args.results), str(args.annotations), metrics, extra=extra)
    if args.out:
        write_json(Path(args.out) / f"{task}.json", record)
        write_json(Path(args.out) / f"{task}_per_item.json", {str(k): v for k, v in per_item.items()})
    print(json.dumps(record, indent=2) if args.json else table)


def cmd_captioning(args: argparse.Namespace) -> int:
    from vlmkit.eval.captioning import evaluate_caption_files

    if args.model and args.results is None:
        from vlmkit.data import load_samples

        if not args.annotations:
            raise ValueError("give --annotations with the reference captions (and the images to caption)")
        from vlmkit.eval.predict import predict_captions

        samples = load_samples(args.annotations)
        _model_predictions(args, "captions", lambda model, **kw: [
            {"image_id": key, "caption": caption} for key, caption in predict_captions(model, samples, **kw).items()])
    result = evaluate_caption_files(_results_path(args, "captions"), args.annotations, meteor=not args.no_meteor)
    extra = {"results": args.results, "num_images": result.num_images,
             "num_unscored_images": result.num_unscored_images, "tokenizer": result.tokenizer,
             "unavailable": result.unavailable}
    lines = [f"{name:>10}: {value:.4f}" for name, value in result.metrics.items()]
    lines += [f"{name:>10}: unavailable ({reason})" for name, reason in result.unavailable.items()]
    lines.append(f"{'images':>10}: {result.num_images}" + (f" ({result.num_unscored_images} annotated images "
                                                          "without a prediction not scored)"
                                                          if result.num_unscored_images else ""))
    lines += [f"note: {note}" for note in result.notes]
    _emit_scores(args, "captioning", result.metrics, extra, result.per_image, "\n".join(lines))
    return 0


def cmd_vqa(args: argparse.Namespace) -> int:
    from vlmkit.eval.vqa import evaluate_vqa_files

    if args.model and args.results is None:
        from vlmkit.data.vqa import load_vqa
        from vlmkit.eval.predict import predict_answers

        if not args.annotations:
            raise ValueError("give --annotations with the ground-truth answers")
        if not args.questions and not str(args.annotations).endswith(".jsonl"):
            raise ValueError("give --questions (VQAv2 questions JSON, with the images) to answer them with --model")
        questions = (load_vqa(args.questions, args.annotations) if args.questions else load_vqa(args.annotations))
        _model_predictions(args, "answers", lambda model, **kw: [
            {"question_id": key, "answer": answer} for key, answer in predict_answers(model, questions, **kw).items()])
    result = evaluate_vqa_files(_results_path(args, "answers"), args.annotations, args.questions)
    extra = {"results": args.results, "num_questions": result.num_questions,
             "num_unanswered": result.num_unanswered}
    lines = [f"{'accuracy':>28}: {result.metrics['accuracy']:.2f}"]
    for group, label in (("accuracy_per_answer_type", "answer type"), ("accuracy_per_question_type", "type")):
        for name, value in result.metrics.get(group, {}).items():
            lines.append(f"{label + ' ' + repr(name):>28}: {value:.2f}")
    lines.append(f"{'questions':>28}: {result.num_questions}" + (f" ({result.num_unanswered} annotated questions "
                                                                "without a prediction not scored)"
                                                                if result.num_unanswered else ""))
    _emit_scores(args, "vqa", result.metrics, extra, result.per_question, "\n".join(lines))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vlmkit.data.synth import generate

    summary = generate(args.out, args.n, seed=args.seed, image_size=args.image_size,
                       single_fraction=args.single_fraction)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vlmkit import distributed
    from vlmkit.config import load_config
    from vlmkit.train import train

    overrides = list(args.overrides)
    if args.on_bad_sample:
        overrides.append(f"data.on_bad_sample={args.on_bad_sample}")
    if args.init:
        overrides.append(f"train.init={args.init}")
    saved = Path(args.out) / "config.yaml"
    config = load_config(saved if args.resume and saved.exists() else args.recipe, overrides)
    try:
        result = train(config, data=args.data, out=args.out, val_data=args.val_data, resume=args.resume,
                       progress=not args.no_progress)
        main_process = distributed.is_main_process()
    finally:
        distributed.destroy()
    if main_process:
        print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.samples_per_s:.0f} samples/s), "
              f"final loss {result.final_loss:.4f}; model: {result.model_dir}")
    return 0


def _load_eval_model(args: argparse.Namespace) -> Any:
    import torch

    import vlmkit

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return vlmkit.load(args.model, device=device)


def _eval_samples(args: argparse.Namespace) -> list[Any]:
    from vlmkit.data import load_samples

    return load_samples(args.data, image_key=args.image_key, caption_key=args.caption_key,
                        label_key=args.label_key)


def _emit(args: argparse.Namespace, task: str, metrics: dict[str, Any], extra: dict[str, Any], table: str,
          dataset: str | None = None) -> None:
    from vlmkit.eval import benchmark_record, write_json

    record = benchmark_record(task, str(args.model), dataset or str(args.data), metrics, extra=extra)
    if args.out:
        write_json(Path(args.out) / f"{task}.json", record)
    print(json.dumps(record, indent=2) if args.json else table)


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from vlmkit.data import BadSampleReport
    from vlmkit.eval import DEFAULT_TEMPLATES
    from vlmkit.eval.zeroshot import evaluate_zeroshot, read_classes

    templates = DEFAULT_TEMPLATES
    if args.templates:
        templates = [line.strip() for line in Path(args.templates).read_text().splitlines() if line.strip()]
        if not templates or any("{" not in t for t in templates):
            raise ValueError(f"{args.templates}: every template needs a {{}} where the class name goes")
    report = BadSampleReport()
    result = evaluate_zeroshot(_load_eval_model(args), _eval_samples(args), read_classes(args.classes),
                               templates=templates, batch_size=args.batch_size, workers=args.workers,
                               precision=args.precision, report=report)
    extra: dict[str, Any] = {"num_samples": result.num_samples, "bad_samples": report.as_dict()}
    if args.out:
        from vlmkit.plots import plot_confusion_matrix

        extra["confusion_matrix_png"] = plot_confusion_matrix(result.confusion, result.classnames,
                                                              Path(args.out) / "confusion_matrix.png",
                                                              title="zero-shot confusion")
    table = "\n".join(f"{k:>24}: {v:.4f}" for k, v in result.metrics.items())
    table += f"\n{'samples':>24}: {result.num_samples}"
    if report:
        table += f"\n{report.summary()}"
    _emit(args, "zeroshot_classification", result.metrics, extra, table)
    return 0


def cmd_retrieval(args: argparse.Namespace) -> int:
    from vlmkit.data import BadSampleReport
    from vlmkit.eval.retrieval import evaluate_retrieval

    report = BadSampleReport()
    metrics = evaluate_retrieval(_load_eval_model(args), _eval_samples(args), batch_size=args.batch_size,
                                 workers=args.workers, precision=args.precision, report=report)
    table = "\n".join(f"{k:>32}: {v:.4f}" if isinstance(v, float) else f"{k:>32}: {v}" for k, v in metrics.items())
    if report:
        table += f"\n{report.summary()}"
    _emit(args, "zeroshot_retrieval", metrics, {"bad_samples": report.as_dict()}, table)
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from vlmkit.data import probes as suites
    from vlmkit.eval.probes import evaluate_probes, plot_probe_failures, probe_table

    if args.suite:
        if not args.data:
            raise ValueError("--suite builtin needs --data, a folder made by `vlmkit data synth` (held-out seed)")
        suite, dataset = suites.builtin_suite(args.data, seed=args.seed), str(args.data)
    else:
        if not args.images:
            raise ValueError("give --images, the folder of the probe file's images")
        loader, dataset = ((suites.load_aro, args.aro) if args.aro else (suites.load_sugarcrepe, args.sugarcrepe)
                           if args.sugarcrepe else (suites.load_winoground, args.winoground))
        suite = loader(dataset, args.images)
    result = evaluate_probes(_load_eval_model(args), suite, batch_size=args.batch_size, progress=not args.json)
    extra: dict[str, Any] = {"suite": suite.name, "per_probe": result.per_type, "num_items": result.num_items,
                             "num_groups": result.num_groups, "skipped_images": result.skipped,
                             "failures": result.failures}
    if args.out:
        extra["failures_png"] = plot_probe_failures(result.failures, Path(args.out) / "probe_failures.png")
    _emit(args, "compositional_probes", result.metrics, extra, probe_table(result), dataset=dataset)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from vlmkit.config import read_recipe, recipe_names

    for name in recipe_names():
        description = " ".join(str(read_recipe(name).get("description", "")).split())
        print(f"{name:14} {description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlmkit.demo import run_demo

    run_demo(args.out, minutes=args.minutes, train_size=args.train_size, eval_size=args.eval_size,
             overrides=args.overrides)
    return 0


# ImportError: an optional extra is missing, and the message says which to install.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, KeyError,
                                                ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from vlmkit.data.decode import BadSample

    try:
        return int(args.func(args) or 0)
    except (*USER_ERRORS, BadSample) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"vlmkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

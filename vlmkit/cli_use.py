"""The ``vlmkit`` subcommands that use a model: embed, classify, caption, ask, and convert."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MODEL_HELP = ("model: a native model or run folder, a Hugging Face folder, hf:REPO_ID (offline, from the Hugging "
              "Face cache) or open_clip:ARCH:CHECKPOINT")


def add_commands(commands: Any) -> None:
    embed = commands.add_parser("embed", help="embed images or texts into .npy (+ .ids.json) or .parquet",
                                description="Embed images (files, folders, manifests or shards) or texts (a .txt "
                                            "file, one per line, or a CSV/JSONL column) with any contrastive model.")
    _model_arguments(embed)
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files, folders, manifests or shards")
    source.add_argument("--texts", help="a .txt file (one text per line) or a CSV/TSV/JSONL manifest")
    embed.add_argument("--text-column", default="caption", help="column of --texts in a manifest")
    embed.add_argument("--out", required=True, help="output .npy (ids go to NAME.ids.json) or .parquet")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
    embed.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local (worker processes, the default) or ray (Ray Data: a cluster, or a local Ray "
                            "instance when no --ray-address; needs pip install 'vlmkit[ray]' and --model as a path "
                            "or spec every worker can load)")
    embed.add_argument("--ray-address", help="address of a running Ray cluster (e.g. ray://head:10001 or auto)")
    embed.add_argument("--work", metavar="DIR",
                       help="keep the job's per-shard results here, so an interrupted run resumes where it stopped "
                            "(default: a temporary folder)")
    embed.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip")
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=cmd_embed)

    classify = commands.add_parser("classify", help="zero-shot classify images among labels you give")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    _model_arguments(classify)
    classify.add_argument("--labels", required=True, help="'cat,dog,...' or a file with one label per line")
    classify.add_argument("--templates", help="file with one prompt template per line containing {} "
                                              "(default: a built-in ensemble of 8)")
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--json", action="store_true")
    classify.set_defaults(func=cmd_classify)

    caption = commands.add_parser("caption", help="caption images (models with the generate capability)")
    caption.add_argument("images", nargs="+", metavar="IMAGE")
    _model_arguments(caption)
    caption.add_argument("--prompt", help="text the caption starts from (e.g. 'a picture of')")
    _decoding_arguments(caption)
    caption.add_argument("--json", action="store_true")
    caption.set_defaults(func=cmd_caption)

    ask = commands.add_parser("ask", help="answer a question about an image (models with the answer capability)")
    ask.add_argument("image", metavar="IMAGE")
    ask.add_argument("question", metavar="QUESTION")
    _model_arguments(ask)
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(func=cmd_ask)

    convert = commands.add_parser(
        "convert", help="convert CLIP weights: Hugging Face / open_clip -> native, native -> Hugging Face / open_clip",
        description="Convert CLIP checkpoints. To native: SOURCE is a Hugging Face CLIP folder, hf:REPO_ID or "
                    "open_clip:ARCH:CHECKPOINT, and --out a new model folder (fine-tune it with "
                    "`vlmkit train --init FOLDER ...`, or load it with vlmkit.load). From native: SOURCE is "
                    "a native model or run folder; --to hf writes a folder transformers' CLIPModel loads, "
                    "--to open_clip a .safetensors state dict for open_clip.create_model(ARCH, pretrained=FILE).")
    convert.add_argument("source", metavar="SOURCE")
    convert.add_argument("--to", required=True, choices=["native", "hf", "open_clip"])
    convert.add_argument("--out", required=True, help="output folder (native, hf) or .safetensors file (open_clip)")
    convert.set_defaults(func=cmd_convert)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    parser.add_argument("--temperature", type=float, default=1.0)


def load_model(args: argparse.Namespace) -> Any:
    import torch

    import vlmkit

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    return vlmkit.load(args.model, device="cpu" if device == "auto" else device)


def read_images(paths: list[str]) -> list[Any]:
    """Images decoded safely (a corrupt or missing file is a one-line error naming it)."""
    from vlmkit.data.decode import BadSample, decode_image

    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such image: {path}")
        try:
            images.append(decode_image(Path(path).read_bytes())[0])
        except BadSample as bad:
            raise ValueError(f"{path}: cannot use this image ({bad.reason})") from None
    return images


def read_lines_or_list(value: str) -> list[str]:
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [part.strip() for part in value.split(",") if part.strip()]


def cmd_embed(args: argparse.Namespace) -> int:
    from vlmkit.apps.embed import embed_image_files, embed_texts, read_texts, write_embeddings

    model = load_model(args)
    if args.images:
        result = embed_image_files(args.model if args.executor == "ray" else model, args.images,
                                   batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                                   on_bad_sample=args.on_bad_sample, executor=args.executor,
                                   ray_address=args.ray_address, work_dir=args.work)
    else:
        result = embed_texts(model, read_texts(args.texts, args.text_column), batch_size=args.batch_size,
                             progress=not args.no_progress)
    written = write_embeddings(result, args.out)
    print(f"embedded {len(result.ids)} {'images' if args.images else 'texts'} "
          f"(dimension {result.vectors.shape[1]}): {', '.join(map(str, written))}")
    if result.report:
        print(result.report.summary())
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from vlmkit.apps.classify import classify

    templates = read_lines_or_list(args.templates) if args.templates else None
    if templates and any("{" not in t for t in templates):
        raise ValueError(f"{args.templates}: every template needs a {{}} where the label goes")
    results = classify(load_model(args), read_images(args.images), read_lines_or_list(args.labels),
                       templates=templates, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": image, "labels": [{"label": label, "probability": round(p, 6)}
                                                      for label, p in ranked]}
                          for image, ranked in zip(args.images, results)], indent=2))
    else:
        for image, ranked in zip(args.images, results):
            print(f"{image}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from vlmkit.apps.generate import caption

    captions = caption(load_model(args), read_images(args.images), prompt=args.prompt,
                       max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.sample,
                       top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    _print_texts(args, args.images, captions, "caption")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from vlmkit.apps.generate import ask

    answers = ask(load_model(args), read_images([args.image]), args.question)
    if args.json:
        print(json.dumps({"image": args.image, "question": args.question, "answer": answers[0]}))
    else:
        print(answers[0])
    return 0


def _print_texts(args: argparse.Namespace, images: list[str], texts: list[str], key: str) -> None:
    if args.json:
        print(json.dumps([{"image": image, key: text} for image, text in zip(images, texts)], indent=2))
    else:
        for image, text in zip(images, texts):
            print(f"{image}: {text}" if len(images) > 1 else text)


def cmd_convert(args: argparse.Namespace) -> int:
    from vlmkit.backends import clip_convert

    source = args.source
    if args.to == "native":
        if source.startswith("open_clip:"):
            from vlmkit.backends.open_clip import parse_spec

            model = clip_convert.native_from_open_clip(*parse_spec(source))
        else:
            model = clip_convert.native_from_hf(_hf_folder(source))
        model.save_pretrained(args.out)
    else:
        from vlmkit.models.hub import load_native, resolve_model_dir

        model = load_native(resolve_model_dir(source))
        if args.to == "hf":
            clip_convert.export_hf(model, args.out)
        else:
            if not args.out.endswith(".safetensors"):
                raise ValueError("--to open_clip writes a state dict: give --out FILE.safetensors")
            clip_convert.export_open_clip(model, args.out)
    print(f"converted {source} -> {args.to}: {args.out}")
    return 0


def _hf_folder(source: str) -> Path:
    from vlmkit.backends.hf import is_hf_folder, resolve_repo

    if source.startswith("hf:"):
        return resolve_repo(source[3:])
    path = Path(source).expanduser()
    if not path.is_dir() or not is_hf_folder(path):
        raise ValueError(f"{source} is not a Hugging Face model folder; to convert to native give a Hugging Face "
                         "CLIP folder, hf:REPO_ID or open_clip:ARCH:CHECKPOINT")
    return path

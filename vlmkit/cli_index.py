"""The ``vlmkit index`` subcommands: build, add, remove, search and info for an image-search index."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

INDEX_TYPE_HELP = ("auto (exact flat below --flat-threshold vectors, IVF above, IVF-PQ with exact re-ranking past "
                   "--max-memory-mb), flat, ivf, ivfpq, or a FAISS factory string such as 'HNSW32,Flat'")
IMAGES_HELP = "image files, folders, CSV/TSV/JSONL/COCO/parquet manifests or WebDataset shards (a .tar, a folder, " \
              "a glob or {00000..00009} braces)"


def add_commands(commands: Any) -> None:
    from vlmkit.cli_use import MODEL_HELP

    index = commands.add_parser(
        "index", help="build and search an image-search index (FAISS vectors + SQLite metadata)",
        description="An index folder holds the embeddings of many images (FAISS) and their metadata (SQLite). "
                    "Build it once with a contrastive model, then search it by text or by image; the index "
                    "remembers its model.",
        epilog="examples:\n  vlmkit index build --model runs/clip --images photos/ --out photos.index\n"
               "  vlmkit index search photos.index \"a red car\" -k 5 --where 'width>=256'\n"
               "  vlmkit index search photos.index --image query.jpg --collapse-duplicates --json\n"
               "  vlmkit index add photos.index --images more_photos/\n"
               "  vlmkit index remove photos.index --ids 3,17\n  vlmkit index info photos.index",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands_of_index = index.add_subparsers(dest="index_command", metavar="COMMAND", required=True)

    build = commands_of_index.add_parser("build", help="embed images and write a new index",
                                         description="Embed images with --model and write a new index to --out. "
                                                     "Interrupted? Run the same command again: it resumes.")
    build.add_argument("--model", required=True, help=MODEL_HELP)
    build.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    build.add_argument("--out", required=True, help="the index folder to create")
    build.add_argument("--index-type", default="auto", help=INDEX_TYPE_HELP)
    build.add_argument("--flat-threshold", type=int, help="auto: exact search below this many vectors "
                                                          "(default 50000)")
    build.add_argument("--max-memory-mb", type=float, help="auto: use IVF-PQ when the float vectors would take "
                                                           "more than this (default 2048)")
    build.add_argument("--nlist", type=int, help="IVF lists (default about 4*sqrt(N))")
    build.add_argument("--nprobe", type=int, help="IVF lists searched by default (default 32)")
    _job_arguments(build)
    build.set_defaults(func=cmd_build)

    add = commands_of_index.add_parser("add", help="embed more images into an index (only ones it lacks)")
    add.add_argument("index", metavar="INDEX")
    add.add_argument("--images", nargs="+", required=True, help=IMAGES_HELP)
    add.add_argument("--model", help="embed with this model instead of the index's own (a warning: only models "
                                     "sharing its embedding space make sense)")
    _job_arguments(add)
    add.set_defaults(func=cmd_add)

    remove = commands_of_index.add_parser("remove", help="remove items by id or by image path")
    remove.add_argument("index", metavar="INDEX")
    remove.add_argument("--ids", nargs="+", default=[], help="item ids, e.g. 1,2 or 1 2 (see `search --json`)")
    remove.add_argument("--paths", nargs="+", default=[], help="image paths as indexed (a shard path removes all "
                                                               "its members)")
    remove.set_defaults(func=cmd_remove)

    search = commands_of_index.add_parser("search", help="search an index by text or by image",
                                          description="Search by text (QUERY) or by image (--image), with the "
                                                      "model the index was built with.")
    search.add_argument("index", metavar="INDEX")
    search.add_argument("query", metavar="QUERY", nargs="?", help="text to search for")
    search.add_argument("--image", help="search for images like this one")
    search.add_argument("-k", type=int, default=10, help="results to return (default 10)")
    search.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                        help="filter on metadata (repeatable, all must hold): FIELD=V, FIELD!=V, FIELD>=N, "
                             "FIELD<=N, FIELD>N, FIELD<N, FIELD~SUBSTRING (case-insensitive); fields: id, path, "
                             "key, caption, width, height, sha256")
    search.add_argument("--collapse-duplicates", action="store_true",
                        help="show only the best of identical or near-identical images")
    search.add_argument("--nprobe", type=int, help="IVF lists to visit (more: better recall, slower)")
    search.add_argument("--model", help="embed the query with this model instead of the index's own (a warning)")
    search.add_argument("--device", default="auto", help="auto | cpu | cuda")
    search.add_argument("--mmap", action="store_true", help="map the index from disk instead of loading it")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(func=cmd_search)

    info = commands_of_index.add_parser("info", help="what an index holds: model, kind, counts, sizes")
    info.add_argument("index", metavar="INDEX")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local worker processes (default) or a Ray cluster")
    parser.add_argument("--ray-address", help="Ray cluster address (default: start or join a local one)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model batch")
    parser.add_argument("--workers", type=int, default=0, help="image decoding worker processes (local)")
    parser.add_argument("--unit-size", type=int, default=1000, help="images per resumable work unit (shards are "
                                                                    "one unit each)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--on-bad-sample", choices=["skip", "error"], default="skip",
                        help="skip (and count) undecodable images, or stop at the first")
    parser.add_argument("--no-progress", action="store_true")


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"executor": args.executor, "ray_address": args.ray_address, "batch_size": args.batch_size,
            "workers": args.workers, "unit_size": args.unit_size, "device": args.device,
            "on_bad_sample": args.on_bad_sample, "progress": not args.no_progress}


def _warn_other_model(model: str, index_spec: str) -> None:
    print(f"vlmkit: warning: using --model {model}, not the index's model {index_spec}; results only make sense "
          "if both share an embedding space", file=sys.stderr)


def _bad_line(info: dict) -> str:
    bad = info.get("bad_samples") or {}
    if not bad.get("count"):
        return ""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(bad["reasons"].items()))
    return f"; skipped {bad['count']} undecodable images ({reasons})"


def cmd_build(args: argparse.Namespace) -> int:
    from vlmkit.search import build_index

    options = {name: value for name, value in (("flat_threshold", args.flat_threshold),
                                               ("max_memory_mb", args.max_memory_mb), ("nlist", args.nlist),
                                               ("nprobe", args.nprobe)) if value is not None}
    index = build_index(args.model, args.images, args.out, index_type=args.index_type, **_job_options(args),
                        **options)
    print(f"indexed {index.count} images into {index.path} ({index.kind}, {index.info['factory']}, "
          f"dimension {index.dim}){_bad_line(index.info)}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from vlmkit.search import SearchIndex, add_to_index
    from vlmkit.search.index import read_info

    info = read_info(args.index)
    before = SearchIndex.open(args.index).count
    if args.model:
        _warn_other_model(args.model, info["model_spec"])
    index = add_to_index(args.index, args.images, args.model, allow_other_model=bool(args.model),
                         **_job_options(args))
    print(f"added {index.count - before} images; {index.path} now holds {index.count}"
          f"{_bad_line(index.info) if index.info.get('bad_samples') != info.get('bad_samples') else ''}")
    return 0


def _parse_ids(values: list[str]) -> list[int]:
    ids = []
    for part in ",".join(values).split(","):
        if part.strip():
            try:
                ids.append(int(part))
            except ValueError:
                raise ValueError(f"--ids takes integer ids such as 1,2 (got {part.strip()!r})") from None
    return ids


def cmd_remove(args: argparse.Namespace) -> int:
    from vlmkit.search import SearchIndex, remove_from_index

    ids = _parse_ids(args.ids)
    if not ids and not args.paths:
        raise ValueError("say what to remove: --ids 1,2 and/or --paths IMAGE ...")
    removed = remove_from_index(args.index, ids=ids, paths=args.paths)
    asked = len(ids) + len(args.paths)
    print(f"removed {removed} items; {SearchIndex.open(args.index).count} remain"
          + ("" if removed >= asked else " (the other ids or paths were not in the index)"))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vlmkit.search import SearchIndex, search_image, search_text
    from vlmkit.search.build import load_model

    if (args.query is None) == (args.image is None):
        raise ValueError("give a text QUERY or --image PATH (one of them)")
    if args.k < 1:
        raise ValueError("-k must be at least 1")
    index = SearchIndex.open(args.index, mmap=args.mmap)
    spec = args.model or index.model_spec
    if args.model:
        _warn_other_model(args.model, index.model_spec)
    elif spec.startswith("python:"):
        raise ValueError(f"{args.index} was built with a loaded model object ({spec}); give --model")
    model = load_model(spec, device=args.device)
    options = {"where": args.where, "collapse_duplicates": args.collapse_duplicates, "nprobe": args.nprobe,
               "allow_other_model": bool(args.model)}
    if args.image:
        hits = search_image(index, model, [args.image], args.k, **options)[0]
    else:
        hits = search_text(index, model, [args.query], args.k, **options)[0]
    if args.json:
        print(json.dumps({"query": args.query, "image": args.image, "hits": [asdict(hit) for hit in hits]},
                         indent=2, ensure_ascii=False))
    elif not hits:
        print("no results" + (" (no item matches the filters)" if args.where else ""))
    else:
        for rank, hit in enumerate(hits, start=1):
            where = hit.path if hit.key == hit.path else f"{hit.path} [{hit.key}]"
            print(f"{rank:3d}. {hit.score:.4f}  #{hit.id}  {where}" + (f"  {hit.caption}" if hit.caption else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vlmkit.search import SearchIndex
    from vlmkit.search.writer import describe

    with SearchIndex.open(args.index) as index:
        summary = describe(index)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    shown = ("model_spec", "kind", "factory", "dim", "count", "removed", "nlist", "nprobe", "refine_factor",
             "created", "updated")
    for name in shown:
        if summary.get(name) is not None:
            print(f"{name:>14}: {summary[name]}")
    for name, size in summary["file_bytes"].items():
        print(f"{name:>14}: {size / 2**20:.2f} MiB")
    if summary.get("bad_samples", {}).get("count"):
        print(f"{'bad images':>14}: {summary['bad_samples']['count']} {summary['bad_samples']['reasons']}")
    if summary.get("advice"):
        print(f"{'advice':>14}: {summary['advice']}")
    return 0

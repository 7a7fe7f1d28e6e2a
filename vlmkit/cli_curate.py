"""The ``vlmkit curate`` command: DataComp-style curation of an image-text pool (see :mod:`vlmkit.curate`)."""
from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(commands: Any) -> None:
    from vlmkit.curate.config import pipeline_names, stage_help
    from vlmkit.cli_use import MODEL_HELP

    curate = commands.add_parser(
        "curate", help="filter, score, deduplicate and balance an image-text pool (DataComp style)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Curate WebDataset shards or manifests with a pipeline of stages (a YAML file or a built-in "
                    f"name: {', '.join(pipeline_names())}). Pass 1 computes every sample's features on the "
                    "executor (resumable per shard: run the same command again after an interruption); pass 2 "
                    "decides. Writes OUT/shards/curated-*.tar (the kept samples), OUT/samples.parquet (every "
                    "sample's scores, kept or dropped_by + reason), OUT/report.html and OUT/report.json.",
        epilog="stages (YAML: `stages: [- NAME: {PARAM: VALUE}]`, in order; defaults in brackets):\n"
               + stage_help())
    curate.add_argument("--input", nargs="+", required=True, metavar="SHARDS|CSV",
                        help="WebDataset shards (folder, glob, {00000..00009}.tar), CSV/TSV/JSONL/parquet "
                             "manifests, COCO JSON or image folders")
    curate.add_argument("--out", required=True, help="output folder (also holds pass 1's resumable work)")
    curate.add_argument("--pipeline", required=True, help="pipeline YAML file or built-in name")
    curate.add_argument("--model", help=f"contrastive model for the model stages ({MODEL_HELP}); overrides the "
                                        "pipeline's model:")
    curate.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.PARAM=VALUE",
                        help="override a pipeline value, e.g. --set clip_score.top_fraction=0.5 "
                             "--set image_based.reference=imagenet/train")
    curate.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local worker processes (default) or Ray Data (a cluster, or a local Ray)")
    curate.add_argument("--workers", type=int, default=0, help="decoding worker processes (local executor)")
    curate.add_argument("--ray-address", help="address of a running Ray cluster (default: start one locally)")
    curate.add_argument("--batch-size", type=int, default=64, help="images per model batch")
    curate.add_argument("--unit-size", type=int, default=1000,
                        help="images per resumable unit for manifests (a shard is always one unit)")
    curate.add_argument("--device", default="auto", help="auto | cpu | cuda")
    curate.add_argument("--no-progress", action="store_true")
    curate.add_argument("--no-images", action="store_true", help="no PNGs in the report (faster)")
    curate.add_argument("--json", action="store_true", help="print the report as JSON")
    curate.set_defaults(func=cmd_curate)


def cmd_curate(args: argparse.Namespace) -> int:
    from vlmkit.curate import curate

    if args.workers < 0 or args.batch_size < 1:
        raise ValueError("--workers must be >= 0 and --batch-size >= 1")
    result = curate(args.input, args.out, args.pipeline, model=args.model, overrides=args.overrides,
                    executor=args.executor, workers=args.workers, batch_size=args.batch_size,
                    unit_size=args.unit_size, device=args.device, ray_address=args.ray_address,
                    progress=not args.no_progress and not args.json, report_images=not args.no_images)
    report = result.report
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    lines = [f"{'stage':16} {'input':>8} {'dropped':>8} {'kept':>8}  reasons"]
    for entry in report["stages"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in entry["reasons"].items())
        lines.append(f"{entry['stage']:16} {entry['input']:8d} {entry['dropped']:8d} {entry['kept']:8d}  {reasons}")
    pass1 = report["pass1"]
    lines.append(f"kept {report['kept']} of {report['total']} samples in {len(report['shards'])} shard(s); pass 1 "
                 f"{pass1['seconds']:.1f} s ({pass1['samples_per_s']:.0f} samples/s, {pass1['units_resumed']} of "
                 f"{pass1['units']} units resumed)")
    lines.append(f"report: {result.out / 'report.html'}; every sample: {result.out / 'samples.parquet'}")
    print("\n".join(lines))
    return 0

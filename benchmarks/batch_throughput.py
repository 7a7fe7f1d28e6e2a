"""Embedding throughput of the batch-job layer (what `vlmkit index build` runs) on each executor.

    python benchmarks/batch_throughput.py [--images 4000] [--batch-size 64] [--workers 0,1] [--ray] [--json]

The built-in scenes (64 px, WebDataset shards of 500) are embedded with a clip-tiny of random weights (the recipe's
architecture, a BPE tokenizer trained on the captions), by ``vlmkit.batch.run_job(EmbedImages(...))``:

- ``local`` with each ``--workers`` count (0: decoding in the main process, N: N DataLoader worker processes);
- ``ray`` (with ``--ray``): a local Ray instance on 127.0.0.1 with every core, the actor pool sized by the
  executor from the resources Ray reports; Ray's start-up is timed apart from the job.

Each run starts from an empty work folder. The report gives images/s per run and checks that every run wrote the
same ids and (to 1e-5) the same vectors as the first.
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

from http_latency import build_random_model  # a sibling benchmark's helper: clip-tiny with random weights

TINY_MODEL = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
              "model.vision.layers=1", "model.vision.heads=2", "model.text.context_length=24",
              "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.embed_dim=16",
              "tokenizer.vocab_size=300"]


def run_once(model_dir: Path, shards: Path, work: Path, executor: str, workers: int, batch_size: int,
             ) -> tuple[dict[str, Any], Any]:
    from vlmkit.batch import EmbedImages, plan_units, read_results, run_job

    shutil.rmtree(work, ignore_errors=True)
    units = plan_units([shards])
    start = time.perf_counter()
    summary = run_job(EmbedImages(model_dir, batch_size=batch_size, device="cpu"), units, work, executor=executor,
                      workers=workers, progress=False)
    seconds = time.perf_counter() - start
    table = read_results(work)
    return {"executor": executor, "workers": workers if executor == "local" else None, "images": summary.rows,
            "bad": summary.bad, "seconds": round(seconds, 2), "images_per_s": round(summary.rows / seconds, 1),
            "pool": summary.pool or None}, table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,1", help="comma-separated local worker counts")
    parser.add_argument("--ray", action="store_true", help="also run the Ray executor (needs vlmkit[ray])")
    parser.add_argument("--workdir", default="runs/batch_throughput")
    parser.add_argument("--tiny", action="store_true", help="60 images at 32 px, a tiny model (for the test)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", help="also write the result JSON here")
    args = parser.parse_args(argv)

    from vlmkit.data import load_samples
    from vlmkit.data.synth import generate

    workdir = Path(args.workdir)
    count, image_size = (60, 32) if args.tiny else (args.images, 64)
    data = workdir / "data"
    marker, wanted = data / "benchmark.json", {"n": count, "image_size": image_size}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(data, ignore_errors=True)
        generate(str(data), count, seed=0, image_size=image_size, shard_size=20 if args.tiny else 500)
        marker.write_text(json.dumps(wanted))
    captions = [c for sample in load_samples(str(data / "captions.csv")) for c in sample.captions]
    model_dir = build_random_model(workdir / "model", captions, TINY_MODEL if args.tiny else [])
    report: dict[str, Any] = {"images": count, "image_size": image_size, "batch_size": args.batch_size,
                              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                          "torch": torch.__version__, "load_average_start": os.getloadavg()[0]},
                              "runs": []}
    reference = None
    plans = [("local", int(w)) for w in args.workers.split(",") if w.strip()] + ([("ray", 0)] if args.ray else [])
    for executor, workers in plans:
        if executor == "ray":
            import ray

            start = time.perf_counter()
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
            report["ray_start_seconds"] = round(time.perf_counter() - start, 2)
        try:
            run, table = run_once(model_dir, data / "shards", workdir / f"work-{executor}-{workers}", executor,
                                  workers, args.batch_size)
        finally:
            if executor == "ray":
                ray.shutdown()
        if reference is None:
            reference = table
        run["same_ids_as_first"] = table.ids == reference.ids
        run["max_abs_diff_vs_first"] = float(np.abs(table.vectors - reference.vectors).max())
        report["runs"].append(run)
        print(f"{executor} (workers {workers}): {run['images_per_s']} images/s", file=sys.stderr)
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    if args.out:
        from vlmkit.eval import write_json

        write_json(args.out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("| executor | workers | images | seconds | images/s | same ids | max abs diff |")
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
        for run in report["runs"]:
            print(f"| {run['executor']} | {run['workers'] if run['workers'] is not None else '-'} | {run['images']} "
                  f"| {run['seconds']} | {run['images_per_s']} | {run['same_ids_as_first']} "
                  f"| {run['max_abs_diff_vs_first']:.1e} |")
        if "ray_start_seconds" in report:
            print(f"\nRay start-up (not in the ray row): {report['ray_start_seconds']} s")
    return report


if __name__ == "__main__":
    main()

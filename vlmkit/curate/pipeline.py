"""``curate``: the two-pass curation pipeline over shards or manifests, on the batch layer's executors.

    Pass 1 (per sample, on the executor, resumable per unit = per shard): decode safely, text and image features,
        and with a model the image embedding and CLIP score -> OUT/pass1/<spec>/ (a ``vlmkit.batch`` work folder)
    Pass 2 (global, on the driver, deterministic): the stages in order -> every sample kept or dropped_by a stage
    Outputs: OUT/shards/curated-%05d.tar, OUT/samples.parquet, OUT/report.html + report.json + report/*.png
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlmkit.batch.run import run_job
from vlmkit.batch.units import DEFAULT_UNIT_SIZE, plan_units
from vlmkit.curate.config import Pipeline, load_pipeline
from vlmkit.curate.decide import Decisions, apply_stages
from vlmkit.curate.jobs import SampleFeatures
from vlmkit.curate.output import write_samples_table, write_shards
from vlmkit.curate.report import write_report
from vlmkit.curate.table import SampleTable
from vlmkit.data.decode import DEFAULT_MAX_PIXELS


@dataclass
class CurationResult:
    """What :func:`curate` did: the table and decisions (index-aligned), the report's content and the paths."""

    table: SampleTable
    decisions: Decisions
    report: dict[str, Any]
    out: Path

    @property
    def kept_ids(self) -> list[str]:
        return [sample for sample, kept in zip(self.table.ids, self.decisions.kept) if kept]


def _work_folder(root: Path, job: SampleFeatures) -> Path:
    """A pass-1 folder per job spec: a pipeline that needs other features computes them beside the old ones."""
    digest = hashlib.sha256(json.dumps(job.spec(), sort_keys=True).encode()).hexdigest()[:10]
    return root / digest


def _features(inputs: Sequence[str | os.PathLike], job: SampleFeatures, root: Path, *, unit_size: int,
              run_options: dict[str, Any]) -> tuple[SampleTable, Any]:
    units = plan_units(list(inputs), unit_size=unit_size)
    work = _work_folder(root, job)
    summary = run_job(job, units, work, **run_options)
    return SampleTable.from_work(work, units), summary


def curate(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, pipeline: Pipeline | str | os.PathLike, *,
           model: str | os.PathLike | None = None, overrides: Sequence[str] = (), executor: str = "local",
           workers: int = 0, batch_size: int = 64, unit_size: int = DEFAULT_UNIT_SIZE, device: str = "auto",
           ray_address: str | None = None, progress: bool = True, report_images: bool = True) -> CurationResult:
    """Curate ``inputs`` (WebDataset shards, manifests, folders) into ``out`` with ``pipeline`` (a
    :class:`Pipeline`, a YAML path or a built-in name; ``overrides`` as ``STAGE.PARAM=VALUE``).

    ``model`` (or the pipeline's ``model:``) is any contrastive model spec ``vlmkit.load`` reads; the model stages
    (clip_score, embedding_dedup, cluster_balance, image_based, decontaminate by embedding) need one. Run it again
    after an interruption: finished units of pass 1 are not recomputed; pass 2 and the outputs are redone (cheap).
    ``report_images=False`` skips the report's PNGs (histograms, example grids).
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, overrides)
    elif overrides:
        raise ValueError("overrides apply to a pipeline file or name, not to a Pipeline object")
    model = model if model is not None else pipeline.model
    if pipeline.needs_model and model is None:
        needing = ", ".join(stage.name for stage in pipeline.stages if stage.needs_model)
        raise ValueError(f"stages {needing} need a contrastive model: give --model (or `model:` in the pipeline)")
    if pipeline.needs_language:
        from vlmkit.curate.features import language_features

        language_features("check that the language identifier loads")
    out = Path(out)
    decodable = pipeline.stages[0]
    max_pixels = getattr(decodable, "max_pixels", None) or DEFAULT_MAX_PIXELS
    run_options = {"executor": executor, "workers": workers, "ray_address": ray_address, "progress": progress}
    started = time.perf_counter()
    job = SampleFeatures(model if pipeline.needs_model else None, batch_size=batch_size, device=device,
                         max_pixels=max_pixels, language=pipeline.needs_language)
    table, summary = _features(inputs, job, out / "pass1", unit_size=unit_size, run_options=run_options)
    pass1_seconds = time.perf_counter() - started
    references: dict[str, dict[str, SampleTable]] = {}
    for stage in pipeline.stages:
        for role, path in stage.references().items():
            reference_job = SampleFeatures(model if stage.needs_model else None, batch_size=batch_size,
                                           device=device, max_pixels=max_pixels, language=False,
                                           score_captions=False)
            references.setdefault(stage.name, {})[role], _ = _features(
                [path], reference_job, out / "references" / f"{stage.name}-{role}", unit_size=unit_size,
                run_options=run_options)
    decided = time.perf_counter()
    decisions = apply_stages(pipeline.stages, table, references)
    pass2_seconds = time.perf_counter() - decided
    written = write_shards(table, decisions, out / "shards", pipeline.shard_size)
    write_samples_table(table, decisions, out / "samples.parquet", written)
    info = {"inputs": [str(item) for item in inputs], "pipeline": pipeline.as_dict(), "model": model,
            "executor": executor, "pass1": {"seconds": round(pass1_seconds, 3), "units": summary.units_total,
                                            "units_done": summary.units_done, "units_resumed": summary.units_skipped,
                                            "samples_per_s": round(len(table) / max(pass1_seconds, 1e-9), 1)},
            "pass2_seconds": round(pass2_seconds, 3), "shards": sorted({name for name, _ in written.values()})}
    report = write_report(table, decisions, pipeline.stages, out, info, images=report_images)
    return CurationResult(table, decisions, report, out)

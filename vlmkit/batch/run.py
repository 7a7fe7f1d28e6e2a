"""``run_job``: one entry point for every batch job on either executor."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlmkit.batch.jobs import BatchJob
from vlmkit.batch.results import UnitAssembler, WorkDir
from vlmkit.batch.units import WorkUnit

EXECUTORS = ("local", "ray")


@dataclass
class JobSummary:
    """What one call of ``run_job`` did. ``units_skipped`` were finished by an earlier call (resume)."""

    executor: str
    units_total: int
    units_done: int
    units_skipped: int
    rows: int
    bad: int
    seconds: float
    bad_reasons: dict[str, int] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return (self.rows + self.bad) / max(self.seconds, 1e-9)


def run_job(job: BatchJob, units: Sequence[WorkUnit], work_dir: str | Path, *, executor: str = "local",
            workers: int = 0, ray_address: str | None = None, ray_actors: int | None = None,
            progress: bool = True, on_bad_sample: str = "skip") -> JobSummary:
    """Run ``job`` over ``units``, writing results to ``work_dir`` (read them with ``read_results``).

    Resumable at unit granularity: units already finished in ``work_dir`` (by either executor) are skipped, so
    running the same call again after an interruption finishes the job without embedding anything twice.
    ``on_bad_sample="error"`` stops at the first undecodable image instead of recording it.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if on_bad_sample not in ("skip", "error"):
        raise ValueError(f"on_bad_sample must be skip or error, not {on_bad_sample!r}")
    started = time.perf_counter()
    work = WorkDir(work_dir, job.spec(), units)
    finished = work.finished()
    todo = [(index, unit) for index, unit in enumerate(units) if unit.name not in finished]
    assembler = UnitAssembler(work, units)
    pool: dict[str, Any] = {}
    if todo:
        if executor == "local":
            from vlmkit.batch.local import run_local

            run_local(job, todo, assembler, workers=workers, progress=progress, on_bad_sample=on_bad_sample)
        else:
            from vlmkit.batch.ray_executor import run_ray

            pool = run_ray(job, todo, assembler, ray_address=ray_address, actors=ray_actors, progress=progress,
                           on_bad_sample=on_bad_sample)
    unfinished = [unit.name for _, unit in todo if unit.name not in assembler.written]
    if unfinished:
        raise RuntimeError(f"the {executor} executor returned without finishing units {unfinished[:5]}")
    done = work.finished()
    new = {name: done[name] for name in assembler.written}
    bad_reasons: dict[str, int] = {}
    if new:
        import json

        for name in new:
            for entry in json.loads((work.path / "parts" / f"{name}.bad.json").read_text()):
                bad_reasons[entry["reason"]] = bad_reasons.get(entry["reason"], 0) + 1
    return JobSummary(executor, len(units), len(new), len(units) - len(todo),
                      sum(counts["rows"] for counts in new.values()), sum(counts["bad"] for counts in new.values()),
                      time.perf_counter() - started, bad_reasons, pool)

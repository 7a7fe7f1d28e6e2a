"""A job's work folder: what it was asked to do, which units are finished, and their results.

    WORK/job.json        the job's spec and the plan's fingerprint and unit names (a restart must match them)
    WORK/progress.json   finished units, with their row and bad-sample counts (rewritten atomically per unit)
    WORK/parts/NAME.parquet    one row per good record: id, row, path, offset, size, caption, metadata, outputs
    WORK/parts/NAME.bad.json   the unit's bad records: id, row, reason, detail (reported, never silently lost)

A unit's part files are written before it is marked finished, so a job killed at any moment loses at most the
units in flight, and nothing is written twice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmkit.batch.units import Record, WorkUnit, plan_fingerprint
from vlmkit.data.decode import BadSample
from vlmkit.files import atomic_path, atomic_write_text

RECORD_COLUMNS = ("id", "row", "path", "offset", "size", "caption")


class WorkDir:
    """The work folder of one job over one plan; refuses to mix jobs or plans."""

    def __init__(self, path: str | Path, job_spec: dict[str, Any], units: Sequence[WorkUnit]) -> None:
        self.path = Path(path)
        self.units = list(units)
        description = {"job": job_spec, "fingerprint": plan_fingerprint(self.units),
                       "units": [unit.name for unit in self.units], "records": sum(map(len, self.units))}
        existing = self.path / "job.json"
        if existing.exists():
            recorded = json.loads(existing.read_text())
            if recorded.get("job") != job_spec:
                raise ValueError(f"{self.path} holds another job ({recorded.get('job')}); use a new folder or "
                                 "delete this one")
            if recorded.get("fingerprint") != description["fingerprint"]:
                raise ValueError(f"{self.path} was made for other inputs ({recorded.get('records')} records in "
                                 f"{len(recorded.get('units', []))} units); use a new folder or delete this one")
        else:
            atomic_write_text(existing, json.dumps(description, indent=1) + "\n")
        (self.path / "parts").mkdir(parents=True, exist_ok=True)

    def finished(self) -> dict[str, dict[str, int]]:
        """{unit name: {"rows", "bad"}} of the units whose results are complete on disk."""
        progress = self.path / "progress.json"
        done = json.loads(progress.read_text())["finished"] if progress.exists() else {}
        return {name: counts for name, counts in done.items() if (self.path / "parts" / f"{name}.parquet").exists()}

    def write_unit(self, unit: WorkUnit, results: Sequence[dict[str, Any] | BadSample]) -> dict[str, int]:
        """Write one finished unit (``results[i]`` belongs to ``unit.records[i]``) and mark it finished."""
        good = [(row, record, result) for row, (record, result) in enumerate(zip(unit.records, results))
                if not isinstance(result, BadSample)]
        bad = [{"id": record.id, "row": row, "reason": result.reason, "detail": result.detail}
               for row, (record, result) in enumerate(zip(unit.records, results)) if isinstance(result, BadSample)]
        parts = self.path / "parts"
        atomic_write_text(parts / f"{unit.name}.bad.json", json.dumps(bad, ensure_ascii=False) + "\n")
        _write_parquet(parts / f"{unit.name}.parquet", good)
        counts = {"rows": len(good), "bad": len(bad)}
        done = self.finished()
        done[unit.name] = counts
        atomic_write_text(self.path / "progress.json", json.dumps({"finished": done}, indent=1) + "\n")
        return counts


class UnitAssembler:
    """Collects per-record results that arrive in any order and writes each unit when its last record arrives."""

    def __init__(self, work: WorkDir, units: Sequence[WorkUnit]) -> None:
        self.work, self.units = work, list(units)
        self.pending: dict[int, dict[int, dict[str, Any] | BadSample]] = {}
        self.written: list[str] = []

    def add(self, unit_index: int, row: int, result: dict[str, Any] | BadSample) -> str | None:
        """Add one record's result; returns the unit's name when this completed (and wrote) it."""
        collected = self.pending.setdefault(unit_index, {})
        collected[row] = result
        unit = self.units[unit_index]
        if len(collected) < len(unit):
            return None
        self.work.write_unit(unit, [collected[index] for index in range(len(unit))])
        del self.pending[unit_index]
        self.written.append(unit.name)
        return unit.name


@dataclass
class ResultTable:
    """A finished job's results in plan order (units in order, records in input order).

    ``vectors`` is the ``embedding`` column as float32 [N, D] (empty [0, 0] when the job wrote none);
    ``columns`` holds every other column as lists; ``bad`` the records that could not be used."""

    ids: list[str]
    vectors: np.ndarray
    columns: dict[str, list[Any]]
    bad: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def read_results(work_dir: str | Path) -> ResultTable:
    """The results of a finished job in ``work_dir`` (as written by ``run_job``).

    Raises:
        FileNotFoundError: not a job folder.  ValueError: the job has unfinished units (run it again to resume).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    work_dir = Path(work_dir)
    description = work_dir / "job.json"
    if not description.exists():
        raise FileNotFoundError(f"{work_dir} is not a batch job folder (no job.json)")
    names = json.loads(description.read_text())["units"]
    progress = work_dir / "progress.json"
    done = json.loads(progress.read_text())["finished"] if progress.exists() else {}
    missing = [name for name in names if name not in done or not (work_dir / "parts" / f"{name}.parquet").exists()]
    if missing:
        raise ValueError(f"the job in {work_dir} is not finished: {len(names) - len(missing)} of {len(names)} "
                         "units done; run it again to resume")
    tables, bad = [], []
    for name in names:
        table = pq.read_table(work_dir / "parts" / f"{name}.parquet")
        tables.append(table.append_column("unit", pa.array([name] * table.num_rows, pa.string())))
        bad += [{**entry, "unit": name} for entry in json.loads((work_dir / "parts" / f"{name}.bad.json").read_text())]
    table = pa.concat_tables(tables, promote_options="default")
    columns = {name: table.column(name).to_pylist() for name in table.column_names if name != "embedding"}
    if "embedding" in table.column_names and table.num_rows:
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                             dtype=np.float32).reshape(table.num_rows, -1)
    else:
        vectors = np.zeros((0, 0), dtype=np.float32)
    return ResultTable(columns.pop("id"), vectors, columns, bad)


def _write_parquet(path: Path, good: list[tuple[int, Record, dict[str, Any]]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [record for _, record, _ in good]
    data: dict[str, Any] = {
        "id": pa.array([r.id for r in records], pa.string()), "row": pa.array([row for row, _, _ in good], pa.int32()),
        "path": pa.array([r.path for r in records], pa.string()),
        "offset": pa.array([r.offset for r in records], pa.int64()),
        "size": pa.array([r.size for r in records], pa.int64()),
        "caption": pa.array([r.caption for r in records], pa.string())}
    output_names = sorted({name for _, _, result in good for name in result}) if good else []
    for name in output_names:
        values = [result.get(name) for _, _, result in good]
        if name == "embedding":
            matrix = np.stack([np.asarray(value, dtype=np.float32) for value in values])
            data[name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()),
                                                           matrix.shape[1])
        else:
            data[name] = pa.array([value.item() if isinstance(value, np.generic) else value for value in values])
    table = pa.table(data)
    with atomic_path(path) as temporary:
        pq.write_table(table, str(temporary))

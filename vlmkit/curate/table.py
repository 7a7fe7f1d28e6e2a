"""The sample table: every input sample of pass 1 in input order, decoded or not, with its feature columns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmkit.batch.results import read_results
from vlmkit.batch.units import WorkUnit

RECORD_COLUMNS = ("source", "offset", "size", "caption")


@dataclass
class SampleTable:
    """``columns[name][i]`` describes sample ``ids[i]`` (plan order = input order). Always present: ``source``
    (file or shard path), ``offset``/``size`` (inside a shard, else -1), ``caption``, ``decoded`` (bool) and, for
    undecoded samples, ``bad_reason``/``bad_detail``. Feature columns are NaN / "" / False where not decoded.
    ``embeddings`` is float32 [N, D] (zero rows where not decoded), or None when pass 1 ran without a model."""

    ids: list[str]
    columns: dict[str, np.ndarray]
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def decoded(self) -> np.ndarray:
        return self.columns["decoded"]

    def column(self, name: str, needed_by: str) -> np.ndarray:
        """A feature column; a clear error when pass 1 did not compute it (e.g. ``clip_score`` without a model)."""
        if name not in self.columns:
            hint = " (give the pipeline a model: --model or `model:` in the YAML)" if name == "clip_score" else ""
            raise ValueError(f"stage {needed_by} needs the {name!r} feature, which pass 1 did not compute{hint}")
        return self.columns[name]

    def require_embeddings(self, needed_by: str) -> np.ndarray:
        if self.embeddings is None:
            raise ValueError(f"stage {needed_by} needs image embeddings: give the pipeline a model (--model or "
                             "`model:` in the YAML)")
        return self.embeddings

    @classmethod
    def from_work(cls, work_dir: str | Path, units: Sequence[WorkUnit]) -> "SampleTable":
        """Assemble a finished pass-1 job (good rows and bad records) into one table in plan order."""
        results = read_results(work_dir)
        starts, position = {}, 0
        for unit in units:
            starts[unit.name], position = position, position + len(unit)
        records = [record for unit in units for record in unit.records]
        total = len(records)
        columns: dict[str, np.ndarray] = {
            "source": np.array([record.path for record in records], dtype=object),
            "offset": np.array([-1 if record.offset is None else record.offset for record in records], np.int64),
            "size": np.array([-1 if record.size is None else record.size for record in records], np.int64),
            "caption": np.array([record.caption for record in records], dtype=object),
            "decoded": np.zeros(total, bool),
            "bad_reason": np.full(total, "", dtype=object), "bad_detail": np.full(total, "", dtype=object)}
        good = np.array([starts[unit] + row for unit, row in zip(results.columns["unit"], results.columns["row"])],
                        np.int64)
        columns["decoded"][good] = True
        skip = {"row", "unit", "path", "offset", "size", "caption", "clip_score"}
        for name, values in results.columns.items():
            if name not in skip:
                columns[name] = _scatter(values, good, total)
        if "clip_score" in results.columns:
            columns["clip_score"] = _scatter([np.nan if v is None else v for v in results.columns["clip_score"]],
                                             good, total)
        for entry in results.bad:
            index = starts[entry["unit"]] + int(entry["row"])
            columns["bad_reason"][index], columns["bad_detail"][index] = entry["reason"], entry["detail"]
        embeddings = None
        if results.vectors.size:
            embeddings = np.zeros((total, results.vectors.shape[1]), np.float32)
            embeddings[good] = results.vectors
        return cls([record.id for record in records], columns, embeddings)


def _scatter(values: list[Any], where: np.ndarray, total: int) -> np.ndarray:
    """A full-length column from the decoded samples' values: floats/ints -> float (NaN), bools, strings ("")."""
    sample = next((value for value in values if value is not None), None)
    if isinstance(sample, (bool, np.bool_)):
        column = np.zeros(total, bool)
    elif isinstance(sample, (int, float, np.number)):
        column = np.full(total, np.nan)
    else:
        column = np.full(total, "", dtype=object)
    if len(values):
        column[where] = np.asarray(values, dtype=column.dtype)
    return column

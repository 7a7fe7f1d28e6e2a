"""Pass 2: run the stages in order over the sample table and record every sample's fate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vlmkit.curate.stages import Stage
from vlmkit.curate.table import SampleTable


@dataclass
class Decisions:
    """Per sample [N]: ``kept`` (bool), ``dropped_by`` (the first stage that dropped it, "" if kept), ``reason``
    (a short code) and ``detail`` (a sentence). ``stages`` counts, per stage in order, what it saw and dropped."""

    kept: np.ndarray
    dropped_by: np.ndarray
    reason: np.ndarray
    detail: np.ndarray
    stages: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kept)


def apply_stages(stages: Sequence[Stage], table: SampleTable,
                 references: dict[str, dict[str, SampleTable]] | None = None) -> Decisions:
    """Run ``stages`` in order; each sees only the samples no earlier stage dropped. Deterministic: the same
    table gives the same decisions. ``references[stage name][role]`` holds the image sets a stage compares to."""
    references = references or {}
    total = len(table)
    alive = np.ones(total, bool)
    decisions = Decisions(np.ones(total, bool), np.full(total, "", dtype=object), np.full(total, "", dtype=object),
                          np.full(total, "", dtype=object))
    for stage in stages:
        seen = int(alive.sum())
        drops = stage.decide(table, alive.copy(), references.get(stage.name, {}))
        reasons: dict[str, int] = {}
        for index, (reason, detail) in sorted(drops.items()):
            if not alive[index]:
                raise RuntimeError(f"stage {stage.name} dropped sample {table.ids[index]} twice or after an earlier "
                                   "stage")
            alive[index] = False
            decisions.dropped_by[index], decisions.reason[index], decisions.detail[index] = stage.name, reason, detail
            reasons[reason] = reasons.get(reason, 0) + 1
        decisions.stages.append({"stage": stage.name, "summary": stage.summary, "params": stage.params(),
                                 "input": seen, "dropped": len(drops), "kept": seen - len(drops),
                                 "reasons": dict(sorted(reasons.items(), key=lambda item: -item[1]))})
    decisions.kept = alive
    return decisions

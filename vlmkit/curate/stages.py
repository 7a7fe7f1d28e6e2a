"""The stage interface of the curation pipeline, and small helpers the stages share.

A stage is a dataclass whose fields are its parameters (so a YAML entry maps onto it and an unknown parameter is
refused by name). In pass 2 the pipeline hands each stage, in order, the sample table and the mask of samples
still alive; the stage returns the ones it drops, each with a reason code and a human detail. A stage never sees
what an earlier stage dropped, so every dropped sample has exactly one ``dropped_by``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vlmkit.curate.table import SampleTable

Drops = dict[int, tuple[str, str]]  # sample index -> (reason code, detail)


@dataclass
class Stage:
    """Base class. Subclasses set ``name`` and ``summary`` and implement :meth:`decide`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # the feature columns this stage thresholds: plotted as histograms in the report
    scores: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Raise ValueError for parameters that cannot work (called once, when the pipeline is built)."""

    @property
    def needs_model(self) -> bool:
        """Whether pass 1 must compute image embeddings / CLIP scores for this stage."""
        return False

    @property
    def needs_language(self) -> bool:
        return False

    def references(self) -> dict[str, str]:
        """Other image sets this stage compares against ({role: path}); pass 1 featurises them too."""
        return {}

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        """The samples among ``alive`` ([N] bool) that this stage drops."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def check_number(stage: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 optional: bool = True, integer: bool = False) -> None:
    """A clear error unless ``value`` is a number in [low, high] (None allowed when ``optional``)."""
    if value is None:
        if not optional:
            raise ValueError(f"stage {stage}: {name} is required")
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"stage {stage}: {name} must be {kind}, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low} and {high}" if low is not None and high is not None else \
            (f"at least {low}" if low is not None else f"at most {high}")
        raise ValueError(f"stage {stage}: {name} must be {span}, not {value}")


def threshold_drops(alive: np.ndarray, checks: list[tuple[np.ndarray, str, Any]]) -> Drops:
    """Drops from per-sample tests: ``checks`` are (failing mask [N], reason, detail(i) -> str), tried in order,
    so a sample failing several is dropped for the first."""
    drops: Drops = {}
    for failing, reason, detail in checks:
        for index in np.flatnonzero(failing & alive):
            drops.setdefault(int(index), (reason, detail(int(index))))
    return drops


def format_value(value: float) -> str:
    return f"{value:.4g}"

"""CLIP-score filtering: the cosine of each image's and caption's embeddings from any contrastive model (computed
in pass 1), kept above an absolute ``threshold`` or in the ``top_fraction`` of the samples still alive (DataComp's
best small/medium baseline keeps the top 30%)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vlmkit.curate.stages import Drops, Stage, check_number, format_value, threshold_drops
from vlmkit.curate.table import SampleTable


@dataclass
class ClipScore(Stage):
    """Give exactly one of ``threshold`` (keep cosine >= threshold) or ``top_fraction`` (keep the best fraction of
    the samples alive at this stage; ties broken by input order). Samples without a caption have no score and
    are dropped."""

    name = "clip_score"
    summary = "CLIP score (image-caption cosine)"
    scores = ("clip_score",)
    threshold: Optional[float] = None
    top_fraction: Optional[float] = None

    @property
    def needs_model(self) -> bool:
        return True

    def validate(self) -> None:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError(f"stage {self.name}: give exactly one of threshold (e.g. 0.28) or top_fraction "
                             "(e.g. 0.3)")
        check_number(self.name, "threshold", self.threshold, low=-1.0, high=1.0)
        check_number(self.name, "top_fraction", self.top_fraction, low=0.0, high=1.0)

    def cutoff(self, scores: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, str]:
        """The mask [N] of alive samples kept, and how the cut was made (for the details)."""
        scored = alive & ~np.isnan(scores)
        if self.threshold is not None:
            return scored & (scores >= self.threshold), f">= {self.threshold}"
        candidates = np.flatnonzero(scored)
        keep_count = int(round(self.top_fraction * int(alive.sum())))
        # stable sort on -score: equal scores keep input order, so both executors cut in the same place
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        kept = np.zeros(len(scores), bool)
        kept[order[:keep_count]] = True
        lowest = format_value(float(scores[order[keep_count - 1]])) if keep_count and len(order) else "-"
        return kept, f"in the top {self.top_fraction:.0%} (>= {lowest})"

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        scores = table.column("clip_score", self.name).astype(np.float64)
        kept, rule = self.cutoff(scores, alive)
        return threshold_drops(alive, [
            (np.isnan(scores), "no_clip_score", lambda i: "no caption to score"),
            (~kept, "low_clip_score", lambda i: f"score {format_value(scores[i])}, not {rule}")])

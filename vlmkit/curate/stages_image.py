"""Image stages: decodable (always first: an image vlmkit's safe decoder refuses is dropped with its reason), and
size (DataComp basic: shorter side at least 200 pixels, aspect ratio at most 3), with pixel-count bounds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vlmkit.curate.stages import Drops, Stage, check_number, format_value, threshold_drops
from vlmkit.curate.table import SampleTable


@dataclass
class Decodable(Stage):
    """Drop samples whose image is missing, empty, corrupt, truncated or too large to decode (``max_pixels``,
    checked from the header). The pipeline runs it first even when the YAML does not list it."""

    name = "decodable"
    summary = "image decodes"
    max_pixels: Optional[int] = None

    def validate(self) -> None:
        check_number(self.name, "max_pixels", self.max_pixels, low=1, integer=True)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        reasons, details = table.columns["bad_reason"], table.columns["bad_detail"]
        return {int(i): (str(reasons[i]) or "undecodable", str(details[i]))
                for i in np.flatnonzero(alive & ~table.decoded)}


@dataclass
class ImageSize(Stage):
    """Keep images whose shorter side is at least ``min_side``, longer side at most ``max_side``, aspect ratio
    (longer / shorter side) at most ``max_aspect`` and pixel count within [``min_pixels``, ``max_pixels``]."""

    name = "image_size"
    summary = "image side, aspect ratio and pixel count"
    scores = ("width", "aspect")
    min_side: Optional[int] = 200
    max_side: Optional[int] = None
    max_aspect: Optional[float] = 3.0
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None

    def validate(self) -> None:
        for key in ("min_side", "max_side", "min_pixels", "max_pixels"):
            check_number(self.name, key, getattr(self, key), low=1, integer=True)
        check_number(self.name, "max_aspect", self.max_aspect, low=1.0)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        width, height = table.column("width", self.name), table.column("height", self.name)
        pixels, aspect = table.column("pixels", self.name), table.column("aspect", self.name)
        short, long = np.minimum(width, height), np.maximum(width, height)

        def size(i: int) -> str:
            return f"{int(width[i])}x{int(height[i])}"

        checks = []
        if self.min_side is not None:
            checks.append((short < self.min_side, "too_small", lambda i: f"{size(i)}: shorter side < {self.min_side}"))
        if self.max_side is not None:
            checks.append((long > self.max_side, "too_large", lambda i: f"{size(i)}: longer side > {self.max_side}"))
        if self.max_aspect is not None:
            checks.append((aspect > self.max_aspect, "aspect_ratio",
                           lambda i: f"{size(i)}: aspect ratio {format_value(aspect[i])} > {self.max_aspect}"))
        if self.min_pixels is not None:
            checks.append((pixels < self.min_pixels, "too_few_pixels",
                           lambda i: f"{size(i)}: {int(pixels[i])} pixels < {self.min_pixels}"))
        if self.max_pixels is not None:
            checks.append((pixels > self.max_pixels, "too_many_pixels",
                           lambda i: f"{size(i)}: {int(pixels[i])} pixels > {self.max_pixels}"))
        return threshold_drops(alive, checks)

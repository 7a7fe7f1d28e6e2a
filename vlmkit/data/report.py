"""BadSampleReport: what a run skipped and converted, counted per reason, with example keys."""
from __future__ import annotations

from collections import Counter

_MAX_EXAMPLES = 5


class BadSampleReport:
    """Counts of skipped samples per reason and of conversions per note, with example keys.

    ``total_converted`` counts conversion notes (a palette PNG with transparency counts once
    for ``palette`` and once for ``alpha``).
    """

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self.skipped_examples: dict[str, list[str]] = {}
        self.converted_examples: dict[str, list[str]] = {}

    @staticmethod
    def _remember(examples: dict[str, list[str]], name: str, key: str) -> None:
        keys = examples.setdefault(name, [])
        if key and len(keys) < _MAX_EXAMPLES and key not in keys:
            keys.append(key)

    def skip(self, reason: str, key: str = "") -> None:
        """Record one skipped sample."""
        self.skipped[reason] += 1
        self._remember(self.skipped_examples, reason, key)

    def convert(self, note: str, key: str = "") -> None:
        """Record one conversion."""
        self.converted[note] += 1
        self._remember(self.converted_examples, note, key)

    def merge(self, other: "BadSampleReport") -> None:
        """Add another report's counts (e.g. from another rank or epoch) into this one."""
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        for mine, theirs in (
            (self.skipped_examples, other.skipped_examples),
            (self.converted_examples, other.converted_examples),
        ):
            for name, keys in theirs.items():
                mine.setdefault(name, [])
                for key in keys:
                    self._remember(mine, name, key)

    def update_from_batch(self, batch: dict) -> None:
        """Record a collated batch's ``bad`` [(key, reason)] and ``converted`` [(key, note)]."""
        for key, reason in batch.get("bad", ()):
            self.skip(reason, key)
        for key, note in batch.get("converted", ()):
            self.convert(note, key)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def total_converted(self) -> int:
        return sum(self.converted.values())

    def __bool__(self) -> bool:
        return bool(self.total_skipped or self.total_converted)

    def as_dict(self) -> dict:
        """A JSON-able dict (counts sorted by name)."""
        return {
            "total_skipped": self.total_skipped,
            "total_converted": self.total_converted,
            "skipped": dict(sorted(self.skipped.items())),
            "converted": dict(sorted(self.converted.items())),
            "skipped_examples": {k: list(v) for k, v in sorted(self.skipped_examples.items())},
            "converted_examples": {
                k: list(v) for k, v in sorted(self.converted_examples.items())
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BadSampleReport":
        """Rebuild a report written by :meth:`as_dict`."""
        report = cls()
        report.skipped.update(data.get("skipped", {}))
        report.converted.update(data.get("converted", {}))
        report.skipped_examples = {k: list(v) for k, v in data.get("skipped_examples", {}).items()}
        report.converted_examples = {
            k: list(v) for k, v in data.get("converted_examples", {}).items()
        }
        return report

    def summary(self) -> str:
        """One human line, e.g. ``skipped 3 samples: corrupt_image 2 (e.g. k1, k2), ...``."""
        if not self:
            return "no bad samples"
        parts = []
        if self.skipped:
            items = []
            for reason, count in _by_count(self.skipped):
                examples = self.skipped_examples.get(reason, [])[:3]
                suffix = f" (e.g. {', '.join(examples)})" if examples else ""
                items.append(f"{reason} {count}{suffix}")
            noun = "sample" if self.total_skipped == 1 else "samples"
            parts.append(f"skipped {self.total_skipped} {noun}: " + ", ".join(items))
        if self.converted:
            items = [f"{note} {count}" for note, count in _by_count(self.converted)]
            parts.append(f"converted {self.total_converted}: " + ", ".join(items))
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"BadSampleReport({self.summary()})"


def _by_count(counter: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first, ties by name, so summaries are stable."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))

"""Caption stages: length (DataComp basic: more than 2 words and more than 5 characters), repeated characters,
URL / boilerplate patterns, and language identification with a probability threshold."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vlmkit.curate.features import clean_caption
from vlmkit.curate.stages import Drops, Stage, check_number, format_value, threshold_drops
from vlmkit.curate.table import SampleTable


@dataclass
class CaptionLength(Stage):
    """Keep captions with at least ``min_words`` words and ``min_chars`` characters (and at most the maxima)."""

    name = "caption_length"
    summary = "caption length in words and characters"
    scores = ("words", "chars")
    min_words: int = 3
    min_chars: int = 6
    max_words: Optional[int] = None
    max_chars: Optional[int] = None

    def validate(self) -> None:
        for key in ("min_words", "min_chars", "max_words", "max_chars"):
            check_number(self.name, key, getattr(self, key), low=0, integer=True)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        words, chars = table.column("words", self.name), table.column("chars", self.name)
        checks = [(words < self.min_words, "too_few_words", lambda i: f"{int(words[i])} words < {self.min_words}"),
                  (chars < self.min_chars, "too_few_chars", lambda i: f"{int(chars[i])} characters < {self.min_chars}")]
        if self.max_words is not None:
            checks.append((words > self.max_words, "too_many_words",
                           lambda i: f"{int(words[i])} words > {self.max_words}"))
        if self.max_chars is not None:
            checks.append((chars > self.max_chars, "too_many_chars",
                           lambda i: f"{int(chars[i])} characters > {self.max_chars}"))
        return threshold_drops(alive, checks)


@dataclass
class RepeatedChars(Stage):
    """Drop captions with a run of more than ``max_run`` identical characters, or whose share of characters
    repeating the previous one exceeds ``max_ratio`` ("!!!!!!!!", "aaaaaaah", "- - - -" spam)."""

    name = "repeated_chars"
    summary = "repeated characters"
    scores = ("longest_run", "repeat_ratio")
    max_run: Optional[int] = 5
    max_ratio: Optional[float] = 0.3

    def validate(self) -> None:
        check_number(self.name, "max_run", self.max_run, low=1, integer=True)
        check_number(self.name, "max_ratio", self.max_ratio, low=0.0, high=1.0)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        run, ratio = table.column("longest_run", self.name), table.column("repeat_ratio", self.name)
        checks = []
        if self.max_run is not None:
            checks.append((run > self.max_run, "character_run",
                           lambda i: f"a run of {int(run[i])} identical characters > {self.max_run}"))
        if self.max_ratio is not None:
            checks.append((ratio > self.max_ratio, "repeated_characters",
                           lambda i: f"repeat ratio {format_value(ratio[i])} > {self.max_ratio}"))
        return threshold_drops(alive, checks)


@dataclass
class Boilerplate(Stage):
    """Drop captions holding a URL or e-mail (``urls``), alt-text boilerplate such as file names, "stock photo",
    "click here" (``builtin``), or matching any of your own regular expressions (``patterns``, case-insensitive)."""

    name = "boilerplate"
    summary = "URL and boilerplate patterns"
    urls: bool = True
    builtin: bool = True
    patterns: list = field(default_factory=list)

    def validate(self) -> None:
        for key in ("urls", "builtin"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"stage {self.name}: {key} must be true or false")
        if not isinstance(self.patterns, list) or not all(isinstance(p, str) for p in self.patterns):
            raise ValueError(f"stage {self.name}: patterns must be a list of regular expressions")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"stage {self.name}: bad pattern {pattern!r}: {error}") from None

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        captions = table.columns["caption"]
        checks = []
        if self.urls:
            checks.append((table.column("has_url", self.name), "url", lambda i: "the caption holds a URL or e-mail"))
        if self.builtin:
            checks.append((table.column("boilerplate", self.name), "boilerplate",
                           lambda i: "the caption matches a boilerplate pattern"))
        if self.patterns:
            custom = re.compile("|".join(f"(?:{pattern})" for pattern in self.patterns), re.IGNORECASE)
            matched = np.array([bool(custom.search(clean_caption(caption))) for caption in captions], bool)
            checks.append((matched, "pattern", lambda i: f"matches {custom.search(clean_caption(captions[i]))[0]!r}"))
        return threshold_drops(alive, checks)


@dataclass
class Language(Stage):
    """Keep captions whose identified language (py3langid, offline) is one of ``languages`` with probability at
    least ``min_probability``. DataComp keeps English (its basic filter uses fastText LID)."""

    name = "language"
    summary = "language identification"
    scores = ("language_probability",)
    languages: list = field(default_factory=lambda: ["en"])
    min_probability: float = 0.0

    @property
    def needs_language(self) -> bool:
        return True

    def validate(self) -> None:
        if isinstance(self.languages, str):
            self.languages = [self.languages]
        if not self.languages or not all(isinstance(code, str) and code for code in self.languages):
            raise ValueError(f"stage {self.name}: languages must be a list of language codes such as [en, de]")
        check_number(self.name, "min_probability", self.min_probability, low=0.0, high=1.0, optional=False)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        language = table.column("language", self.name)
        probability = table.column("language_probability", self.name)
        other = ~np.isin(language.astype(str), self.languages)
        unsure = probability < self.min_probability
        wanted = "/".join(self.languages)
        return threshold_drops(alive, [
            (other, "language",
             lambda i: f"{language[i] or 'no text'} (p={format_value(probability[i])}), not {wanted}"),
            (unsure, "language_unsure",
             lambda i: f"{language[i]} with p={format_value(probability[i])} < {self.min_probability}")])

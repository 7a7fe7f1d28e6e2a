"""Hard negative captions, NegCLIP-style: the same words, a different meaning.

A rule-based rewriter of free text (it knows colour, size and relation words and finds nouns after articles or
numbers), so it works on any caption, the built-in scenes' included:

- ``swap_attributes``: two different colour (or size) words exchange places ("a red circle and a blue square" ->
  "a blue circle and a red square");
- ``swap_objects``: two different nouns exchange places ("a circle left of a square" -> "a square left of a circle");
- ``flip_relation``: a spatial relation becomes its opposite ("left of" -> "right of", "above" -> "below");
- ``change_count``: a number goes up or down by one ("two stars" -> "three stars");
- ``shuffle``: the words in another order (only when no other rewrite applies).
"""
from __future__ import annotations

import random
import re

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey")
SIZES = ("small", "large", "big", "tiny", "little", "huge")
RELATIONS = (("left of", "right of"), ("above", "below"), ("on top of", "underneath"), ("in front of", "behind"),
             ("inside", "outside"), ("bigger than", "smaller than"), ("over", "under"))
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ARTICLES = {"a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}
_WORD = re.compile(r"[A-Za-z]+|\d+|[^A-Za-z\d\s]+|\s+")


def _tokens(caption: str) -> list[str]:
    return _WORD.findall(caption)


def _swap_words(tokens: list[str], positions: list[int], rng: random.Random) -> list[str] | None:
    """Exchange two positions whose words differ; None when every candidate word is the same."""
    pairs = [(i, j) for a, i in enumerate(positions) for j in positions[a + 1:]
             if tokens[i].lower() != tokens[j].lower()]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    out = list(tokens)
    out[i], out[j] = tokens[j], tokens[i]
    return out


def swap_attributes(caption: str, rng: random.Random) -> str | None:
    tokens = _tokens(caption)
    for vocabulary in (COLORS, SIZES):
        positions = [i for i, t in enumerate(tokens) if t.lower() in vocabulary]
        swapped = _swap_words(tokens, positions, rng)
        if swapped is not None:
            return "".join(swapped)
    return None


def _noun_positions(tokens: list[str]) -> list[int]:
    """The last word of each phrase that starts with an article or a number (skipping colour/size words)."""
    words = [i for i, t in enumerate(tokens) if t.strip() and t[0].isalnum()]
    positions = []
    for k, i in enumerate(words):
        if tokens[i].lower() in ARTICLES or tokens[i].isdigit():
            j = k + 1
            while j < len(words) and tokens[words[j]].lower() in COLORS + SIZES:
                j += 1
            if j < len(words) and tokens[words[j]].lower() not in ARTICLES:
                positions.append(words[j])
    return positions


def swap_objects(caption: str, rng: random.Random) -> str | None:
    tokens = _tokens(caption)
    swapped = _swap_words(tokens, _noun_positions(tokens), rng)
    return "".join(swapped) if swapped is not None else None


def flip_relation(caption: str, rng: random.Random) -> str | None:
    found = []
    for first, second in RELATIONS:
        for word, opposite in ((first, second), (second, first)):
            for match in re.finditer(rf"\b{re.escape(word)}\b", caption, flags=re.IGNORECASE):
                found.append((match.start(), match.end(), opposite))
    if not found:
        return None
    start, end, opposite = rng.choice(found)
    return caption[:start] + opposite + caption[end:]


def change_count(caption: str, rng: random.Random) -> str | None:
    tokens = _tokens(caption)
    positions = [i for i, t in enumerate(tokens) if t.lower() in NUMBERS[1:] or (t.isdigit() and len(t) < 4)]
    if not positions:
        return None
    i = rng.choice(positions)
    word = tokens[i]
    value = NUMBERS.index(word.lower()) if word.lower() in NUMBERS else int(word)
    new = value + rng.choice((-1, 1)) if value > 1 else value + 1
    out = list(tokens)
    out[i] = (NUMBERS[new] if new < len(NUMBERS) else str(new)) if word.lower() in NUMBERS else str(new)
    return "".join(out)


def shuffle_words(caption: str, rng: random.Random) -> str | None:
    words = caption.split()
    if len(set(words)) < 2:
        return None
    for _ in range(10):
        order = list(words)
        rng.shuffle(order)
        if order != words:
            return " ".join(order)
    return None


REWRITES = (swap_attributes, swap_objects, flip_relation, change_count)


def hard_negatives(caption: str, count: int, rng: random.Random) -> list[str]:
    """Up to ``count`` distinct negatives of ``caption`` (each differs from it), by the applicable rewrites in
    random order; word shuffles fill in when the rewrites give too few. Never empty for a caption of 2+ words."""
    rewrites = list(REWRITES)
    rng.shuffle(rewrites)
    negatives: list[str] = []
    for rewrite in rewrites + [shuffle_words] * max(count, 1):
        if len(negatives) >= count:
            break
        candidate = rewrite(caption, rng)
        if candidate and candidate.strip().lower() != caption.strip().lower() and candidate not in negatives:
            negatives.append(candidate)
    return negatives

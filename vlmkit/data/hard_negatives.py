"""Hard negative captions, NegCLIP-style: the same words, a different meaning, still grammatical.

A rule-based rewriter of free text (it knows colour, size, number and relation words and finds noun phrases that
start with an article or a number), so it works on any caption, the built-in scenes' included:

- ``swap_attributes``: two different colour words, or two different size words, exchange places ("a red circle
  and a blue square" -> "a blue circle and a red square");
- ``swap_objects``: two different nouns of the same grammatical number exchange places ("a circle left of a
  square" -> "a square left of a circle");
- ``swap_phrases``: the noun phrases on either side of a spatial relation exchange places ("a red circle left of
  a blue square" -> "a blue square left of a red circle"; ARO's VG-Relation negatives);
- ``flip_relation``: a spatial relation becomes its opposite ("left of" -> "right of", "above" -> "below");
- ``change_count``: a number goes up or down by one, the noun and "is"/"are" agreeing ("there are two stars" ->
  "there is one star");
- ``shuffle``: the words in another order (only when no other rewrite applies).

Articles are fixed after every rewrite ("a orange" -> "an orange"), so that a negative cannot be told from a
positive by its grammar alone.
"""
from __future__ import annotations

import random
import re

from vlmkit.data.scenes import article as scene_article

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey")
SIZES = ("small", "large", "big", "tiny", "little", "huge")
RELATIONS = (("left of", "right of"), ("above", "below"), ("on top of", "underneath"), ("in front of", "behind"),
             ("inside", "outside"), ("bigger than", "smaller than"), ("over", "under"))
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLACES = {"left", "right", "top", "bottom", "center", "centre", "middle", "front", "back", "side"}  # not objects
ARTICLES = {"a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}
_WORD = re.compile(r"[A-Za-z]+|\d+|[^A-Za-z\d\s]+|\s+")


def _tokens(caption: str) -> list[str]:
    return _WORD.findall(caption)


def _is_word(token: str) -> bool:
    return bool(token.strip()) and token[0].isalnum()


def _fix_articles(tokens: list[str]) -> list[str]:
    """"a"/"an" agree with the word after them (by its first letter)."""
    out = list(tokens)
    for i, token in enumerate(out):
        if token.lower() not in ("a", "an"):
            continue
        following = next((t for t in out[i + 1:] if _is_word(t)), None)
        if following is None or not following[0].isalpha():
            continue
        article = scene_article(following.lower())
        out[i] = article.capitalize() if token[0].isupper() else article
    return out


def _text(tokens: list[str]) -> str:
    return "".join(_fix_articles(tokens))


def _pairs(tokens: list[str], positions: list[int]) -> list[tuple[int, int]]:
    """Pairs of positions whose words differ."""
    return [(i, j) for a, i in enumerate(positions) for j in positions[a + 1:]
            if tokens[i].lower() != tokens[j].lower()]


def _swap_words(tokens: list[str], pairs: list[tuple[int, int]], rng: random.Random) -> list[str] | None:
    """Exchange the words of one of ``pairs``; None when there is none."""
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    out = list(tokens)
    out[i], out[j] = tokens[j], tokens[i]
    return out


def swap_attributes(caption: str, rng: random.Random) -> str | None:
    """Two different colour words, or two different size words, exchange places: one pair drawn from both kinds,
    so that a caption with colours and sizes trains the binding of either (not sizes only when colours match)."""
    tokens = _tokens(caption)
    pairs = [pair for vocabulary in (COLORS, SIZES)
             for pair in _pairs(tokens, [i for i, t in enumerate(tokens) if t.lower() in vocabulary])]
    swapped = _swap_words(tokens, pairs, rng)
    return None if swapped is None else _text(swapped)


def _number_value(token: str) -> int | None:
    word = token.lower()
    if word in NUMBERS:
        return NUMBERS.index(word)
    return int(token) if token.isdigit() and len(token) < 4 else None


def _phrases(tokens: list[str]) -> list[tuple[int, int, bool]]:
    """Noun phrases: (first token, noun token, plural) for each run "article|number [colour|size]* noun"."""
    words = [i for i, t in enumerate(tokens) if _is_word(t)]
    phrases = []
    for k, i in enumerate(words):
        if tokens[i].lower() in ARTICLES or tokens[i].isdigit():
            j = k + 1
            while j < len(words) and tokens[words[j]].lower() in COLORS + SIZES:
                j += 1
            if j < len(words) and tokens[words[j]].lower() not in ARTICLES | PLACES and not tokens[words[j]].isdigit():
                noun = tokens[words[j]]
                value = _number_value(tokens[i])
                plural = value != 1 if value is not None else (noun.lower().endswith("s")
                                                               and not noun.lower().endswith("ss"))
                phrases.append((i, words[j], plural))
    return phrases


def swap_objects(caption: str, rng: random.Random) -> str | None:
    tokens = _tokens(caption)
    phrases = _phrases(tokens)
    # nouns of the same grammatical number only: "two circles and a square" -> "two squares and a circle" would
    # need new word forms, and "two square and a circles" is told false by its grammar
    pairs = [pair for plural in (False, True) for pair in _pairs(tokens, [n for _, n, p in phrases if p == plural])]
    swapped = _swap_words(tokens, pairs, rng)
    return _text(swapped) if swapped is not None else None


def _relation_matches(caption: str) -> list[tuple[int, int, str]]:
    found = []
    for first, second in RELATIONS:
        for word, opposite in ((first, second), (second, first)):
            for match in re.finditer(rf"\b{re.escape(word)}\b", caption, flags=re.IGNORECASE):
                found.append((match.start(), match.end(), opposite))
    return found


def _relation_neighbours(caption: str, tokens: list[str], phrases: list[tuple[int, int, bool]]
                         ) -> list[tuple[tuple[int, int, bool], tuple[int, int, bool], str, str]]:
    """For each relation word of ``caption`` with a noun phrase on either side: (the phrase just before it, the
    phrase just after it, the relation as written, its opposite). ``tokens`` / ``phrases`` are the caption's."""
    offsets = [0]
    for token in tokens:
        offsets.append(offsets[-1] + len(token))
    found = []
    for start, end, opposite in _relation_matches(caption):
        before = [p for p in phrases if offsets[p[1] + 1] <= start]
        after = [p for p in phrases if offsets[p[0]] >= end]
        if before and after:
            found.append((before[-1], after[0], caption[start:end], opposite))
    return found


def swap_phrases(caption: str, rng: random.Random) -> str | None:
    """The noun phrase before a relation and the one after it exchange places (only where both exist and
    differ: "a circle and a square" keeps its meaning when swapped, so a caption without a relation gets none)."""
    tokens = _tokens(caption)
    options = []
    for (a0, a1, _), (b0, b1, _), _, _ in _relation_neighbours(caption, tokens, _phrases(tokens)):
        first, second = tokens[a0:a1 + 1], tokens[b0:b1 + 1]
        if "".join(first).lower() != "".join(second).lower():
            options.append(tokens[:a0] + second + tokens[a1 + 1:b0] + first + tokens[b1 + 1:])
    return _text(rng.choice(options)) if options else None


def flip_relation(caption: str, rng: random.Random) -> str | None:
    found = _relation_matches(caption)
    if not found:
        return None
    start, end, opposite = rng.choice(found)
    return caption[:start] + opposite + caption[end:]


def pluralize(noun: str) -> str:
    lower = noun.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def singularize(noun: str) -> str:
    lower = noun.lower()
    if lower.endswith("ies") and len(lower) > 3:
        return noun[:-3] + "y"
    if lower.endswith(("sses", "xes", "zes", "ches", "shes")):
        return noun[:-2]
    return noun[:-1] if lower.endswith("s") and not lower.endswith("ss") else noun


def change_count(caption: str, rng: random.Random) -> str | None:
    """A number one up or down; crossing one, its noun changes number and a preceding "is"/"are" follows."""
    tokens = _tokens(caption)
    nouns = {first: noun for first, noun, _ in _phrases(tokens)}
    positions = [i for i, t in enumerate(tokens) if _number_value(t) is not None and _number_value(t) >= 1]
    if not positions:
        return None
    i = rng.choice(positions)
    word = tokens[i]
    value = int(_number_value(word))  # type: ignore[arg-type]
    new = value + rng.choice((-1, 1)) if value > 1 else value + 1
    out = list(tokens)
    out[i] = (NUMBERS[new] if new < len(NUMBERS) else str(new)) if word.lower() in NUMBERS else str(new)
    if word[0].isupper():
        out[i] = out[i].capitalize()
    if (value == 1) != (new == 1):
        if i in nouns:
            noun = nouns[i]
            out[noun] = pluralize(out[noun]) if value == 1 else singularize(out[noun])
        previous = [k for k in range(i) if _is_word(out[k])]
        if previous and out[previous[-1]].lower() in ("is", "are"):
            verb = "are" if new != 1 else "is"
            out[previous[-1]] = verb.capitalize() if out[previous[-1]][0].isupper() else verb
    return _text(out)


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


REWRITES = (swap_attributes, swap_objects, swap_phrases, flip_relation, change_count)


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

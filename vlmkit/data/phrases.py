"""Phrase labels of a caption, for phrase pre-training (``data.phrase_labels``): what a caption says about which
attribute goes with which object, and which object stands on which side of a relation, as labels a classifier
can learn.

- every noun phrase with colour or size words gives its attributes bound to its noun: "a small red circle" ->
  ``red circle``, ``small circle`` (plurals singular: "two blue squares" -> ``blue square``);
- every spatial relation between two such phrases gives each its role: "a red circle to the left of a blue
  square" -> ``red circle | left of``, ``blue square | right of``.

An image's labels are those of all its captions; for the built-in scenes (a folder with ``metadata.jsonl``) also
those of :func:`scene_statements`, everything the scene's metadata says (every object, every relation), since two
captions per image name few of its relations.

A bag of words cannot tell "a red circle and a blue square" from "a blue circle and a red square"; these labels
can. Contrastive training from scratch settles on bags of words (the compositional probes stay at chance, see
benchmarks/README.md); a short pre-training of each tower on its phrase labels breaks that. The grammar
(colour, size and relation words, noun phrases) is the hard-negative rewriter's, so the two agree.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmkit.data.hard_negatives import COLORS, SIZES, _phrases, _relation_neighbours, _tokens, singularize
from vlmkit.data.scenes import noun_phrase, relation_sentence


ROLE_MARK = " | "  # in the label of a relation role: "red circle | left of"
MODIFIERS = {"colored", "coloured", "shaped"}  # "a red colored square": the noun comes after


def _phrase_label(tokens: list[str], first: int, noun: int) -> tuple[list[str], str | None]:
    """(labels of one noun phrase, its colour label or None)."""
    if tokens[noun].lower() in MODIFIERS:
        following = [k for k in range(noun + 1, len(tokens)) if tokens[k].strip()]
        if not following or not tokens[following[0]][0].isalpha():
            return [], None
        noun = following[0]
    words = [t.lower() for t in tokens[first + 1:noun] if t.strip() and t.lower() not in MODIFIERS]
    name = singularize(tokens[noun].lower())
    colours = [w for w in words if w in COLORS]
    sizes = [w for w in words if w in SIZES]
    labels = []
    main = f"{' '.join(colours)} {name}" if colours else None
    if main:
        labels.append(main)
    if sizes:
        labels.append(f"{' '.join(sizes)} {name}")
    return labels, main or (labels[0] if labels else None)


def phrase_labels(caption: str) -> list[str]:
    """The caption's phrase labels, sorted and distinct (see the module docstring)."""
    tokens = _tokens(caption)
    phrases = _phrases(tokens)
    found: set[str] = set()
    main: dict[tuple[int, int, bool], str | None] = {}  # each phrase's label in a relation role
    for phrase in phrases:
        labels, main[phrase] = _phrase_label(tokens, phrase[0], phrase[1])
        found.update(labels)
    for before, after, relation, opposite in _relation_neighbours(caption, tokens, phrases):
        subject, obj = main[before], main[after]
        if subject and obj and subject != obj:
            found.update({f"{subject}{ROLE_MARK}{relation.lower()}", f"{obj}{ROLE_MARK}{opposite.lower()}"})
    return sorted(found)


def build_vocabulary(captions: Iterable[str], max_labels: int, min_count: int = 2) -> list[str]:
    """The ``max_labels`` most frequent phrase labels of ``captions`` seen at least ``min_count`` times (ties in
    alphabetical order, so the vocabulary is the same on every rank and every run)."""
    counts = Counter(label for caption in captions for label in phrase_labels(caption))
    ranked = sorted((label for label, n in counts.items() if n >= min_count), key=lambda label: (-counts[label], label))
    return ranked[:max_labels]


def scene_statements(record: dict[str, Any]) -> list[str]:
    """Everything a built-in scene's metadata record says, as sentences of the captions' grammar: each object
    ("a small red circle") and each relation between objects of different classes ("a red circle to the left of
    a blue square")."""
    objects = record["objects"]
    statements = [noun_phrase(obj["color"], obj["shape"], obj["size"]) for obj in objects]
    for relation in record.get("relations", []):
        subject, obj = objects[relation["subject"]], objects[relation["object"]]
        if (subject["color"], subject["shape"]) != (obj["color"], obj["shape"]):
            statements.append(relation_sentence(noun_phrase(subject["color"], subject["shape"]),
                                                relation["relation"], noun_phrase(obj["color"], obj["shape"])))
    return statements


def attach_scene_statements(samples: list[Any], data: str | Path) -> int:
    """When ``data`` is a built-in scene folder, or a manifest, COCO file or shard folder inside one (its
    ``metadata.jsonl`` next to it or one folder up), put each sample's :func:`scene_statements` in
    ``sample.meta["statements"]``: matched by image file, or for shards by the sample's key. Returns how many
    samples got them."""
    start = Path(data) if Path(data).is_dir() else Path(data).parent
    folder = next((f for f in (start, start.parent) if (f / "metadata.jsonl").is_file()), None)
    if folder is None:
        return 0
    by_image, by_key = {}, {}
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_image[os.path.realpath(folder / "images" / f"{record['key']}.png")] = record
            by_key[str(record["key"])] = record
    attached = 0
    for sample in samples:
        if sample.image.offset is None:
            record = by_image.get(os.path.realpath(sample.image.path))
        else:  # inside a tar shard of that folder
            inside = os.path.realpath(sample.image.path).startswith(os.path.realpath(folder) + os.sep)
            record = by_key.get(str(sample.key)) if inside else None
        if record is not None:
            sample.meta["statements"] = scene_statements(record)
            attached += 1
    return attached

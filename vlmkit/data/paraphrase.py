"""The built-in scenes described in phrasings their training captions never use.

Training captions (``vlmkit.data.scenes``) name six colours and five shapes with fixed words, and use a fixed set
of templates ("a photo of a red circle", "a red circle to the left of a blue star", "two red circles", ...).
This module rewrites a scene - its record in ``metadata.jsonl`` - with new templates ("a picture showing ...",
"... on the left side of ...", digits for counts) and, with ``words=True``, synonyms never seen in training
("crimson disk", "azure box"), to measure how far a model's language reaches beyond what it was trained on.

``training_vocabulary`` and ``training_captions`` enumerate what training can produce, so that tests can check
that the unseen phrasings really are unseen.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from .scenes import (COLORS, PLURALS, SHAPES, SceneObject, article, multi_captions, relations, single_captions)

COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "jade"),
    "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "lilac"),
    "orange": ("amber", "tangerine"),
}
# singular -> plural, for each shape
SHAPE_SYNONYMS: dict[str, dict[str, str]] = {
    "circle": {"disk": "disks", "round dot": "round dots"},
    "square": {"box": "boxes", "block": "blocks"},
    "triangle": {"wedge": "wedges", "three-sided figure": "three-sided figures"},
    "star": {"pentagram": "pentagrams", "five-pointed figure": "five-pointed figures"},
    "cross": {"plus sign": "plus signs", "plus symbol": "plus symbols"},
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"large": ("big", "sizeable"), "small": ("tiny", "little")}

# One object, "{}" = "a crimson disk" / "a red circle".
SINGLE_TEMPLATES: tuple[str, ...] = (
    "a picture showing {}",
    "an illustration of {}",
    "a photo of {} shape",
    "{} drawn on a light canvas",
    "a simple graphic with {}",
    "here we see {}",
)
# Several objects, "{}" = "2 crimson disks and an azure box".
LIST_TEMPLATES: tuple[str, ...] = (
    "a picture showing {}",
    "a scene with {}",
    "{} scattered on a light canvas",
)
# "{a} ... {b}" for each relation of scenes.relations
RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left of": ("{a} on the left side of {b}", "{a} further left than {b}"),
    "right of": ("{a} on the right side of {b}", "{a} further right than {b}"),
    "above": ("{a} over {b}", "{a} higher up than {b}"),
    "below": ("{a} under {b}", "{a} beneath {b}"),
}


def color_words(color: str, words: bool) -> tuple[str, ...]:
    return COLOR_SYNONYMS[color] if words else (color,)


def shape_words(shape: str, words: bool) -> dict[str, str]:
    """singular -> plural names of ``shape``: its synonyms (``words``) or its training name."""
    return SHAPE_SYNONYMS[shape] if words else {shape: PLURALS[shape]}


def class_prompts(classname: str, *, words: bool = True) -> list[str]:
    """Every unseen-template prompt for a "{color} {shape}" class: templates x colour names x shape names."""
    color, shape = classname.split()
    prompts = []
    for template in SINGLE_TEMPLATES:
        for color_word in color_words(color, words):
            for shape_word in shape_words(shape, words):
                phrase = f"{color_word} {shape_word}"
                prompts.append(template.format(f"{article(phrase)} {phrase}"))
    return prompts


def training_class_prompts(classname: str) -> list[str]:
    """The prompts training uses for a one-object "{color} {shape}" scene (every template family except the
    object's position, which depends on the scene)."""
    color, shape = classname.split()
    families = single_captions(SceneObject(color, shape, "large", 0.5, (0.5, 0.5)))
    return [caption for name, captions in families.items() if name != "position" for caption in captions]


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(obj: dict[str, Any], rng: np.random.Generator, words: bool, with_size: bool = False) -> str:
    names = [_pick(color_words(obj["color"], words), rng), _pick(list(shape_words(obj["shape"], words)), rng)]
    if with_size:
        names.insert(0, _pick(SIZE_SYNONYMS[obj["size"]], rng) if words else obj["size"])
    phrase = " ".join(names)
    return f"{article(phrase)} {phrase}"


def _count_phrase(color: str, shape: str, number: int, rng: np.random.Generator, words: bool) -> str:
    color_word = _pick(color_words(color, words), rng)
    singular, plural = list(shape_words(shape, words).items())[int(rng.integers(len(shape_words(shape, words))))]
    if number == 1:
        return f"{article(color_word)} {color_word} {singular}"
    return f"{number} {color_word} {plural}"  # digits: training spells numbers out


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def paraphrase_families(meta: dict[str, Any], rng: np.random.Generator, *, words: bool = True
                        ) -> dict[str, list[str]]:
    """Unseen-phrasing captions of one scene (a ``metadata.jsonl`` record: ``objects`` with color/shape/size,
    ``relations``, ``counts``), grouped by template family; ``rng`` picks among synonyms."""
    objects = meta["objects"]
    if len(objects) == 1:
        return {"single": [template.format(_object_phrase(objects[0], rng, words)) for template in SINGLE_TEMPLATES]}
    tally = meta.get("counts") or {}
    listing = _join([_count_phrase(*name.split(), number, rng, words) for name, number in tally.items()])
    sized = _join([_object_phrase(obj, rng, words, with_size=True) for obj in objects])
    families = {"list": [template.format(listing) for template in LIST_TEMPLATES],
                "size": [f"a scene with {sized}", f"{len(objects)} figures: {sized}"]}
    relation_captions = []
    for rel in meta.get("relations") or []:
        a, b = objects[rel["subject"]], objects[rel["object"]]
        if (a["color"], a["shape"]) == (b["color"], b["shape"]):
            continue
        for template in RELATION_TEMPLATES[rel["relation"]]:
            relation_captions.append(template.format(a=_object_phrase(a, rng, words), b=_object_phrase(b, rng, words)))
    if relation_captions:
        families["relation"] = relation_captions
    return families


def paraphrase_scene(meta: dict[str, Any], rng: np.random.Generator, count: int = 1, *, words: bool = True
                     ) -> list[str]:
    """``count`` distinct unseen-phrasing captions of a scene: a family drawn uniformly, then a caption (as
    ``scenes.choose_captions`` draws training captions)."""
    families = paraphrase_families(meta, rng, words=words)
    pools = {name: list(dict.fromkeys(options)) for name, options in families.items()}
    chosen: list[str] = []
    while len(chosen) < count and any(pools.values()):
        names = [name for name, pool in pools.items() if pool]
        pool = pools[names[int(rng.integers(len(names)))]]
        caption = pool.pop(int(rng.integers(len(pool))))
        if caption not in chosen:
            chosen.append(caption)
    return chosen


def training_captions(meta: dict[str, Any]) -> set[str]:
    """Every caption the training templates can write for this scene (all families, all variants)."""
    objects = [SceneObject(o["color"], o["shape"], o["size"], 0.3, (0.5, 0.5)) for o in meta["objects"]]
    if len(objects) == 1:
        captions = set()
        for position in ("center", "top", "bottom", "left", "right", "top left", "top right", "bottom left",
                         "bottom right"):
            cx = 0.2 if "left" in position else 0.8 if "right" in position else 0.5
            cy = 0.2 if "top" in position else 0.8 if "bottom" in position else 0.5
            obj = SceneObject(objects[0].color, objects[0].shape, objects[0].size, 0.5, (cx, cy))
            captions.update(c for family in single_captions(obj).values() for c in family)
        return captions
    return {c for family in multi_captions(objects, meta.get("relations") or []).values() for c in family}


def training_vocabulary(samples: int = 400, seed: int = 0) -> set[str]:
    """The words of every training caption template, over ``samples`` random scenes of each kind."""
    from .scenes import layout_multi, layout_single

    rng = np.random.default_rng(seed)
    vocabulary: set[str] = set()
    for _ in range(samples):
        for objects in (layout_single(rng), layout_multi(rng)):
            found = relations(objects)
            families = single_captions(objects[0]) if len(objects) == 1 else multi_captions(objects, found)
            for captions in families.values():
                for caption in captions:
                    vocabulary.update(re.findall(r"[a-z]+", caption.lower()))
    vocabulary.update(COLORS, SHAPES, PLURALS.values())
    return vocabulary

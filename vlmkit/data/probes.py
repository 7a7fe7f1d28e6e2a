"""Compositional probe suites: items (an image and candidate captions, one of them true) and Winoground-style
2x2 groups (two images, two captions with the same words in another order).

``builtin_suite`` generates a suite from a folder of built-in scenes (``vlmkit data synth``, use a held-out seed)
by rewriting captions with the scene metadata, so every negative is checked false for its scene. ``load_aro``,
``load_sugarcrepe`` and ``load_winoground`` read the public files' formats. No torch here: scoring lives in
``vlmkit.eval.probes``.
"""
from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.data.scenes import COLORS, NUMBER_WORDS, PLURALS, SHAPES
from vlmkit.data.scenes import noun_phrase as _np
from vlmkit.data.scenes import relation_sentence as _relation

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# probe type -> (family, what the negative is); the order of the table
PROBE_TYPES: dict[str, tuple[str, str]] = {
    "aro_attribute": ("ARO", "colours of two objects swapped"),
    "aro_relation": ("ARO", "subject and object of a relation swapped"),
    "aro_object": ("ARO", "two objects swapped between their sizes"),
    "count": ("count", "count +1 or -1"),
    "replace_att": ("SugarCrepe", "a colour replaced"),
    "replace_obj": ("SugarCrepe", "a shape replaced"),
    "replace_rel": ("SugarCrepe", "relation replaced by its opposite"),
    "swap_att": ("SugarCrepe", "colours swapped in a relation caption"),
    "swap_obj": ("SugarCrepe", "shapes swapped in a relation caption"),
    "add_obj": ("SugarCrepe", "an absent object added"),
    "word_order": ("ARO", "4 shuffled word orders (5-way)"),
}
NUM_SHUFFLES = 4


@dataclass(frozen=True)
class ProbeItem:
    """One multiple-choice probe: the model must score ``captions[answer]`` strictly highest for ``image``."""

    kind: str
    key: str
    image: str  # path
    captions: tuple[str, ...]
    answer: int = 0
    crop: tuple[float, float, float, float] | None = None  # (left, top, right, bottom) pixels, as ARO crops


@dataclass(frozen=True)
class ProbeGroup:
    """A Winoground 2x2 group: ``captions[i]`` describes ``images[i]`` and not the other image."""

    kind: str
    key: str
    images: tuple[str, str]
    captions: tuple[str, str]


@dataclass
class ProbeSuite:
    name: str
    items: list[ProbeItem] = field(default_factory=list)
    groups: list[ProbeGroup] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items) + len(self.groups)


# --- the built-in suite -----------------------------------------------------------------------------------------

class _Scene:
    """A metadata.jsonl record with the lookups the negatives need."""

    def __init__(self, meta: dict, folder: Path) -> None:
        self.key = str(meta["key"])
        self.image = str(folder / "images" / f"{self.key}.png")
        self.objects = [(o["color"], o["shape"], o["size"]) for o in meta["objects"]]
        self.counts: dict[str, int] = dict(meta["counts"])
        self.relations = [(r["subject"], r["relation"], r["object"]) for r in meta["relations"]]

    def has(self, color: str, shape: str) -> bool:
        return self.counts.get(f"{color} {shape}", 0) > 0

    def unique(self, index: int) -> bool:
        color, shape, _ = self.objects[index]
        return self.counts[f"{color} {shape}"] == 1

    def unique_pairs(self) -> list[tuple[int, int]]:
        """Ordered pairs of objects whose classes occur once each and differ in colour and shape."""
        return [(i, j) for i, j in itertools.permutations(range(len(self.objects)), 2)
                if self.unique(i) and self.unique(j) and self.objects[i][0] != self.objects[j][0]
                and self.objects[i][1] != self.objects[j][1]]

    def unique_relations(self) -> list[tuple[int, str, int]]:
        """Relations between two objects whose classes occur once each and differ in colour and shape: then the
        reversed or opposite statement is false (the relations are computed for every ordered pair)."""
        pairs = set(self.unique_pairs())
        return [r for r in self.relations if (r[0], r[2]) in pairs]

    def relation_holds(self, subject: tuple[str, str], relation: str, obj: tuple[str, str]) -> bool:
        """Whether some object of class ``subject`` stands in ``relation`` to some object of class ``obj``."""
        return any(self.objects[i][:2] == subject and self.objects[j][:2] == obj and rel == relation
                   for i, rel, j in self.relations)


def _pick(rng: random.Random, options: list) -> object | None:
    return options[rng.randrange(len(options))] if options else None


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _listing_parts(counts: dict[str, int]) -> list[str]:
    """Each class as the built-in captions name it: "a red circle", "two blue squares"."""
    parts = []
    for name, number in counts.items():
        color, shape = name.split()
        parts.append(_np(color, shape) if number == 1 else f"{NUMBER_WORDS[number]} {color} {PLURALS[shape]}")
    return parts


def _listing(scene: _Scene) -> str:
    return _join(_listing_parts(scene.counts))


def _scene_items(scene: _Scene, seed: int) -> list[ProbeItem]:
    def rng(kind: str) -> random.Random:  # one stream per (seed, scene, probe type): adding a type changes no other
        return random.Random(f"{seed}/{scene.key}/{kind}")

    def item(kind: str, true: str, *negatives: str) -> ProbeItem:
        return ProbeItem(kind, f"{scene.key}/{kind}", scene.image, (true, *negatives), 0)

    items: list[ProbeItem] = []
    obj = scene.objects
    pairs = scene.unique_pairs()
    pair = _pick(rng("aro_attribute"), pairs)
    if pair:
        (c1, s1, _), (c2, s2, _) = obj[pair[0]], obj[pair[1]]
        if not (scene.has(c2, s1) and scene.has(c1, s2)):
            items.append(item("aro_attribute", f"{_np(c1, s1)} and {_np(c2, s2)}", f"{_np(c2, s1)} and {_np(c1, s2)}"))
    sized = [(i, j) for i, j in pairs if obj[i][2] != obj[j][2]]
    pair = _pick(rng("aro_object"), sized)
    if pair:
        (c1, s1, z1), (c2, s2, z2) = obj[pair[0]], obj[pair[1]]
        items.append(item("aro_object", f"{_np(c1, s1, z1)} and {_np(c2, s2, z2)}",
                          f"{_np(c2, s2, z1)} and {_np(c1, s1, z2)}"))
    relations = scene.unique_relations()
    for kind in ("aro_relation", "replace_rel", "swap_att", "swap_obj"):
        chosen = _pick(rng(kind), relations)
        if not chosen:
            continue
        i, rel, j = chosen
        (c1, s1, _), (c2, s2, _) = obj[i], obj[j]
        true = _relation(_np(c1, s1), rel, _np(c2, s2))
        if kind == "aro_relation":
            negative = _relation(_np(c2, s2), rel, _np(c1, s1))
        elif kind == "replace_rel":
            negative = _relation(_np(c1, s1), OPPOSITE[rel], _np(c2, s2))
        elif kind == "swap_att":
            if scene.relation_holds((c2, s1), rel, (c1, s2)):
                continue
            negative = _relation(_np(c2, s1), rel, _np(c1, s2))
        else:
            if scene.relation_holds((c1, s2), rel, (c2, s1)):
                continue
            negative = _relation(_np(c1, s2), rel, _np(c2, s1))
        items.append(item(kind, true, negative))

    name = _pick(rng("count"), sorted(scene.counts))
    if name:
        color, shape = name.split()
        number = scene.counts[name]
        wrong = [n for n in (number - 1, number + 1) if 1 <= n < len(NUMBER_WORDS)]
        other = _pick(rng("count/wrong"), wrong)

        def counted(n: int) -> str:
            if n == 1:
                return f"there is one {color} {shape}"
            return f"there are {NUMBER_WORDS[n]} {color} {PLURALS[shape]}"
        if other:
            items.append(item("count", counted(number), counted(int(other))))

    # SugarCrepe replace/add on the caption listing every object
    listing = _listing(scene)
    names = sorted(scene.counts)
    for kind in ("replace_att", "replace_obj"):
        r = rng(kind)
        name = _pick(r, names)
        color, shape = str(name).split()
        if kind == "replace_att":
            options = [c for c in COLORS if not scene.has(c, shape)]
            new = f"{_pick(r, options)} {shape}" if options else None
        else:
            options = [s for s in SHAPES if not scene.has(color, s)]
            new = f"{color} {_pick(r, options)}" if options else None
        if new:
            negative = _replace_class(scene, str(name), new)
            items.append(item(kind, listing, negative))
    r = rng("add_obj")
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if not scene.has(c, s)]
    added = _pick(r, absent)
    if added:
        color, shape = str(added).split()
        items.append(item("add_obj", listing, _join(_listing_parts(scene.counts) + [_np(color, shape)])))

    # 5-way word order on a relation caption (or the listing): the original vs 4 distinct shuffles
    r = rng("word_order")
    chosen = _pick(r, relations)
    if chosen:
        i, rel, j = chosen
        original = _relation(_np(*obj[i][:2]), rel, _np(*obj[j][:2]))
    else:
        original = listing
    words = original.split()
    shuffles: list[str] = []
    for _ in range(200):
        order = words[:]
        r.shuffle(order)
        text = " ".join(order)
        if text != original and text not in shuffles:
            shuffles.append(text)
        if len(shuffles) == NUM_SHUFFLES:
            items.append(item("word_order", original, *shuffles))
            break
    return items


def _replace_class(scene: _Scene, name: str, new: str) -> str:
    """The listing caption with class ``name`` replaced by class ``new`` (same number, same place)."""
    return _join(_listing_parts({(new if key == name else key): value for key, value in scene.counts.items()}))


def _groups(scenes: list[_Scene], seed: int) -> list[ProbeGroup]:
    """Winoground groups from pairs of scenes with reversed relations between the same two shapes:
    "a circle to the left of a square" (image 0) / "a square to the left of a circle" (image 1)."""
    facts: dict[tuple[str, str, str], list[str]] = {}  # (first shape, relation, second shape) -> scene keys
    by_key = {scene.key: scene for scene in scenes}
    for scene in scenes:
        shape_counts: dict[str, int] = {}
        for _, shape, _ in scene.objects:
            shape_counts[shape] = shape_counts.get(shape, 0) + 1
        for i, rel, j in scene.relations:
            a, b = scene.objects[i][1], scene.objects[j][1]
            if rel in ("left of", "above") and a != b and shape_counts[a] == 1 and shape_counts[b] == 1:
                facts.setdefault((a, rel, b), []).append(scene.key)
    rng = random.Random(f"{seed}/winoground")
    used: set[str] = set()
    groups: list[ProbeGroup] = []
    for (a, rel, b) in sorted(facts):
        if a > b or (b, rel, a) not in facts:
            continue
        forward = [k for k in facts[(a, rel, b)] if k not in used]
        backward = [k for k in facts[(b, rel, a)] if k not in used]
        rng.shuffle(forward)
        rng.shuffle(backward)
        for first, second in zip(forward, backward):
            if first == second:
                continue
            used.update((first, second))
            groups.append(ProbeGroup("winoground_relation", f"{first}+{second}",
                                     (by_key[first].image, by_key[second].image),
                                     (_relation(f"a {a}", rel, f"a {b}"), _relation(f"a {b}", rel, f"a {a}"))))
    return groups


def read_scenes(folder: str | Path) -> list[_Scene]:
    folder = Path(folder)
    path = folder / "metadata.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metadata.jsonl in {folder}: give a folder made by `vlmkit data synth`")
    return [_Scene(json.loads(line), folder) for line in path.read_text().splitlines() if line.strip()]


def builtin_suite(folder: str | Path, seed: int = 0, kinds: Iterable[str] | None = None) -> ProbeSuite:
    """The built-in probe suite from the scenes in ``folder`` (metadata.jsonl); deterministic for a seed."""
    wanted = set(kinds) if kinds is not None else None
    scenes = read_scenes(folder)
    items = [item for scene in scenes for item in _scene_items(scene, seed)
             if wanted is None or item.kind in wanted]
    items.sort(key=lambda item: list(PROBE_TYPES).index(item.kind))  # stable: scene order within a type
    groups = _groups(scenes, seed) if wanted is None or "winoground_relation" in wanted else []
    return ProbeSuite(f"builtin:{Path(folder).name}", items, groups)


# --- public formats ---------------------------------------------------------------------------------------------

def _read_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def load_aro(path: str | Path, images: str | Path) -> ProbeSuite:
    """ARO VG-Relation / VG-Attribution JSON: a list of {image_path, true_caption, false_caption, bbox_x, bbox_y,
    bbox_w, bbox_h, relation_name | attributes}. Images are cropped to the box, as ARO does."""
    records = _read_json(path)
    if not isinstance(records, list):
        # a bad file, not a bad argument: a ValueError, shown as one line
        raise ValueError(f"{path}: ARO files are a JSON list of records")  # noqa: TRY004
    items = []
    for index, record in enumerate(records):
        missing = {"image_path", "true_caption", "false_caption"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {index} lacks {sorted(missing)}")
        kind = "vg_relation" if "relation_name" in record else "vg_attribution" if "attributes" in record else "aro"
        crop = None
        if all(f"bbox_{k}" in record for k in "xywh"):
            x, y, w, h = (float(record[f"bbox_{k}"]) for k in "xywh")
            crop = (x, y, x + w, y + h)
        items.append(ProbeItem(kind, str(index), str(Path(images) / record["image_path"]),
                               (record["true_caption"], record["false_caption"]), 0, crop))
    return ProbeSuite(f"aro:{Path(path).name}", items)


def load_sugarcrepe(path: str | Path, images: str | Path) -> ProbeSuite:
    """SugarCrepe JSON ({id: {filename, caption, negative_caption}}), one file per type named after it
    (replace_att.json, swap_obj.json, add_obj.json, ...); a folder reads every *.json in it."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no SugarCrepe *.json files in {path}")
    items = []
    for file in files:
        records = _read_json(file)
        if not isinstance(records, dict):
            raise ValueError(f"{file}: SugarCrepe files are a JSON object "  # noqa: TRY004 - a bad file
                             "{id: {filename, caption, negative_caption}}")
        for key, record in records.items():
            missing = {"filename", "caption", "negative_caption"} - set(record)
            if missing:
                raise ValueError(f"{file}: record {key} lacks {sorted(missing)}")
            items.append(ProbeItem(file.stem, f"{file.stem}/{key}", str(Path(images) / record["filename"]),
                                   (record["caption"], record["negative_caption"]), 0))
    return ProbeSuite(f"sugarcrepe:{path.name}", items)


def _image_file(folder: Path, name: str) -> str:
    """Winoground names images by stem (ex_0_img_0); the released folder holds .png files."""
    if Path(name).suffix:
        return str(folder / name)
    for extension in (".png", ".jpg", ".jpeg"):
        if (folder / f"{name}{extension}").exists():
            return str(folder / f"{name}{extension}")
    return str(folder / f"{name}.png")


def load_winoground(path: str | Path, images: str | Path) -> ProbeSuite:
    """Winoground examples.jsonl ({id, image_0, image_1, caption_0, caption_1, tag, ...}) with its image folder."""
    groups = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
        missing = {"id", "image_0", "image_1", "caption_0", "caption_1"} - set(record)
        if missing:
            raise ValueError(f"{path}:{number}: lacks {sorted(missing)}")
        folder = Path(images)
        groups.append(ProbeGroup("winoground", str(record["id"]),
                                 (_image_file(folder, record["image_0"]), _image_file(folder, record["image_1"])),
                                 (record["caption_0"], record["caption_1"])))
    return ProbeSuite(f"winoground:{Path(path).name}", groups=groups)

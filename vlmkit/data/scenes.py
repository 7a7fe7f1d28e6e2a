"""Procedural scenes for the built-in data: flat coloured shapes on a light-grey background,
their layout, relations, counts and natural-language captions.

Everything is driven by one ``numpy.random.Generator`` per image so that a scene depends only
on (seed, image index), never on worker scheduling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 40),
    "green": (30, 155, 60),
    "blue": (35, 85, 215),
    "yellow": (242, 200, 20),
    "purple": (135, 55, 185),
    "orange": (242, 125, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
CLASS_NAMES = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

SUPERSAMPLE = 4  # drawn at 4x then downsampled (LANCZOS): clean edges at 64-96 px
BACKGROUND = 212  # light grey
SINGLE_SIZE = (0.45, 0.75)  # object side as a fraction of the image side
SMALL_SIZE = (0.22, 0.28)  # a gap between the two ranges keeps "small"/"large" unambiguous
LARGE_SIZE = (0.33, 0.40)
GAP = 0.03  # minimum free space between multi-object boxes, fraction of the side


@dataclass
class SceneObject:
    color: str
    shape: str
    size: str  # "small" | "large"
    side: float  # fraction of the image side
    center: tuple[float, float]  # fractions of the image side, y down

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.side / 2
        return (self.center[0] - half, self.center[1] - half,
                self.center[0] + half, self.center[1] + half)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def _separated(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def layout_single(rng: np.random.Generator) -> list[SceneObject]:
    side = float(rng.uniform(*SINGLE_SIZE))
    low, high = side / 2 + 0.02, 1 - side / 2 - 0.02
    center = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    return [SceneObject(color, shape, "large", side, center)]


def _pick_classes(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` classes; often a repeated class so that counting captions have material."""
    order = rng.permutation(len(CLASS_NAMES))
    classes = [tuple(CLASS_NAMES[i].split()) for i in order]
    if rng.random() < 0.4:
        repeats = int(rng.integers(2, min(3, count) + 1))
        picked = [classes[0]] * repeats + classes[1: 1 + count - repeats]
    else:
        picked = classes[:count]
    return [picked[i] for i in rng.permutation(len(picked))]  # type: ignore[misc]


def layout_multi(rng: np.random.Generator) -> list[SceneObject]:
    """2-4 non-overlapping objects; restarts with new sizes when packing fails."""
    count = int(rng.choice([2, 3, 4], p=[0.4, 0.35, 0.25]))
    large_probability = {2: 0.5, 3: 0.4, 4: 0.25}[count]
    classes = _pick_classes(rng, count)
    for attempt in range(50):
        sizes = ["large" if rng.random() < large_probability and attempt < 25 else "small"
                 for _ in range(count)]
        objects: list[SceneObject] = []
        for (color, shape), size in zip(classes, sizes):
            side = float(rng.uniform(*(LARGE_SIZE if size == "large" else SMALL_SIZE)))
            low, high = side / 2 + 0.02, 1 - side / 2 - 0.02
            for _ in range(60):
                center = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
                candidate = SceneObject(color, shape, size, side, center)
                if all(_separated(candidate.box, other.box, GAP) for other in objects):
                    objects.append(candidate)
                    break
            else:
                break
        if len(objects) == count:
            return objects
    raise RuntimeError("could not place objects")  # unreachable with the sizes above


def relations(objects: list[SceneObject]) -> list[dict]:
    """Spatial relations for ordered pairs, only when unambiguous.

    ``i left of j`` needs i's box entirely left of j's and the horizontal offset to dominate
    the vertical one by 1.3x (so diagonal pairs get no relation); likewise above/below.
    """
    found = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            dx = b.center[0] - a.center[0]
            dy = b.center[1] - a.center[1]
            relation = None
            if abs(dx) >= 1.3 * abs(dy):
                if a.box[2] <= b.box[0]:
                    relation = "left of"
                elif b.box[2] <= a.box[0]:
                    relation = "right of"
            elif abs(dy) >= 1.3 * abs(dx):
                if a.box[3] <= b.box[1]:
                    relation = "above"
                elif b.box[3] <= a.box[1]:
                    relation = "below"
            if relation:
                found.append({"subject": i, "relation": relation, "object": j})
    return found


def counts(objects: list[SceneObject]) -> dict[str, int]:
    result: dict[str, int] = {}
    for obj in objects:
        result[obj.name] = result.get(obj.name, 0) + 1
    return result


def _shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    half = side / 2
    if shape == "square":
        h = half * 0.88  # a full-box square looks bigger than the circle of the same box
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
    if shape == "star":
        outer, inner = half * 1.05, half * 0.46
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else inner
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + 0.08 * half + radius * math.sin(angle)))
        return points
    if shape == "cross":
        arm = half * 0.36
        return [(cx - arm, cy - half), (cx + arm, cy - half), (cx + arm, cy - arm),
                (cx + half, cy - arm), (cx + half, cy + arm), (cx + arm, cy + arm),
                (cx + arm, cy + half), (cx - arm, cy + half), (cx - arm, cy + arm),
                (cx - half, cy + arm), (cx - half, cy - arm), (cx - arm, cy - arm)]
    raise ValueError(f"unknown shape {shape!r}")


def render(objects: list[SceneObject], rng: np.random.Generator, image_size: int
           ) -> tuple[Image.Image, list[list[float]]]:
    """Draw a scene. Returns the RGB image and each object's drawn bbox in output pixels."""
    scale = image_size * SUPERSAMPLE
    # Mostly a brightness change; a small per-channel cast only, so the grey stays grey.
    tint = int(rng.integers(-10, 11)) + rng.integers(-3, 4, size=3)
    background = tuple(int(BACKGROUND + t) for t in tint)
    canvas = Image.new("RGB", (scale, scale), background)
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for obj in objects:
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter))
        cx, cy, side = obj.center[0] * scale, obj.center[1] * scale, obj.side * scale
        if obj.shape == "circle":
            half = side / 2
            points = [(cx - half, cy - half), (cx + half, cy + half)]
            draw.ellipse(points, fill=fill)
        else:
            points = _shape_polygon(obj.shape, cx, cy, side)
            draw.polygon(points, fill=fill)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        boxes.append([round(v / SUPERSAMPLE, 1) for v in (min(xs), min(ys), max(xs), max(ys))])
    # reducing_gap: a box pre-reduction to 2x the target, then LANCZOS - same look, 2.5x faster.
    # No pixel noise: it would triple the PNG size; tint and colour jitter give the variation.
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return image, boxes


RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(color: str, shape: str, size: str = "") -> str:
    """ "a red circle", "a small red circle", "an orange star": an object as the captions name it."""
    words = f"{size} {color} {shape}" if size else f"{color} {shape}"
    return f"{article(words)} {words}"


def relation_sentence(subject: str, relation: str, obj: str) -> str:
    """Two noun phrases in a relation of :data:`RELATION_WORDS` ("a red circle to the left of a blue square")."""
    return f"{subject} {RELATION_WORDS[relation]} {obj}"


def _phrase(obj: SceneObject, with_size: bool = False) -> str:
    return noun_phrase(obj.color, obj.shape, obj.size if with_size else "")


def _position(obj: SceneObject) -> str:
    cx, cy = obj.center
    vertical = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    horizontal = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    return " ".join(part for part in (vertical, horizontal) if part) or "center"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _count_phrase(name: str, number: int) -> str:
    color, shape = name.split()
    if number == 1:
        return f"{article(color)} {color} {shape}"
    return f"{NUMBER_WORDS[number]} {color} {PLURALS[shape]}"


def single_captions(obj: SceneObject) -> dict[str, list[str]]:
    """Caption candidates for a one-object scene, grouped by template family."""
    c, s, a = obj.color, obj.shape, article(obj.color)
    position = _position(obj)
    return {
        "name": [f"{a} {c} {s}", f"one {c} {s}", f"a single {c} {s}", f"{a} {c} {s} shape",
                 f"a {s} that is {c}", f"{a} {c} colored {s}"],
        "photo": [f"a photo of {a} {c} {s}", f"a picture of {a} {c} {s}",
                  f"a drawing of {a} {c} {s}", f"an image of {a} {c} {s}"],
        "background": [f"a large {c} {s} on a grey background",
                       f"{a} {c} {s} on a plain background"],
        "position": [f"{a} {c} {s} in the {position}",
                     f"{a} {c} {s} near the {position} of the image"],
        "count": [f"there is one {c} {s}", f"exactly one {c} {s}"],
    }


def multi_captions(objects: list[SceneObject], found: list[dict]) -> dict[str, list[str]]:
    """Caption candidates for a multi-object scene, grouped by template family."""
    tally = counts(objects)
    listing = _join([_count_phrase(name, number) for name, number in tally.items()])
    sized = _join([_phrase(obj, with_size=True) for obj in objects])
    total = NUMBER_WORDS[len(objects)]
    families = {
        "list": [listing, f"{listing} on a grey background", f"a picture of {listing}"],
        "objects": [f"{total} objects: {listing}", f"{total} shapes: {listing}"],
        "size": [sized, f"{total} objects: {sized}"],
    }
    repeated = [name for name, number in tally.items() if number > 1]
    if repeated:
        families["count"] = [f"there are {_count_phrase(name, tally[name])}" for name in repeated]
    relation_captions = []
    for rel in found:
        a, b = objects[rel["subject"]], objects[rel["object"]]
        if a.name == b.name:  # "a red circle left of a red circle" teaches nothing
            continue
        pa, pb = _phrase(a), _phrase(b)
        kind = rel["relation"]
        if kind == "left of":
            relation_captions += [f"{pa} to the left of {pb}", f"{pa} is left of {pb}"]
            if len(objects) == 2:
                relation_captions.append(f"{pa} on the left and {pb} on the right")
        elif kind == "right of":
            relation_captions += [f"{pa} to the right of {pb}", f"{pa} is right of {pb}"]
        elif kind == "above":
            relation_captions += [f"{pa} above {pb}", f"{pa} is above {pb}"]
        else:
            relation_captions += [f"{pa} below {pb}", f"{pa} is below {pb}"]
    if relation_captions:
        families["relation"] = relation_captions
    return families


def choose_captions(families: dict[str, list[str]], rng: np.random.Generator, count: int
                    ) -> list[str]:
    """``count`` distinct captions: each pick draws a family uniformly, then a template, so
    families with many variants (relations) do not crowd out the others."""
    pools = {name: list(dict.fromkeys(options)) for name, options in families.items()}
    chosen: list[str] = []
    while len(chosen) < count:
        names = [name for name, pool in pools.items() if pool]
        if not names:
            raise ValueError(f"only {len(chosen)} distinct captions available, {count} asked")
        pool = pools[names[int(rng.integers(len(names)))]]
        caption = pool.pop(int(rng.integers(len(pool))))
        if caption not in chosen:
            chosen.append(caption)
    return chosen

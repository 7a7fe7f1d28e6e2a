"""A noisy image-text pool made from the built-in scenes, with a label per sample saying which noise it carries:
for testing curation and measuring each stage's precision and recall.

    summary = make_noisy_pool("pool/", 5000, seed=0, image_size=64)
    pool/shards/{00000..}.tar      WebDataset shards (KEY.png, KEY.txt: the possibly noisy caption, KEY.json)
    pool/noise.jsonl               {"id": KEY, "noise": KIND, "source": KEY of the original (duplicates)}

Kinds (exclusive; the rest are ``clean``): ``mismatched`` (the caption of another scene), ``duplicate`` (the same
bytes as an earlier sample), ``near_duplicate`` (an earlier sample shifted by a pixel, brightened and re-encoded),
``foreign`` (the caption translated word by word to French, German or Spanish), ``corrupt`` (undecodable bytes),
``short`` (a caption of one or two words), ``boilerplate`` (a file name or shop text), ``bad_size`` (a tiny
image or a thin strip). Duplicates always come after their source in input order.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from vlmkit.data.synth import make_scene
from vlmkit.files import atomic_path, atomic_write_text

DEFAULT_NOISE = {"mismatched": 0.30, "duplicate": 0.10, "near_duplicate": 0.10, "foreign": 0.05, "corrupt": 0.01,
                 "short": 0.02, "boilerplate": 0.01, "bad_size": 0.02}
NOISE_KINDS = ("clean",) + tuple(DEFAULT_NOISE)
_WORDS = {
    "fr": {"a": "un", "an": "un", "one": "un", "two": "deux", "three": "trois", "four": "quatre", "red": "rouge",
           "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange",
           "circle": "cercle", "circles": "cercles", "square": "carré", "squares": "carrés", "triangle": "triangle",
           "triangles": "triangles", "star": "étoile", "stars": "étoiles", "cross": "croix", "crosses": "croix",
           "small": "petit", "large": "grand", "on": "sur", "of": "de", "the": "le", "left": "gauche",
           "right": "droite", "above": "au-dessus", "below": "sous", "is": "est", "and": "et", "there": "il",
           "are": "y a", "objects": "objets", "shapes": "formes", "picture": "image", "photo": "photo",
           "drawing": "dessin", "image": "image", "grey": "gris", "background": "fond", "in": "dans", "to": "à",
           "exactly": "exactement", "single": "seul", "that": "qui", "near": "près", "with": "avec"},
    "de": {"a": "ein", "an": "ein", "one": "ein", "two": "zwei", "three": "drei", "four": "vier", "red": "roter",
           "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "lila", "orange": "oranger",
           "circle": "Kreis", "circles": "Kreise", "square": "Quadrat", "squares": "Quadrate", "triangle": "Dreieck",
           "triangles": "Dreiecke", "star": "Stern", "stars": "Sterne", "cross": "Kreuz", "crosses": "Kreuze",
           "small": "kleiner", "large": "großer", "on": "auf", "of": "von", "the": "dem", "left": "links",
           "right": "rechts", "above": "über", "below": "unter", "is": "ist", "and": "und", "there": "es",
           "are": "gibt", "objects": "Objekte", "shapes": "Formen", "picture": "Bild", "photo": "Foto",
           "drawing": "Zeichnung", "image": "Bild", "grey": "grauem", "background": "Hintergrund", "in": "in",
           "to": "zu", "exactly": "genau", "single": "einzelner", "that": "der", "near": "nahe", "with": "mit"},
    "es": {"a": "un", "an": "un", "one": "un", "two": "dos", "three": "tres", "four": "cuatro", "red": "rojo",
           "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado", "orange": "naranja",
           "circle": "círculo", "circles": "círculos", "square": "cuadrado", "squares": "cuadrados",
           "triangle": "triángulo", "triangles": "triángulos", "star": "estrella", "stars": "estrellas",
           "cross": "cruz", "crosses": "cruces", "small": "pequeño", "large": "grande", "on": "sobre", "of": "de",
           "the": "el", "left": "izquierda", "right": "derecha", "above": "encima", "below": "debajo", "is": "está",
           "and": "y", "there": "hay", "are": "", "objects": "objetos", "shapes": "formas", "picture": "imagen",
           "photo": "foto", "drawing": "dibujo", "image": "imagen", "grey": "gris", "background": "fondo",
           "in": "en", "to": "a", "exactly": "exactamente", "single": "solo", "that": "que", "near": "cerca",
           "with": "con"},
}
_BOILERPLATE = ("IMG_{n:04d}.jpg", "DSC{n:05d} stock photo, royalty free", "click here to buy now at www.shop{n}.com",
                "image may contain: shape {n}", "untitled image {n} - all rights reserved")


def translate(caption: str, language: str) -> str:
    """A word-by-word translation of a scene caption (unknown words kept) into ``language`` (fr, de, es)."""
    words = [_WORDS[language].get(word.strip(",:").lower(), word.strip(",:")) for word in caption.split()]
    return " ".join(word for word in words if word)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _near_copy(png: bytes, rng: np.random.Generator) -> bytes:
    """The image shifted by one pixel and brightened a little, re-encoded: other bytes, the same picture."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    shifted = Image.new("RGB", image.size, image.getpixel((0, 0)))
    shifted.paste(image, (dx, dy))
    return _png(ImageEnhance.Brightness(shifted).enhance(float(rng.uniform(1.02, 1.06))))


def _bad_size(png: bytes, rng: np.random.Generator) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    side = image.width
    if rng.random() < 0.5:
        return _png(image.resize((max(8, side * 3 // 8),) * 2))  # tiny
    strip = Image.new("RGB", (side, side * 4), (212, 212, 212))  # aspect ratio 4
    strip.paste(image, (0, int(rng.integers(0, side * 3))))
    return _png(strip)


def _write_shards(folder: Path, samples: list[dict[str, Any]], shard_size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(samples), shard_size):
        path = folder / f"{len(paths):05d}.tar"
        with atomic_path(path) as temporary, tarfile.open(temporary, "w", format=tarfile.GNU_FORMAT) as tar:
            for sample in samples[start:start + shard_size]:
                meta = json.dumps({"key": sample["id"]}).encode()
                for extension, data in (("png", sample["png"]), ("txt", sample["caption"].encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{sample['id']}.{extension}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def make_noisy_pool(folder: str | os.PathLike, n: int, *, seed: int = 0, image_size: int = 64,
                    single_fraction: float = 0.5, noise: dict[str, float] | None = None,
                    shard_size: int = 1000) -> dict[str, Any]:
    """Write ``n`` samples with injected noise (fractions of ``n`` per kind, default :data:`DEFAULT_NOISE`) to
    ``folder/shards`` and their labels to ``folder/noise.jsonl``; the same arguments give the same bytes.

    Returns {"shards", "labels": {id: kind}, "counts": {kind: number}, "n"}.
    """
    fractions = dict(DEFAULT_NOISE if noise is None else noise)
    unknown = sorted(set(fractions) - set(DEFAULT_NOISE))
    if unknown:
        raise ValueError(f"unknown noise kind(s) {', '.join(unknown)}; kinds: {', '.join(DEFAULT_NOISE)}")
    counts = {kind: int(round(n * fractions.get(kind, 0.0))) for kind in DEFAULT_NOISE}
    copies = counts["duplicate"] + counts["near_duplicate"]
    unique = n - copies
    if unique < 2 or sum(counts.values()) - copies > unique:
        raise ValueError(f"the noise fractions {fractions} leave too few clean samples out of {n}")
    rng = np.random.default_rng([seed, 7])
    scenes = [make_scene(seed, index, bool(rng.random() < single_fraction), image_size, 3, "")
              for index in range(unique)]
    kinds = ["clean"] * unique
    order = rng.permutation(unique)
    position = 0
    for kind in ("mismatched", "foreign", "corrupt", "short", "boilerplate", "bad_size"):
        for index in order[position:position + counts[kind]]:
            kinds[index] = kind
        position += counts[kind]
    samples = []
    for index, (png, meta) in enumerate(scenes):
        kind, caption = kinds[index], meta["captions"][0]
        if kind == "mismatched":
            other = (index + 1 + int(rng.integers(0, unique - 1))) % unique
            caption = scenes[other][1]["captions"][0]
        elif kind == "foreign":
            caption = translate(caption, ("fr", "de", "es")[index % 3])
        elif kind == "corrupt":
            png = png[: len(png) // 3] if index % 2 else b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, np.uint8))
        elif kind == "short":
            caption = " ".join(caption.split()[-2:]) if index % 2 else caption.split()[-1]
        elif kind == "boilerplate":
            caption = _BOILERPLATE[index % len(_BOILERPLATE)].format(n=index)
        elif kind == "bad_size":
            png = _bad_size(png, rng)
        samples.append({"png": png, "caption": caption, "noise": kind, "source": None, "scene": meta})
    clean = [index for index, kind in enumerate(kinds) if kind == "clean"]
    for copy in range(copies):
        kind = "duplicate" if copy < counts["duplicate"] else "near_duplicate"
        original = samples[clean[int(rng.integers(0, len(clean)))]]
        png = original["png"] if kind == "duplicate" else _near_copy(original["png"], rng)
        caption = original["scene"]["captions"][int(rng.integers(0, len(original["scene"]["captions"])))]
        samples.append({"png": png, "caption": caption, "noise": kind, "source": original,
                        "scene": original["scene"]})
    # a random order in which every copy comes after its original (keep-first dedup keeps the original)
    keys = rng.random(len(samples))
    for sample, key in zip(samples, keys):
        sample["key"] = key
    for sample in samples[unique:]:
        sample["key"] = sample["source"]["key"] + (1 - sample["source"]["key"]) * float(rng.random())
    samples.sort(key=lambda sample: sample["key"])
    width = max(6, len(str(len(samples) - 1)))
    for position, sample in enumerate(samples):
        sample["id"] = str(position).zfill(width)
    folder = Path(folder)
    shards = _write_shards(folder / "shards", samples, shard_size)
    lines = [json.dumps({"id": s["id"], "noise": s["noise"], "source": s["source"]["id"] if s["source"] else None})
             for s in samples]
    atomic_write_text(folder / "noise.jsonl", "\n".join(lines) + "\n")
    labels = {sample["id"]: sample["noise"] for sample in samples}
    return {"shards": shards, "labels": labels, "n": len(samples),
            "counts": {kind: sum(1 for value in labels.values() if value == kind) for kind in NOISE_KINDS}}

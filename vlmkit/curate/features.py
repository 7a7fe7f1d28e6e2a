"""Per-sample features that curation decides on: caption text statistics, language, image size, content hashes.

Pure functions of one sample, computed once in pass 1 (on the executor's workers); the stages threshold them in
pass 2. Nothing here loads a neural model; language identification uses py3langid, whose model ships inside
its wheel (no download).
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from vlmkit.data.decode import repair_text

URL_PATTERN = re.compile(r"(https?://|www\.|\b[\w-]+\.(com|net|org|io|html?|php)\b|\S+@\S+\.\w+)", re.IGNORECASE)
# Alt-text boilerplate seen in web crawls: file names, placeholders, stock-photo and shop phrases.
BOILERPLATE_PATTERNS = (
    r"\b(img|dsc|dscn|image|photo|pic)[_-]?\d{2,}\b", r"\.(jpe?g|png|gif|webp|bmp)\b",
    r"\bstock (photo|image|illustration)\b", r"\broyalty[- ]free\b", r"\bclick (here|to)\b",
    r"\b(no|missing) (description|image|caption)\b", r"\bimage may contain\b", r"\bthumbnail\b",
    r"\bplaceholder\b", r"\b(buy|shop|order) now\b", r"\bfree shipping\b", r"\ball rights reserved\b",
    r"\bcopyright\b", r"\bdownload\b", r"\buntitled\b", r"^\W*$",
)
_BOILERPLATE = re.compile("|".join(f"(?:{pattern})" for pattern in BOILERPLATE_PATTERNS), re.IGNORECASE)
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))
PHASH_BITS = 64


def clean_caption(caption: str | None) -> str:
    """The caption as text ("" when missing), with non-UTF-8 escapes repaired and outer whitespace stripped."""
    if caption is None:
        return ""
    return repair_text(str(caption))[0].strip()


def text_features(caption: str | None) -> dict[str, Any]:
    """Length, repetition and pattern features of one caption (JSON-able Python values).

    ``words``/``chars``: whitespace-separated words and characters; ``longest_run``: the longest run of one
    repeated character; ``repeat_ratio``: share of characters equal to the one before them; ``has_url`` and
    ``boilerplate``: whether the caption matches the URL / boilerplate patterns.
    """
    text = clean_caption(caption)
    longest, run, repeats = 0, 0, 0
    previous = None
    for character in text:
        run = run + 1 if character == previous else 1
        repeats += character == previous
        longest, previous = max(longest, run), character
    return {"words": len(text.split()), "chars": len(text), "longest_run": longest,
            "repeat_ratio": round(repeats / len(text), 6) if text else 0.0,
            "has_url": bool(URL_PATTERN.search(text)), "boilerplate": bool(_BOILERPLATE.search(text))}


@lru_cache(maxsize=1)
def _language_identifier() -> Any:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as error:
        raise ImportError("the language stage needs py3langid (an offline language identifier whose model ships "
                          "in the package): pip install py3langid") from error
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_features(caption: str | None) -> dict[str, Any]:
    """``language`` (ISO 639-1 code, "" for an empty caption) and its normalised ``language_probability``."""
    text = clean_caption(caption)
    if not text:
        return {"language": "", "language_probability": 0.0}
    language, probability = _language_identifier().classify(text)
    return {"language": str(language), "language_probability": round(float(probability), 6)}


def image_format(data: bytes) -> str:
    """The encoded format of ``data`` from its magic bytes (``png``, ``jpg``, ``webp``, ...; ``img`` if unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), "img")


@lru_cache(maxsize=4)
def _dct_matrix(size: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of order ``size``: [keep, size]."""
    frequencies = np.arange(keep)[:, None]
    positions = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * positions + 1) * frequencies / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit DCT perceptual hash (pHash, as ``imagehash.phash``) as 16 hex digits.

    Grayscale 32x32 (Lanczos), 2-D DCT, the 8x8 lowest frequencies, one bit per coefficient: above their median.
    """
    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(32, 8)
    low = dct @ pixels @ dct.T  # [8, 8]
    bits = (low > np.median(low)).reshape(-1)
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def image_features(image: Image.Image, data: bytes) -> dict[str, Any]:
    """Size, shape and content hashes of one decoded image (``data``: its encoded bytes)."""
    width, height = image.size
    return {"width": int(width), "height": int(height), "pixels": int(width * height),
            "aspect": round(max(width, height) / max(1, min(width, height)), 6),
            "sha256": hashlib.sha256(data).hexdigest(), "phash": perceptual_hash(image),
            "format": image_format(data)}


def hashes_as_bits(hashes: list[str]) -> np.ndarray:
    """Hex pHashes -> packed bits [N, 8] uint8 (the layout of FAISS binary indexes)."""
    if not hashes:
        return np.zeros((0, PHASH_BITS // 8), np.uint8)
    return np.frombuffer(b"".join(bytes.fromhex(value) for value in hashes), np.uint8).reshape(len(hashes), -1)

"""Safe decoding of images and captions, and the report of what was skipped or converted.

Decoding never crashes a run: every failure becomes a :class:`BadSample` with a short reason
slug, and every lossy conversion (CMYK, palette, alpha, 16-bit, ...) is returned as a note so
that a :class:`BadSampleReport` can count it.
"""
from __future__ import annotations

import codecs
import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .report import BadSampleReport  # re-exported: the report is part of the decoding API

__all__ = ["BAD_SAMPLE_REASONS", "DEFAULT_MAX_PIXELS", "BadSample", "BadSampleReport",
           "decode_caption", "decode_image", "repair_bytes", "repair_text"]

# PIL's own default limit; kept as ours so behaviour does not change with PIL's global setting.
DEFAULT_MAX_PIXELS = 89_478_485

BAD_SAMPLE_REASONS = (
    "missing_file",
    "empty_file",
    "corrupt_image",
    "truncated_image",
    "too_large",
    "empty_caption",
    "missing_caption",
)

_UTF8_BOM = b"\xef\xbb\xbf"
_CP1252_FALLBACK = "vlmkit-cp1252-fallback"


def _decode_invalid_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: decode the offending bytes as cp1252 (latin-1 for its 5 holes)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    chunk = error.object[error.start:error.end]
    text = "".join(
        bytes([byte]).decode("cp1252", errors="strict") if byte not in _CP1252_HOLES
        else chr(byte)
        for byte in chunk
    )
    return text, error.end


_CP1252_HOLES = frozenset((0x81, 0x8D, 0x8F, 0x90, 0x9D))
codecs.register_error(_CP1252_FALLBACK, _decode_invalid_as_cp1252)


class BadSample(Exception):
    """A sample that cannot be used.

    Attributes:
        reason: one of :data:`BAD_SAMPLE_REASONS`.
        key: the sample's key ("" when the raiser does not know it; the dataset fills it in).
        detail: a human explanation (the underlying error message, sizes, ...).
        hint: optional advice appended to the message (e.g. how to skip such samples).
    """

    def __init__(self, reason: str, key: str = "", detail: str = "") -> None:
        super().__init__(reason, key, detail)
        hint = ""
        if reason not in BAD_SAMPLE_REASONS and not key and not detail:
            reason, key, detail, hint = _parse_reraised(reason)
        self.reason = reason
        self.key = key
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        where = f"sample {self.key!r}: " if self.key else ""
        text = f"{where}{self.reason}"
        if self.detail:
            text += f" ({self.detail})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __reduce__(self):  # keep reason/key/detail/hint across processes (DataLoader workers)
        return (_rebuild_bad_sample, (self.reason, self.key, self.detail, self.hint))


_MESSAGE = re.compile(r"BadSample: (?:sample '(?P<key>[^']*)': )?(?P<reason>[a-z_]+)"
                      r"(?: \((?P<detail>.*)\))?(?:; (?P<hint>[^;()]*))?$")


def _parse_reraised(text: str) -> tuple[str, str, str, str]:
    """Recover (reason, key, detail, hint) from a message torch's DataLoader re-raises.

    A worker's exception comes back as ``BadSample(formatted traceback)``; the traceback's last
    line is our own ``str()``, so the fields can be read back and the CLI can print one line.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _MESSAGE.search(lines[-1]) if lines else None
    if match and match.group("reason") in BAD_SAMPLE_REASONS:
        return (match.group("reason"), match.group("key") or "", match.group("detail") or "",
                match.group("hint") or "")
    return text, "", "", ""


def _rebuild_bad_sample(reason: str, key: str, detail: str, hint: str) -> BadSample:
    error = BadSample(reason, key, detail)
    error.hint = hint
    return error


def _webp_is_truncated(data: bytes) -> bool:
    """WebP's decoder reports a cut file as a generic error; the RIFF header knows the real size."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    (riff_size,) = struct.unpack("<I", data[4:8])
    return len(data) < riff_size + 8


def _classify_decode_error(error: Exception, data: bytes) -> str:
    message = str(error).lower()
    if "truncated" in message or _webp_is_truncated(data):
        return "truncated_image"
    return "corrupt_image"


def _scale_to_uint8(image: Image.Image) -> tuple[Image.Image, str]:
    """Map a single-channel high-bit-depth image (I;16*, I, F) to 8-bit grayscale.

    Scaling is by the format's range, not clipping: 16-bit values are divided by 257
    (65535 -> 255); 32-bit integers that fit in 16 bits are treated as 16-bit (PIL opens some
    16-bit files as mode I); floats in [0, 1] are multiplied by 255; anything else is min-max
    stretched. Returns the L image and the note describing the source depth.
    """
    values = np.asarray(image).astype(np.float64)
    mode = image.mode
    if mode.startswith("I;16"):
        note, scaled = "16bit", values / 257.0
    elif mode == "F":
        note = "float"
        if values.size and 0.0 <= values.min() and values.max() <= 1.0:
            scaled = values * 255.0
        else:
            scaled = _min_max(values)
    else:  # mode "I": 32-bit signed integers
        low = values.min() if values.size else 0.0
        high = values.max() if values.size else 0.0
        if low >= 0 and high <= 255:
            note, scaled = "32bit", values
        elif low >= 0 and high <= 65535:
            note, scaled = "16bit", values / 257.0
        else:
            note, scaled = "32bit", _min_max(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L"), note


def _min_max(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any PIL mode to RGB, appending a note for each lossy step."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "CMYK":
        notes.append("cmyk")
        return image.convert("RGB")
    if mode in ("P", "PA"):
        notes.append("palette")
        has_alpha = mode == "PA" or "transparency" in image.info
        if has_alpha:
            notes.append("alpha")
            return _composite_on_white(image)
        return image.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La"):
        notes.append("alpha")
        if mode.startswith("L"):
            notes.append("grayscale")
        return _composite_on_white(image)
    if mode in ("L", "1"):
        notes.append("grayscale")
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        gray, depth_note = _scale_to_uint8(image)
        notes.extend([depth_note, "grayscale"])
        return gray.convert("RGB")
    # YCbCr, LAB, HSV, RGBX, ...: let PIL convert; an unsupported mode is a corrupt sample.
    notes.append(f"mode_{mode.lower().replace(';', '_')}")
    return image.convert("RGB")


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, list[str]]:
    """Decode encoded image bytes into an RGB PIL image.

    The pixel count is checked from the header before any pixel is decoded; truncated files
    raise instead of being padded with grey (PIL's global LOAD_TRUNCATED_IMAGES is not touched);
    EXIF orientation is applied; animated images keep their first frame.

    Returns:
        (image, notes): an RGB image (fully loaded) and conversion notes among ``cmyk``,
        ``palette``, ``alpha``, ``16bit``, ``32bit``, ``float``, ``grayscale``, ``animated``,
        ``exif_rotated``, ``mode_<name>``.

    Raises:
        BadSample: ``empty_file``, ``corrupt_image``, ``truncated_image`` or ``too_large``.
    """
    if not data:
        raise BadSample("empty_file", detail="zero bytes")
    notes: list[str] = []
    # Our own max_pixels check is authoritative; PIL's bomb warning/error must not escape.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise BadSample("too_large", detail=str(error)) from None
        except UnidentifiedImageError:
            raise BadSample("corrupt_image", detail="not a recognised image format") from None
        except Exception as error:  # noqa: BLE001 - any parser failure is a bad sample
            raise BadSample(_classify_decode_error(error, data), detail=str(error)) from None

        width, height = image.size
        if width <= 0 or height <= 0:
            raise BadSample("corrupt_image", detail=f"image size {width}x{height}")
        if width * height > max_pixels:
            raise BadSample(
                "too_large", detail=f"{width}x{height} = {width * height} pixels > {max_pixels}"
            )
        # PNGs with 16-bit RGB(A) samples are reduced to 8-bit by PIL itself; note it.
        rawmodes = [tile.args if isinstance(tile.args, str) else "" for tile in image.tile]
        if image.mode in ("RGB", "RGBA") and any("16" in rawmode for rawmode in rawmodes):
            notes.append("16bit")
        try:
            if getattr(image, "n_frames", 1) > 1:
                notes.append("animated")
        except Exception:  # noqa: BLE001 - a broken frame table shows up again in load()
            pass
        try:
            image.load()
        except Exception as error:  # noqa: BLE001
            raise BadSample(_classify_decode_error(error, data), detail=str(error)) from None

        try:
            orientation = image.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                image = ImageOps.exif_transpose(image)
                notes.append("exif_rotated")
        except Exception:  # noqa: BLE001 - broken EXIF must not cost a good image
            pass

        try:
            rgb = _to_rgb(image, notes)
        except Exception as error:  # noqa: BLE001
            raise BadSample("corrupt_image", detail=f"mode {image.mode}: {error}") from None
    return rgb, notes


def repair_bytes(raw: bytes) -> tuple[str, bool]:
    """Decode caption bytes: UTF-8 (BOM stripped), invalid bytes read as cp1252.

    Returns (text, repaired) where repaired says some bytes were not valid UTF-8.
    """
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        # Valid UTF-8 runs stay as they are; only the invalid bytes are read as cp1252.
        return raw.decode("utf-8", errors=_CP1252_FALLBACK), True


def repair_text(text: str) -> tuple[str, bool]:
    """Fix a string holding surrogate escapes (bytes that were not UTF-8) as :func:`repair_bytes`.

    Returns (text, repaired). Cheap for ordinary strings (one encode).
    """
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are not escapes (e.g. a JSON \ud800 escape)
        raw = text.encode("utf-8", errors="replace")
    fixed, _ = repair_bytes(raw)
    return fixed, True


def decode_caption(raw: bytes | str | None, key: str = "") -> tuple[str, list[str]]:
    """Turn a raw caption into clean text.

    Bytes are decoded as UTF-8 (BOM stripped); bytes that are not valid UTF-8 are decoded as
    cp1252 (latin-1 for the 5 bytes cp1252 leaves undefined), with the note ``non_utf8``.
    Strings that carry surrogate escapes (manifests are read with
    ``errors="surrogateescape"``) are treated the same way.

    Returns:
        (caption, notes): the stripped caption and conversion notes.

    Raises:
        BadSample: ``missing_caption`` for None, ``empty_caption`` for empty/whitespace.
    """
    if raw is None:
        raise BadSample("missing_caption", key)
    if isinstance(raw, bytes):
        text, repaired = repair_bytes(raw)
    else:
        text, repaired = repair_text(str(raw))
    text = text.lstrip("\ufeff").strip()
    if not text:
        raise BadSample("empty_caption", key)
    return text, ["non_utf8"] if repaired else []

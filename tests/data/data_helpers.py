"""Helpers for the data tests: small encoded images.

A plain module with a unique name rather than a conftest.py: other test folders import their
own ``conftest`` by name, and a second conftest module would shadow theirs.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A random RGB image: any crop/flip difference shows in the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (for what PIL cannot save); ``rows`` are the filtered scanlines."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression bomb on paper)."""
    return raw_png(width, height, 8, 0, b"\x00" * 64)

"""Fixtures for the data tests."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from data_helpers import encode, noise_image
from PIL import Image


@pytest.fixture
def write_image(tmp_path: Path) -> Callable[..., Path]:
    """write_image("a/b.png", image=None, fmt=None) -> path of a small image file under tmp_path."""

    def write(relative: str, image: Image.Image | None = None, fmt: str | None = None,
              seed: int = 0) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image = image if image is not None else noise_image(24, 20, seed)
        fmt = fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        path.write_bytes(encode(image, fmt))
        return path

    return write

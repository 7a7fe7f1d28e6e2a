"""Fixtures for the service: tiny random native models (a CLIP and a prefix-LM captioner), scenes, an index."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a circle",
            "what color is the circle?", "red", "blue", "three"]


@pytest.fixture(scope="session")
def clip_model(tiny_overrides):
    """A random CLIP of the tests' tiny shape (32 px images, 16-d embeddings) with a small BPE tokenizer."""
    import vlmkit
    from vlmkit.config import load_config
    from vlmkit.data import train_bpe

    tokenizer = train_bpe(CAPTIONS * 5, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    return vlmkit.build_model(load_config("clip-tiny", tiny_overrides)["model"], tokenizer=tokenizer).eval()


@pytest.fixture(scope="session")
def generative_model():
    """A random prefix LM (generate and answer, no embeddings) small enough to decode in milliseconds."""
    from vlmkit.data import train_bpe
    from vlmkit.models.prefix_lm import IMAGE_TOKEN, PrefixLM

    tokenizer = train_bpe(CAPTIONS * 5, vocab_size=400, min_frequency=1, special_tokens=[IMAGE_TOKEN])
    config = {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "pool": "mean"},
              "connector": {"kind": "mlp"},
              "language": {"vocab_size": tokenizer.vocab_size, "context_length": 64, "width": 32, "layers": 1,
                           "heads": 2},
              "max_text_length": 40}
    torch.manual_seed(0)
    return PrefixLM.from_config(config, tokenizer=tokenizer).eval()


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """24 built-in scenes at 32 px (captions.csv and images/)."""
    from vlmkit.data.synth import generate

    folder = tmp_path_factory.mktemp("scenes")
    generate(folder, 24, seed=0, image_size=32, workers=1)
    return folder


@pytest.fixture(scope="session")
def scene_index(tmp_path_factory, clip_model, scenes):
    """The scenes indexed with ``clip_model`` by the real vlmkit.search."""
    from vlmkit import search

    out = tmp_path_factory.mktemp("index") / "scenes.index"
    search.build_index(clip_model, [scenes / "captions.csv"], out, progress=False)
    return search.SearchIndex.open(out)


@pytest.fixture(scope="session")
def make_png():
    """``make_png(width, height, color)``: an encoded PNG of one color."""
    from PIL import Image

    def make(width: int = 40, height: int = 30, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), color).save(buffer, format="PNG")
        return buffer.getvalue()

    return make


@pytest.fixture(scope="session")
def scene_png(scenes) -> bytes:
    """The encoded bytes of one of the scenes."""
    return sorted((scenes / "images").rglob("*.png"))[0].read_bytes()

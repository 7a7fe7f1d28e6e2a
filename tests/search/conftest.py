"""Fixtures of the search-index tests: FAISS required, a tiny random CLIP folder and 24 scenes."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="package")
def scenes(tmp_path_factory):
    """24 scenes at 32 px: images/, captions.csv and 3 shards of 10, 10 and 4."""
    from vlmkit.data.synth import generate

    folder = tmp_path_factory.mktemp("scenes")
    generate(folder, 24, seed=0, image_size=32, shard_size=10, workers=1)
    return folder


@pytest.fixture(scope="package")
def clip_folder(tmp_path_factory, tiny_overrides):
    """A random tiny CLIP (16-d embeddings) saved as a native model folder."""
    import vlmkit
    from vlmkit.config import load_config
    from vlmkit.data import train_bpe

    tokenizer = train_bpe(["a red circle", "two blue squares", "a green triangle left of a star"] * 5,
                          vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = vlmkit.build_model(load_config("clip-tiny", tiny_overrides)["model"], tokenizer=tokenizer).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("models") / "clip")

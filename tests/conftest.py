import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A model small enough that a training step takes milliseconds on 2 cores.
TINY = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
        "model.vision.layers=1", "model.vision.heads=2", "model.text.context_length=24", "model.text.width=32",
        "model.text.layers=1", "model.text.heads=2", "model.embed_dim=16", "tokenizer.vocab_size=300",
        "train.batch_size=16", "train.warmup=2", "train.log_every=1", "train.threads=1",
        "train.precision=fp32", "data.workers=0"]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """240 training scenes at 32 px (every format: captions.csv, coco.json, shards/)."""
    from vlmkit.data.synth import generate

    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 240, seed=0, image_size=32, shard_size=100)
    return folder


@pytest.fixture(scope="session")
def heldout_data(tmp_path_factory) -> Path:
    from vlmkit.data.synth import generate

    folder = tmp_path_factory.mktemp("heldout")
    generate(folder, 80, seed=1, image_size=32)
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth_data) -> Path:
    """A tiny CLIP trained for 6 steps, shared by tests that need a trained model folder."""
    from vlmkit.config import load_config
    from vlmkit.train import train

    out = tmp_path_factory.mktemp("run") / "clip"
    config = load_config("clip-tiny", TINY + ["train.steps=6", "train.checkpoint_every=3"])
    train(config, data=synth_data / "captions.csv", out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance on loopback (2 CPUs, no dashboard) for a module's Ray-executor tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()

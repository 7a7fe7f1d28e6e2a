"""Fixtures for the curation tests: a small noisy pool of built-in scenes with its noise labels."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def noisy_pool(tmp_path_factory) -> dict:
    """160 samples at 32 px in two shards: mismatched captions, duplicates, a corrupt file, foreign, short and
    boilerplate captions, tiny and thin images (labels in ``labels``, shards in ``shards``)."""
    from vlmkit.curate.noisy import make_noisy_pool

    folder = tmp_path_factory.mktemp("noisy_pool")
    summary = make_noisy_pool(folder, 160, seed=3, image_size=32, shard_size=80,
                              noise={"mismatched": 0.25, "duplicate": 0.1, "near_duplicate": 0.05, "foreign": 0.05,
                                     "corrupt": 0.02, "short": 0.03, "boilerplate": 0.03, "bad_size": 0.04})
    return {**summary, "folder": Path(folder)}

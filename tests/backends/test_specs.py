"""Model specs: what --model accepts, and the one-line errors when something is missing."""
from __future__ import annotations

import json

import pytest
import torch

import vlmkit
from vlmkit.backends import open_clip as open_clip_backend


def test_open_clip_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="open_clip:ARCH:/path/to/checkpoint"):
        vlmkit.load("open_clip:ViT-B-32")
    with pytest.raises(FileNotFoundError, match="is not on disk: download it"):
        vlmkit.load(f"open_clip:ViT-B-32:{tmp_path / 'missing.bin'}")


@pytest.mark.skipif(open_clip_backend.importable(), reason="checks the message shown without open_clip")
def test_open_clip_spec_without_open_clip_says_what_to_install(tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "weights.pt")
    try:
        open_clip_backend.vocabulary_path()
    except ImportError:
        with pytest.raises(ImportError, match=r"vlmkit\[open_clip\]"):
            vlmkit.load(f"open_clip:ViT-B-32:{tmp_path / 'weights.pt'}")
    else:  # open_clip's files are there (not importable): the spec converts to native, and the bad file says so
        with pytest.raises((ValueError, KeyError)):
            vlmkit.load(f"open_clip:ViT-B-32:{tmp_path / 'weights.pt'}")


def test_hf_folder_without_weights_and_unknown_folders(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        vlmkit.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf:REPO_ID"):
        vlmkit.load(str(tmp_path / "nothing-here"))

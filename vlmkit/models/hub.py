"""Resolve a model spec and load it behind the capability interface.

Specs:
- a native model folder (vlmkit ``config.json`` + ``model.safetensors``) or a training run folder (its ``model/``);
- a local Hugging Face model folder, or ``hf:REPO_ID`` resolved offline from the Hugging Face cache;
- ``open_clip:ARCH:/path/to/checkpoint``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmkit.models.pretrained import CONFIG_NAME, read_config

SPEC_HELP = ("a native model or run folder, a Hugging Face model folder, hf:REPO_ID (from the local Hugging Face "
             "cache) or open_clip:ARCH:/path/to/checkpoint")


def resolve_model_dir(spec: str | Path) -> Path:
    """A model folder, or a run folder whose ``model/`` subfolder holds the trained model."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no model at {spec}: give {SPEC_HELP}")
    if (path / CONFIG_NAME).exists():
        return path
    if (path / "model" / CONFIG_NAME).exists():
        return path / "model"
    raise FileNotFoundError(f"{spec} is neither a model folder (no {CONFIG_NAME}) nor a run folder "
                            f"(no model/{CONFIG_NAME}); has the run saved a model yet?")


def load(spec: str | Path, *, device: str | torch.device | None = None) -> Any:
    """The model a spec names: native models as themselves, external checkpoints through their adapters."""
    spec = str(spec)
    if spec.startswith("open_clip:"):
        return _load_open_clip(spec, device)
    if spec.startswith("hf:"):
        from vlmkit.backends.hf import load_folder, resolve_repo

        return load_folder(resolve_repo(spec[3:]), device=device)
    directory = resolve_model_dir(spec)
    from vlmkit.backends.hf import is_hf_folder

    if is_hf_folder(directory):
        from vlmkit.backends.hf import load_folder

        return load_folder(directory, device=device)
    return load_native(directory, device=device)


def load_native(directory: Path, *, device: str | torch.device | None = None) -> Any:
    from vlmkit.registry import model_class

    config = read_config(directory)
    if "architecture" not in config:
        raise ValueError(f"{directory / CONFIG_NAME} has no 'architecture'; is it a vlmkit model folder?")
    return model_class(config["architecture"]).from_pretrained(directory, device=device)


def _load_open_clip(spec: str, device: str | torch.device | None) -> Any:
    """open_clip's own model when open_clip imports; otherwise the same weights converted to a native CLIP
    (identical embeddings; needs only open_clip's vocabulary file)."""
    from vlmkit.backends import open_clip

    architecture, checkpoint = open_clip.parse_spec(spec)
    if open_clip.importable():
        return open_clip.OpenClipContrastive.from_spec(spec, device=device)
    from vlmkit.backends.clip_convert import native_from_open_clip

    open_clip.vocabulary_path()  # says what to install when open_clip's files are absent too
    model = native_from_open_clip(architecture, checkpoint)
    return model.to(device) if device is not None else model

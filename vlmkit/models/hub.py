"""Resolve a model spec (a native model folder or a training run folder) and load it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmkit.models.pretrained import CONFIG_NAME, read_config


def resolve_model_dir(spec: str | Path) -> Path:
    """A model folder, or a run folder whose ``model/`` subfolder holds the trained model."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no model at {spec}: give a model folder (with {CONFIG_NAME}) or a run folder")
    if (path / CONFIG_NAME).exists():
        return path
    if (path / "model" / CONFIG_NAME).exists():
        return path / "model"
    raise FileNotFoundError(f"{spec} is neither a model folder (no {CONFIG_NAME}) nor a run folder "
                            f"(no model/{CONFIG_NAME}); has the run saved a model yet?")


def load(spec: str | Path, *, device: str | torch.device | None = None) -> Any:
    from vlmkit.registry import model_class

    directory = resolve_model_dir(spec)
    config = read_config(directory)
    if "architecture" not in config:
        raise ValueError(f"{directory / CONFIG_NAME} has no 'architecture'; is it a vlmkit model folder?")
    return model_class(config["architecture"]).from_pretrained(directory, device=device)

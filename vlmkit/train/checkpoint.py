"""Training checkpoints, written atomically, for exact resume.

Layout in the run folder::

    checkpoints/step-00000200/{model.safetensors, optimizer.pt, rng.pt, state.json}
    checkpoints/latest          the name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, and ``latest`` is replaced
atomically afterwards, so a run killed at any moment leaves either the old or the new checkpoint, never half.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from vlmkit.files import atomic_write_text
from vlmkit.models.pretrained import load_state_dict_file, save_state_dict

KEEP = 2


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_state_dict(model.state_dict(), tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_text(tmp / "state.json", json.dumps({**state, "step": step}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG state in place; returns the saved ``state.json``."""
    state_dict = load_state_dict_file(path / "model.safetensors")
    model.load_state_dict(state_dict, strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples where serialisation may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value

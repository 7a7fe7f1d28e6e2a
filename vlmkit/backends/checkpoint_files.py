"""Read weights from the files checkpoints come in: safetensors (single or sharded) and PyTorch pickles,
always with ``weights_only=True`` so a file from an unknown source cannot run code."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

_FOLDER_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or model folder, on the CPU.

    Training checkpoints that wrap the weights (``{"state_dict": ...}``, DDP's ``module.`` prefix) are unwrapped.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(path / shard)))
            return state
        for name in _FOLDER_FILES:
            if (path / name).exists():
                return read_state_dict(path / name)
        raise FileNotFoundError(f"{path} has no weights file (looked for {', '.join(_FOLDER_FILES)})")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if _is_torchscript(path):
        raise ValueError(f"{path} is a TorchScript archive (like OpenAI's original CLIP files), which vlmkit does "
                         "not execute; use the same weights as safetensors (e.g. open_clip's or Hugging Face's "
                         "copy of the model)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"cannot read {path} as a weights-only PyTorch checkpoint: {error}") from error
    return _unwrap(loaded, path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return dict(loaded)

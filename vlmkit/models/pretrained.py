"""Save and load native models in the Hugging Face layout: config.json, model.safetensors, tokenizer files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """safetensors file written atomically (tensors made contiguous and moved to CPU)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for native models that have ``config_dict()`` and ``tokenizer``."""

    architecture: str

    def config_dict(self) -> dict[str, Any]:  # pragma: no cover - provided by each model
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and the tokenizer files into ``directory`` (each atomically)."""
        from vlmkit import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor for name, tensor in self.state_dict().items()}  # type: ignore[attr-defined]
        save_state_dict(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save(directory)
        config = {"architecture": self.architecture, "vlmkit_version": __version__, **self.config_dict()}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device | None = None) -> Any:
        """Rebuild the model from ``directory`` and load its weights exactly (strict)."""
        directory = Path(directory)
        config = read_config(directory)
        model = cls.from_config(config)  # type: ignore[attr-defined]
        state = load_file(str(directory / WEIGHTS_NAME))
        dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
        if len(dtypes) == 1:
            model.to(next(iter(dtypes)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not match its config.json: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        if (directory / "tokenizer.json").exists():
            from vlmkit.data.tokenizer import Tokenizer

            model.tokenizer = Tokenizer.load(directory)
        if device is not None:
            model.to(device)
        return model.eval()


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a model folder: it has no {CONFIG_NAME}")
    return json.loads(path.read_text())

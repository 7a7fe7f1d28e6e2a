"""Save and load native models in the Hugging Face layout: config.json, model.safetensors, tokenizer files."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlmkit.files import atomic_path, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """safetensors file written atomically (tensors made contiguous and moved to CPU). Tied weights are stored
    once, the other names recorded as aliases in the metadata (:func:`load_state_dict_file` restores them)."""
    kept, aliases = _without_tied_copies(state_dict)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in kept.items()}
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a file written by :func:`save_state_dict`, tied aliases included."""
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    state.update({alias: state[name] for alias, name in aliases.items()})
    return state


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for native models that have ``config_dict()`` and ``tokenizer``."""

    architecture: str  # the registry name written to config.json; each model also defines config_dict()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and the tokenizer files into ``directory`` (each atomically)."""
        from vlmkit import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.state_dict(), directory / WEIGHTS_NAME,  # type: ignore[attr-defined]
                        metadata={"format": "pt"})
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save(directory)
        config = {"architecture": self.architecture, "vlmkit_version": __version__,
                  **self.config_dict()}  # type: ignore[attr-defined]
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_saved_config(cls, config: dict[str, Any], directory: Path) -> Any:
        """The model's architecture (weights still to load) from a saved folder's config; a model whose folder
        holds more than config.json (e.g. a pretrained tower's own config) overrides this."""
        return cls.from_config(config)  # type: ignore[attr-defined]

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device | None = None) -> Any:
        """Rebuild the model from ``directory`` and load its weights exactly (strict)."""
        directory = Path(directory)
        config = read_config(directory)
        model = cls.from_saved_config(config, directory)
        state = load_state_dict_file(directory / WEIGHTS_NAME)
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


def _without_tied_copies(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (e.g. a language model's output head and token embedding) are stored once; ``aliases`` maps
    each dropped name to the stored one."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor
    return kept, aliases


def config_from_dict(cls: Any, data: dict[str, Any], nested: dict[str, Any]) -> Any:
    """A model config dataclass ``cls`` from a recipe's or config.json's dict; ``nested`` maps section names to
    their dataclasses. Unknown keys are errors that list the known ones."""
    known = {f.name for f in fields(cls)}
    # bookkeeping of config.json; "architecture" is also a field of some configs (clip | siglip)
    data = {key: value for key, value in data.items()
            if key != "vlmkit_version" and (key != "architecture" or key in known)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    for name, sub in nested.items():
        if isinstance(data.get(name), dict):
            sub_known = {f.name for f in fields(sub)}
            bad = sorted(set(data[name]) - sub_known)
            if bad:
                raise ValueError(f"unknown model.{name} keys {bad}; known: {sorted(sub_known)}")
            values = {k: tuple(v) if k in ("mean", "std") else v for k, v in data[name].items()}
            data[name] = sub(**values)
    return cls(**data)


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a model folder: it has no {CONFIG_NAME}")
    return json.loads(path.read_text())

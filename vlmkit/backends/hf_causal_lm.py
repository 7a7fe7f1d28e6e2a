"""A pretrained Hugging Face causal language model (``AutoModelForCausalLM``) as the language model of a vlmkit VLM.

Same interface as ``vlmkit.modules.language.CausalLM``: ``embed_tokens``, ``new_cache``, ``forward(embeddings,
attention_mask, cache=...) -> logits`` and ``.width``, so ``PrefixLM`` and ``vlmkit.generation`` use either.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmkit.backends.common import require_transformers
from vlmkit.files import atomic_write_text
from vlmkit.modules.language import positions_from_mask


def resolve_folder(source: str | Path) -> Path:
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"language model {source} is not a local Hugging Face folder with a config.json; "
                                "download it first (e.g. `hf download REPO_ID --local-dir FOLDER`)")
    return folder


class HFCache:
    """transformers' ``DynamicCache`` with the ``select``/``length`` that vlmkit's decoding uses. Selection reorders
    in place (decoding never returns to an earlier state)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def length(self) -> int:
        return int(self.inner.get_seq_length())

    def select(self, indices: torch.Tensor) -> "HFCache":
        if self.length:
            self.inner.reorder_cache(indices)
        return self


class PretrainedCausalLM(nn.Module):
    """Embeddings [B, L, W] (+ attention mask [B, past + L]) -> logits [B, L, vocab] through a transformers LM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def build(cls, source: str | Path, *, vocab_size: int | None = None,
              saved_config: str | Path | None = None) -> "PretrainedCausalLM":
        """The LM in folder ``source`` with its weights, or (``saved_config``: a folder with its config.json) the
        same architecture with fresh weights for a saved vlmkit model's state dict to fill. ``vocab_size`` grows
        the embedding table when vlmkit added tokens (``<image>``) to the LM's tokenizer."""
        transformers = require_transformers()
        if saved_config is not None:
            config = transformers.AutoConfig.from_pretrained(str(saved_config), local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(resolve_folder(source)),
                                                                      dtype=torch.float32, local_files_only=True)
        if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
        return cls(model)

    def save_config(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.json", self.model.config.to_json_string())
        return directory

    @property
    def width(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def new_cache(self) -> HFCache:
        from transformers import DynamicCache

        return HFCache(DynamicCache(config=self.model.config))

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cache: HFCache | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("a pretrained causal LM has no cross-attention: use a native language model for CoCa")
        batch, length, _ = embeddings.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.bool, device=embeddings.device)
        positions = positions_from_mask(attention_mask, length)
        # transformers >= 5.2x names the argument ``cache``; earlier versions ``past_key_values``
        cache_argument = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        output = self.model(inputs_embeds=embeddings, attention_mask=attention_mask.long(), position_ids=positions,
                            use_cache=cache is not None,
                            **{cache_argument: cache.inner if cache is not None else None})
        return output.logits

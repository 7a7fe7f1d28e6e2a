"""A small causal language model: decoder blocks, rotary or learned positions, KV cache, tied output head.

It takes token ids or ready-made embeddings (so a VLM can splice image embeddings into the sequence) and, for
CoCa-style multimodal decoding, a cross-attention context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.modules.transformer import KVCache, RotaryEmbedding, Transformer, init_transformer_


@dataclass
class LanguageConfig:
    vocab_size: int = 4096
    context_length: int = 128  # the longest sequence (prefix + text) the model is built for
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    positions: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    cross_attention: bool = False  # every block also attends to a context (CoCa's multimodal decoder)
    context_width: int | None = None  # width of that context (default: width)
    pretrained: str | None = None  # a local Hugging Face causal LM folder instead (its own shape; see backends)

    def __post_init__(self) -> None:
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"language positions must be rope or learned, not {self.positions!r}")
        if self.width % self.heads:
            raise ValueError(f"language width {self.width} is not divisible by heads {self.heads}")


def causal_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """[B, 1, Lq, Lk] boolean mask: causal over the last ``query_length`` positions of ``attention_mask`` [B, Lk]
    (True = real token) and no attention to padding. A padding query attends to itself only (never to nothing,
    which would make the softmax undefined)."""
    batch, keys = attention_mask.shape
    device = attention_mask.device
    query_positions = torch.arange(keys - query_length, keys, device=device)[:, None]
    allowed = torch.arange(keys, device=device)[None, :] <= query_positions  # [Lq, Lk]
    mask = allowed[None] & attention_mask[:, None, :].bool()
    mask |= (torch.arange(keys, device=device)[None, :] == query_positions)[None]
    return mask[:, None]


def positions_from_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Position ids [B, Lq] of the last ``query_length`` positions: real tokens count from 0 after any left padding."""
    positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return positions[:, -query_length:]


class CausalLM(nn.Module):
    """Token ids or embeddings [B, L] -> next-token logits [B, L, vocab]."""

    def __init__(self, config: LanguageConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        head_dim = width // config.heads
        self.rotary = RotaryEmbedding(head_dim, config.rope_theta) if config.positions == "rope" else None
        self.positional_embedding = (nn.Parameter(torch.randn(config.context_length, width) * 0.01)
                                     if config.positions == "learned" else None)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, config.activation,
                                       config.norm_eps, cross_attention=config.cross_attention,
                                       context_width=config.context_width)
        self.norm_final = nn.LayerNorm(width, eps=config.norm_eps)
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        init_transformer_(self.transformer, width, config.layers)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=width**-0.5)

    @property
    def width(self) -> int:
        return self.config.width

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, L, width] (positions are added inside ``forward``)."""
        return self.token_embedding(input_ids)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.layers)

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                cache: KVCache | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``embeddings`` [B, L, W] are the new positions; ``attention_mask`` [B, past + L] covers the cached ones
        too (None: no padding). Training uses right padding and no mask (the fast causal path); decoding passes a
        left-padded mask and a cache. Returns logits [B, L, vocab]."""
        return self.lm_head(self.hidden_states(embeddings, attention_mask, cache=cache, context=context,
                                               context_mask=context_mask))

    def hidden_states(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      cache: KVCache | None = None, context: torch.Tensor | None = None,
                      context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What ``forward`` turns into logits: the final-normalised hidden states [B, L, W] (CoCa reads its text
        embedding here and feeds them to its multimodal decoder). Arguments as in ``forward``."""
        batch, length, _ = embeddings.shape
        past = cache.length if cache is not None else 0
        if past + length > self.config.context_length and self.positional_embedding is not None:
            raise ValueError(f"sequence of {past + length} positions is longer than the language model's "
                             f"context length {self.config.context_length}")
        if attention_mask is None and past == 0:  # training: right padding needs no mask
            positions = torch.arange(length, device=embeddings.device).expand(batch, length)
            mask, is_causal = None, length > 1
        else:
            if attention_mask is None:
                attention_mask = torch.ones(batch, past + length, dtype=torch.bool, device=embeddings.device)
            positions = positions_from_mask(attention_mask, length)
            mask, is_causal = causal_mask(attention_mask, length), False
        x = embeddings
        if self.positional_embedding is not None:
            x = x + self.positional_embedding[positions]
        rotary = self.rotary(positions) if self.rotary is not None else None
        x = self.transformer(x, is_causal=is_causal, attn_mask=mask, rotary=rotary, cache=cache,
                             context=context, context_mask=context_mask)
        return self.norm_final(x)

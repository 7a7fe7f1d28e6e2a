"""Connectors: image tokens of a vision encoder -> embeddings in a language model's input space.

- ``linear``: one linear map per image token (Frozen, MiniGPT-4).
- ``mlp``: two layers with a GELU (LLaVA-1.5).
- ``qformer``: learned queries that self-attend and cross-attend to the image tokens over several blocks, then a
  linear map (BLIP-2's Q-Former, without its text branch): a fixed number of output tokens.
- ``resampler``: learned queries in one cross-attention layer over the image tokens with 2-D sine-cosine positions
  added to the keys (Qwen-VL's position-aware adapter): a fixed number of output tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.modules.transformer import CrossAttention, Transformer, init_transformer_
from vlmkit.modules.vision import sincos_2d


@dataclass
class ConnectorConfig:
    kind: str = "mlp"  # linear | mlp | qformer | resampler
    num_queries: int = 16  # qformer / resampler: image tokens handed to the language model
    layers: int = 2  # qformer blocks
    width: int | None = None  # qformer / resampler inner width (default: the vision width)
    heads: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp", "qformer", "resampler"):
            raise ValueError(f"connector kind must be linear, mlp, qformer or resampler, not {self.kind!r}")


class Connector(nn.Module):
    """[B, N, vision_width] image tokens -> [B, M, language_width] (M = N, or num_queries for query-based kinds)."""

    def __init__(self, config: ConnectorConfig, vision_width: int, language_width: int, grid: int) -> None:
        super().__init__()
        self.config = config
        kind = config.kind
        inner = config.width or vision_width
        if kind == "linear":
            self.net: nn.Module = nn.Linear(vision_width, language_width)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(vision_width, language_width), nn.GELU(),
                                     nn.Linear(language_width, language_width))
        else:
            self.queries = nn.Parameter(torch.randn(config.num_queries, inner) * inner**-0.5)
            self.input = nn.Linear(vision_width, inner) if inner != vision_width else nn.Identity()
            if kind == "qformer":
                self.blocks = Transformer(inner, config.layers, config.heads, cross_attention=True)
                init_transformer_(self.blocks, inner, config.layers)
            else:
                self.register_buffer("key_positions", sincos_2d(grid, inner), persistent=False)
                self.norm_queries = nn.LayerNorm(inner)
                self.norm_keys = nn.LayerNorm(inner)
                self.cross = CrossAttention(inner, config.heads)
            self.norm_out = nn.LayerNorm(inner)
            self.output = nn.Linear(inner, language_width)

    @property
    def num_tokens(self) -> int | None:
        """Output tokens per image, when fixed by the connector (query-based kinds)."""
        return self.config.num_queries if self.config.kind in ("qformer", "resampler") else None

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        kind = self.config.kind
        if kind in ("linear", "mlp"):
            return self.net(image_tokens)
        batch = image_tokens.shape[0]
        keys = self.input(image_tokens)
        queries = self.queries.to(keys.dtype).expand(batch, -1, -1)
        if kind == "qformer":
            queries = self.blocks(queries, context=keys)
        else:
            if keys.shape[1] == self.key_positions.shape[0] + 1:  # a class token: no grid position, drop it
                keys = keys[:, 1:]
            keys = self.norm_keys(keys + self.key_positions.to(keys.dtype))
            queries = queries + self.cross(self.norm_queries(queries), keys)
        return self.output(self.norm_out(queries))

"""Heads: projections into the shared embedding space and attention pooling."""
from __future__ import annotations

import torch
from torch import nn

from vlmkit.modules.transformer import attention


class ProjectionHead(nn.Module):
    """Maps pooled tower features [B, in] to embeddings [B, out]: ``linear`` (CLIP) or a 2-layer ``mlp``."""

    def __init__(self, in_features: int, out_features: int, kind: str = "linear", bias: bool = False) -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_features, out_features, bias=bias)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_features, in_features), nn.GELU(),
                                     nn.Linear(in_features, out_features, bias=bias))
        elif kind == "none":
            if in_features != out_features:
                raise ValueError(f"projection 'none' needs equal widths, got {in_features} -> {out_features}")
            self.net = nn.Identity()
        else:
            raise ValueError(f"unknown projection {kind!r}; choose linear, mlp or none")
        self.kind = kind
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=in_features**-0.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionPool(nn.Module):
    """Multi-head attention pooling with one learned query (SigLIP's "MAP" head). [B, L, W] -> [B, W]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, width = tokens.shape
        head_dim = width // self.heads
        q = self.q(self.query).expand(batch, -1, -1).view(batch, 1, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(tokens).view(batch, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        pooled = attention(q, k, v).transpose(1, 2).reshape(batch, width)
        return self.norm(self.out(pooled))

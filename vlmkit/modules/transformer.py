"""Pre-norm transformer blocks with attention through ``F.scaled_dot_product_attention``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """x · σ(1.702 x), the activation of OpenAI's CLIP checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    activations = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                   "quick_gelu": QuickGELU, "relu": nn.ReLU, "silu": nn.SiLU}
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(activations)}")
    return activations[name]()


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Input and output: [B, L, width]. ``key_padding_mask`` [B, L] is True for real tokens.
    """

    def __init__(self, width: int, heads: int, *, bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None
        if key_padding_mask is not None and not is_causal:
            attn_mask = key_padding_mask[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), is_causal=is_causal, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of pre-norm blocks. [B, L, width] -> [B, L, width]."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio, activation, norm_eps) for _ in range(layers)
        )

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, is_causal=is_causal, key_padding_mask=key_padding_mask)
        return x


def init_transformer_(transformer: Transformer, width: int, layers: int) -> None:
    """CLIP's initialisation: std width^-0.5 for attention in-proj, scaled by depth for the residual outputs."""
    proj_std = (width**-0.5) * ((2 * layers) ** -0.5)
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=attn_std)
        nn.init.normal_(block.attn.out.weight, std=proj_std)
        nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
        nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        for linear in (block.attn.qkv, block.attn.out, block.mlp.fc1, block.mlp.fc2):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

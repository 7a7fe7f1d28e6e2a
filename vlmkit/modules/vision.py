"""Vision transformer tower (ViT)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.modules.heads import AttentionPool
from vlmkit.modules.transformer import Transformer, init_transformer_


@dataclass
class VisionConfig:
    image_size: int = 64
    patch_size: int = 8
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    pool: str = "cls"  # cls | mean | attention | moments (mean + where each feature is: keeps the layout)
    norm_pre: bool = True  # CLIP normalises the token sequence before the blocks
    position_init: str = "random"  # random (CLIP) | sincos (2-D sine-cosine, still learned: faster from scratch)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool not in ("cls", "mean", "attention", "moments"):
            raise ValueError(f"vision pool must be cls, mean, attention or moments, not {self.pool!r}")
        if self.position_init not in ("random", "sincos"):
            raise ValueError(f"vision position_init must be random or sincos, not {self.position_init!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patch_coordinates(grid: int) -> torch.Tensor:
    """[grid * grid, 2] (column, row) of each patch in row-major order, centred and scaled to [-1, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def sincos_2d(grid: int, width: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes [grid * grid, width] in row-major patch order (as in MAE)."""
    if width % 4:
        raise ValueError(f"sincos positions need a width divisible by 4, got {width}")
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    frequencies = 1.0 / temperature ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4))
    angles_x = xs.flatten()[:, None] * frequencies[None]
    angles_y = ys.flatten()[:, None] * frequencies[None]
    return torch.cat([angles_x.sin(), angles_x.cos(), angles_y.sin(), angles_y.cos()], dim=1)


class VisionTransformer(nn.Module):
    """Images [B, 3, S, S] -> pooled features [B, width] and tokens [B, L, width].

    Patches are embedded by a strided convolution; a class token is prepended when pooling by ``cls``.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.has_class_token = config.pool == "cls"
        tokens = config.num_patches + int(self.has_class_token)
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if self.has_class_token else None
        self.positional_embedding = nn.Parameter(scale * torch.randn(tokens, width))
        if config.position_init == "sincos":
            with torch.no_grad():
                grid = config.image_size // config.patch_size
                self.positional_embedding[-config.num_patches:] = sincos_2d(grid, width)
        self.norm_pre = nn.LayerNorm(width, eps=config.norm_eps) if config.norm_pre else nn.Identity()
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, config.activation,
                                       config.norm_eps)
        self.norm_post = nn.LayerNorm(width, eps=config.norm_eps)
        self.attention_pool = AttentionPool(width, config.heads) if config.pool == "attention" else None
        self.moment_map = None
        if config.pool == "moments":  # zero at first: a mean-pooled tower given this pool computes what it did
            self.moment_map = nn.Linear(2 * width, width, bias=False)
            nn.init.zeros_(self.moment_map.weight)
            self.register_buffer("patch_coordinates", patch_coordinates(config.image_size // config.patch_size),
                                 persistent=False)
        init_transformer_(self.transformer, width, config.layers)

    @property
    def width(self) -> int:
        return self.config.width

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, L, width] after the final norm (L = patches, + 1 with a class token)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, P, W]
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.norm_pre(x + self.positional_embedding.to(x.dtype))
        x = self.transformer(x)
        return self.norm_post(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "cls":
            return tokens[:, 0]
        if self.config.pool == "mean":
            return tokens.mean(dim=1)
        if self.config.pool == "moments":
            # Mean pooling keeps what is in the image but not where: "a red circle left of a blue square" and its
            # mirror image pool alike. The first spatial moments (each token weighted by its centred column, and
            # by its row) keep where each feature is, and a learned map folds them into the pooled vector.
            assert self.moment_map is not None
            coordinates = self.patch_coordinates.to(tokens.dtype)
            moments = torch.einsum("blw,lc->bcw", tokens, coordinates) / tokens.shape[1]  # [B, 2, W]
            return tokens.mean(dim=1) + self.moment_map(moments.flatten(1))
        assert self.attention_pool is not None
        return self.attention_pool(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> pooled [B, width]."""
        return self.pool(self.forward_tokens(images))

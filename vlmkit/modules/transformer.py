"""Pre-norm transformer blocks with attention through ``F.scaled_dot_product_attention`` (:func:`attention`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# On CPU, the backward of PyTorch's bf16 attention kernel is slow: forward plus backward in fp32 takes half to a
# third of the time for sequences up to ~130 keys, and no more up to 256 (benchmarks/attention_cpu.py); past that,
# bf16 wins. Forward alone (inference) the bf16 kernel is as fast or faster, and the casts cost, so it is kept there.
CPU_FP32_ATTENTION_MAX_KEYS = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              is_causal: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` [B, H, Lq, Dh] in ``q``'s dtype. bf16 attention on CPU that
    autograd records, over at most :data:`CPU_FP32_ATTENTION_MAX_KEYS` keys, is computed in fp32 outside autocast:
    the same result, more precise, and faster to train (the small recipes' towers attend over 32-65 tokens)."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if training and q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] <= CPU_FP32_ATTENTION_MAX_KEYS:
        mask = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class QuickGELU(nn.Module):
    """x · σ(1.702 x), the activation of OpenAI's CLIP checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return x * torch.sigmoid(1.702 * x)
        return (1.702 * x).sigmoid_().mul_(x)  # the same values, one MLP-sized temporary instead of three


def add_residual(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``x + update``, where ``update`` is a block's freshly computed branch output (nothing else holds it).

    Without autograd the sum goes into ``update``'s memory: the same values, one activation-sized allocation
    fewer per residual. On CPU, large tensors come from fresh pages that are faulted in on first touch, and a
    ViT-B/32 forward pass spends measurable time there (benchmarks/README.md, embedding throughput).
    """
    if torch.is_grad_enabled() or update.dtype != x.dtype or update.shape != x.shape:
        return x + update
    return update.add_(x)


def make_activation(name: str) -> nn.Module:
    activations = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                   "quick_gelu": QuickGELU, "relu": nn.ReLU, "silu": nn.SiLU}
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(activations)}")
    return activations[name]()


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, rotate-half layout as in GPT-NeoX / Llama)."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inverse_frequencies", inverse, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids [B, L] -> (cos, sin), each [B, 1, L, head_dim], float32."""
        angles = positions.float()[..., None] * self.inverse_frequencies  # [B, L, D/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate queries or keys [B, H, L, D] by their positions' angles."""
    cos, sin = rotary
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LayerCache:
    """The keys and values one attention layer has seen so far ([B, H, T, D] each)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions; returns all keys and values."""
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        return self.keys, self.values  # type: ignore[return-value]


class KVCache:
    """One :class:`LayerCache` per block of a decoder, with batch-row selection for beam search."""

    def __init__(self, layers: int) -> None:
        self.layers = [LayerCache() for _ in range(layers)]

    @property
    def length(self) -> int:
        keys = self.layers[0].keys if self.layers else None
        return 0 if keys is None else keys.shape[2]

    def select(self, indices: torch.Tensor) -> "KVCache":
        selected = KVCache(len(self.layers))
        for source, target in zip(self.layers, selected.layers):
            if source.keys is not None:
                target.keys = source.keys.index_select(0, indices)
                target.values = source.values.index_select(0, indices)  # type: ignore[union-attr]
        return selected


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
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """``attn_mask`` [B, 1, Lq, Lk] (True = may attend) replaces ``is_causal``/``key_padding_mask`` when given;
        ``rotary`` rotates queries and keys; ``cache`` prepends the keys and values of earlier positions."""
        batch, length, width = x.shape
        head_dim = width // self.heads
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if cache is not None:
            k, v = cache.update(k, v)
        if attn_mask is None and key_padding_mask is not None and not is_causal:
            attn_mask = key_padding_mask[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries
        y = attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class CrossAttention(nn.Module):
    """Queries from the sequence [B, L, width], keys and values from a context [B, N, context_width]."""

    def __init__(self, width: int, heads: int, context_width: int | None = None, *, bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width, bias=bias)
        self.kv = nn.Linear(context_width or width, 2 * width, bias=bias)
        self.out = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.heads
        q = self.q(x).view(batch, length, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, context.shape[1], 2, self.heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = context_mask[:, None, None, :].bool() if context_mask is not None else None
        y = attention(q, k, v, attn_mask=mask)
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
    """x + attn(ln(x)), [x + cross_attn(ln(x), context),] then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 norm_eps: float = 1e-5, *, cross_attention: bool = False, context_width: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = SelfAttention(width, heads)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(width, eps=norm_eps)
            self.cross_attn = CrossAttention(width, heads, context_width)
        else:
            self.norm_cross, self.cross_attn = None, None
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: LayerCache | None = None, context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = add_residual(x, self.attn(self.norm1(x), is_causal=is_causal, key_padding_mask=key_padding_mask,
                                      attn_mask=attn_mask, rotary=rotary, cache=cache))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass the context (e.g. the image tokens)")
            x = add_residual(x, self.cross_attn(self.norm_cross(x), context, context_mask))
        return add_residual(x, self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of pre-norm blocks. [B, L, width] -> [B, L, width]."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 norm_eps: float = 1e-5, *, cross_attention: bool = False, context_width: int | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio, activation, norm_eps, cross_attention=cross_attention,
                             context_width=context_width) for _ in range(layers)
        )

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            x = block(x, is_causal=is_causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask, rotary=rotary,
                      cache=cache.layers[index] if cache is not None else None, context=context,
                      context_mask=context_mask)
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
        linears = [block.attn.qkv, block.attn.out, block.mlp.fc1, block.mlp.fc2]
        if block.cross_attn is not None:
            nn.init.normal_(block.cross_attn.q.weight, std=attn_std)
            nn.init.normal_(block.cross_attn.kv.weight, std=attn_std)
            nn.init.normal_(block.cross_attn.out.weight, std=proj_std)
            linears += [block.cross_attn.q, block.cross_attn.kv, block.cross_attn.out]
        for linear in linears:
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

"""Weight maps between native vlmkit CLIP models and the Hugging Face / open_clip CLIP layouts.

A map is a list of rules ``(native_key, external_key, layout)`` where ``{tower}`` and ``{i}`` stand for a tower's
blocks and ``layout`` says how the tensor changes on the way: ``same``, ``transposed`` (open_clip keeps projections
as ``[width, embed]`` matrices used as ``x @ proj``; native and Hugging Face use ``nn.Linear`` weights
``[embed, width]``) or ``qkv`` (Hugging Face keeps separate q, k and v projections; native and open_clip one fused
``[3 * width, width]`` projection in q, k, v order).
"""
from __future__ import annotations

import re
from typing import Iterable

import torch

Rule = tuple[str, str, str]

_BLOCK_PARTS = ("norm1", "attn.out", "norm2", "mlp.fc1", "mlp.fc2")
_HF_BLOCK = ("layer_norm1", "self_attn.out_proj", "layer_norm2", "mlp.fc1", "mlp.fc2")
_OPEN_CLIP_BLOCK = ("ln_1", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")


def _block_rules(native_prefix: str, external_prefix: str, external_parts: tuple[str, ...],
                 attention_rules: list[Rule]) -> list[Rule]:
    """Rules for every transformer block of one tower (``{i}`` = block index, ``{p}`` = weight or bias)."""
    rules = [(f"{native_prefix}.{{i}}.{native}.{{p}}", f"{external_prefix}.{{i}}.{external}.{{p}}", "same")
             for native, external in zip(_BLOCK_PARTS, external_parts)]
    rules += [(f"{native_prefix}.{{i}}.{native}", f"{external_prefix}.{{i}}.{external}", layout)
              for native, external, layout in attention_rules]
    return rules


_HF_ATTENTION = [("attn.qkv.{p}", "self_attn.{qkv}_proj.{p}", "qkv")]
_OPEN_CLIP_ATTENTION = [("attn.qkv.weight", "attn.in_proj_weight", "same"),
                        ("attn.qkv.bias", "attn.in_proj_bias", "same")]

HF_RULES: list[Rule] = [
    ("logit_scale", "logit_scale", "same"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", "same"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", "same"),
    ("visual.patch_embed.weight", "vision_model.embeddings.patch_embedding.weight", "same"),
    ("visual.norm_pre.{p}", "vision_model.pre_layrnorm.{p}", "same"),
    ("visual.norm_post.{p}", "vision_model.post_layernorm.{p}", "same"),
    ("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight", "same"),
    ("text.positional_embedding", "text_model.embeddings.position_embedding.weight", "same"),
    ("text.norm_final.{p}", "text_model.final_layer_norm.{p}", "same"),
    ("visual_projection.net.weight", "visual_projection.weight", "same"),
    ("text_projection.net.weight", "text_projection.weight", "same"),
    *_block_rules("visual.transformer.blocks", "vision_model.encoder.layers", _HF_BLOCK, _HF_ATTENTION),
    *_block_rules("text.transformer.blocks", "text_model.encoder.layers", _HF_BLOCK, _HF_ATTENTION),
]

OPEN_CLIP_RULES: list[Rule] = [
    ("logit_scale", "logit_scale", "same"),
    ("visual.class_embedding", "visual.class_embedding", "same"),
    ("visual.positional_embedding", "visual.positional_embedding", "same"),
    ("visual.patch_embed.weight", "visual.conv1.weight", "same"),
    ("visual.norm_pre.{p}", "visual.ln_pre.{p}", "same"),
    ("visual.norm_post.{p}", "visual.ln_post.{p}", "same"),
    ("text.token_embedding.weight", "token_embedding.weight", "same"),
    ("text.positional_embedding", "positional_embedding", "same"),
    ("text.norm_final.{p}", "ln_final.{p}", "same"),
    ("visual_projection.net.weight", "visual.proj", "transposed"),
    ("text_projection.net.weight", "text_projection", "transposed"),
    *_block_rules("visual.transformer.blocks", "visual.transformer.resblocks", _OPEN_CLIP_BLOCK,
                  _OPEN_CLIP_ATTENTION),
    *_block_rules("text.transformer.blocks", "transformer.resblocks", _OPEN_CLIP_BLOCK, _OPEN_CLIP_ATTENTION),
]

# Buffers the external libraries keep in their state dicts that carry no weights.
_IGNORED = re.compile(r"(^|\.)(position_ids|attn_mask)$")


def _pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    escaped = escaped.replace(r"\{qkv\}", r"(?P<qkv>[qkv])")
    return re.compile(f"^{escaped}$")


def _fill(template: str, groups: dict[str, str], qkv: str | None = None) -> str:
    out = template if qkv is None else template.replace("{qkv}", qkv)
    return out.replace("{i}", groups.get("i") or "").replace("{p}", groups.get("p") or "")


def to_native(external: dict[str, torch.Tensor], rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """External state dict -> native state dict. Every external tensor must be used (or be a known buffer)."""
    rules = list(rules)
    compiled = [(_pattern(ext), native, layout) for native, ext, layout in rules]
    native_state: dict[str, torch.Tensor] = {}
    pending_qkv: dict[str, dict[str, torch.Tensor]] = {}
    unused = []
    for key, tensor in external.items():
        for pattern, native, layout in compiled:
            match = pattern.match(key)
            if match is None:
                continue
            groups = match.groupdict()
            target = _fill(native, groups)
            if layout == "qkv":
                pending_qkv.setdefault(target, {})[groups["qkv"]] = tensor
            elif layout == "transposed":
                native_state[target] = tensor.t().contiguous()
            else:
                native_state[target] = tensor
            break
        else:
            if not _IGNORED.search(key):
                unused.append(key)
    if unused:
        raise ValueError(f"checkpoint tensors with no place in a native CLIP: {unused[:6]}"
                         f"{' ...' if len(unused) > 6 else ''}")
    for target, parts in pending_qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"checkpoint lacks some of q/k/v for {target}: has {sorted(parts)}")
        native_state[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return native_state


def from_native(native: dict[str, torch.Tensor], rules: Iterable[Rule]) -> dict[str, torch.Tensor]:
    """Native state dict -> external state dict (the inverse of :func:`to_native`)."""
    compiled = [(_pattern(native_key), ext, layout) for native_key, ext, layout in rules]
    external: dict[str, torch.Tensor] = {}
    for key, tensor in native.items():
        for pattern, ext, layout in compiled:
            match = pattern.match(key)
            if match is None:
                continue
            groups = match.groupdict()
            if layout == "qkv":
                for name, part in zip("qkv", tensor.chunk(3, dim=0)):
                    external[_fill(ext, groups, name)] = part.contiguous()
            elif layout == "transposed":
                external[_fill(ext, groups)] = tensor.t().contiguous()
            else:
                external[_fill(ext, groups)] = tensor
            break
        else:
            raise ValueError(f"native tensor {key!r} has no place in this checkpoint layout; only CLIP models with "
                             "cls pooling, linear projections and causal text can be exported")
    return external

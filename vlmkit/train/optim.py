"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def lr_scale_of(name: str, lr_scales: dict[str, float]) -> float:
    """The learning-rate multiplier of parameter ``name``: the entry of the longest module prefix that names it
    (``connector`` covers ``connector.net.0.weight``), else 1."""
    best, scale = -1, 1.0
    for prefix, value in lr_scales.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, scale = len(prefix), float(value)
    return scale


def parameter_groups(model: nn.Module, weight_decay: float,
                     lr_scales: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Decay tensors with 2+ dimensions (weights, embeddings); not biases, norms, temperature or bias scalars.
    Each group carries ``lr_scale``, its multiplier of the scheduled learning rate (``train.lr_scales``)."""
    lr_scales = dict(lr_scales or {})
    names = {name for name, _ in model.named_parameters()}
    unknown = [prefix for prefix in lr_scales
               if not any(n == prefix or n.startswith(prefix + ".") for n in names)]
    if unknown:
        top = sorted({name.split(".")[0] for name in names})
        raise ValueError(f"train.lr_scales names no parameters: {unknown}; the model's modules: {top}")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        groups.setdefault((parameter.ndim >= 2, lr_scale_of(name, lr_scales)), []).append(parameter)
    if not groups:
        return [{"params": [], "weight_decay": weight_decay, "lr_scale": 1.0}]
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))]


def build_optimizer(model: nn.Module, train_config: dict[str, Any]) -> torch.optim.AdamW:
    groups = parameter_groups(model, float(train_config["weight_decay"]), train_config.get("lr_scales"))
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters (is every tower frozen?)")
    betas = tuple(float(b) for b in train_config["betas"])
    return torch.optim.AdamW(groups, lr=float(train_config["lr"]), betas=betas,  # type: ignore[arg-type]
                             eps=float(train_config["eps"]))


def warmup_steps(train_config: dict[str, Any], total_steps: int | None) -> int:
    warmup = float(train_config["warmup"] or 0)
    if 0 < warmup < 1:
        if total_steps is None:
            raise ValueError("train.warmup as a fraction needs train.steps; give warmup in steps with a time budget")
        return int(round(warmup * total_steps))
    return int(warmup)


def learning_rate(step: int, total_steps: int, base_lr: float, warmup: int, min_lr: float = 0.0) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total_steps``.

    Step is 0-based; the schedule is applied before the step's forward pass (open_clip semantics).
    """
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled rate, times each group's ``lr_scale`` (per-module learning rates)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def phrase_warmup_steps(tcfg: dict[str, Any], total_steps: int | None) -> int | None:
    """The phrase warm-up's length: ``train.phrase_warmup`` in steps, or a fraction of ``total_steps`` (None while a
    time budget's schedule is still being fitted)."""
    warm = float(tcfg.get("phrase_warmup") or 0)
    if 0 < warm < 1:
        return None if total_steps is None else int(round(warm * total_steps))
    return int(warm)


def phrase_schedule(tcfg: dict[str, Any], step: int, total_steps: int | None, warmup: int,
                    phase_steps: int | None = None) -> tuple[dict[str, float], float]:
    """Phrase pre-training's loss weights and learning rate at ``step``. During the warm-up (``phase_steps``, by
    default :func:`phrase_warmup_steps`; while it is unknown the warm-up goes on) the phrase loss trains alone, its
    rate peaking at ``train.phrase_lr`` (default ``train.lr``); then the contrastive loss plus
    ``train.phrase_weight`` x the phrase loss at ``train.lr``. Each phase has its own schedule (linear warmup, cosine
    decay), so the contrastive phase starts at the full rate."""
    if phase_steps is None:
        phase_steps = phrase_warmup_steps(tcfg, total_steps)
    base, min_lr = float(tcfg["lr"]), float(tcfg.get("min_lr") or 0.0)
    if phase_steps is None or step < phase_steps:
        peak = float(tcfg.get("phrase_lr") or base)
        rate = learning_rate(step, phase_steps or 10**9, peak, warmup, min(min_lr, peak))
        return {"contrastive": 0.0, "phrase": 1.0}, rate
    rate = learning_rate(step - phase_steps, (total_steps or 10**9) - phase_steps, base, warmup, min_lr)
    return {"contrastive": 1.0, "phrase": float(tcfg.get("phrase_weight", 1.0))}, rate

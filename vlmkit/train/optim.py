"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay tensors with 2+ dimensions (weights, embeddings); not biases, norms, temperature or bias scalars."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train_config: dict[str, Any]) -> torch.optim.AdamW:
    groups = parameter_groups(model, float(train_config["weight_decay"]))
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
    for group in optimizer.param_groups:
        group["lr"] = lr

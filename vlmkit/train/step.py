"""One optimizer step of a model with ``forward(images, input_ids, mask) -> features`` and ``loss_from_features``.

Shared by the trainer and the throughput benchmark, so the benchmark measures exactly what training runs.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vlmkit.train.setup import autocast


def optimizer_step(trained: torch.nn.Module, model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                   accum: int, clip: float, precision: str, device: torch.device) -> tuple[float, dict[str, float]]:
    """One optimizer step over ``batch``, split into ``accum`` micro-batches.

    With accumulation, features of all micro-batches are first computed without gradient, then each
    micro-batch is recomputed with gradient against the cached others, so the loss sees every negative of
    the whole batch (open_clip's scheme), and the temperature gets its gradient once.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    images = batch["images"].to(device, dtype, non_blocking=True)
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    if accum == 1 or len(images) < accum:
        with autocast(precision, device):
            outputs = model.loss_from_features(trained(images, input_ids, mask))
        outputs["loss"].backward()
    else:
        chunks = list(zip(images.chunk(accum), input_ids.chunk(accum), mask.chunk(accum)))
        with torch.no_grad(), autocast(precision, device):
            cached = [trained(*chunk) for chunk in chunks]
        for index, chunk in enumerate(chunks):
            sync = index == len(chunks) - 1
            context = trained.no_sync() if (isinstance(trained, DistributedDataParallel) and not sync) \
                else nullcontext()
            with context:
                with autocast(precision, device):
                    fresh = trained(*chunk)
                    features = {key: torch.cat([fresh[key] if j == index else cached[j][key]
                                                for j in range(len(chunks))]) for key in fresh}
                    outputs = model.loss_from_features(features, temperature_grad=index == 0)
                outputs["loss"].backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    optimizer.step()
    if hasattr(model, "after_optimizer_step"):
        model.after_optimizer_step()
    logs = {key: float(value) for key, value in outputs.items() if key != "loss" and value.numel() == 1}
    return float(outputs["loss"].detach()), logs

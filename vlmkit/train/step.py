"""One optimizer step: contrastive models (``forward(images, input_ids, mask) -> features`` and
``loss_from_features``) accumulate with a feature cache; every other model's ``forward(batch)`` returns its loss dict.

Shared by the trainer and the throughput benchmark, so the benchmark measures exactly what training runs.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from vlmkit.train.setup import autocast


PER_SAMPLE_EXTRAS = ("phrase_targets", "caption_phrase_targets")
PER_NEGATIVE_EXTRAS = ("negative_phrase_targets",)  # one row per hard negative, split as the negatives are


def optimizer_step(trained: torch.nn.Module, model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                   accum: int, clip: float, precision: str, device: torch.device) -> tuple[float, dict[str, float]]:
    """One optimizer step over ``batch``, split into ``accum`` micro-batches."""
    optimizer.zero_grad(set_to_none=True)
    if hasattr(model, "loss_from_features"):
        outputs = _contrastive_backward(trained, model, batch, accum, precision, device)
    else:
        outputs = _generic_backward(trained, batch, accum, precision)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
    optimizer.step()
    if hasattr(model, "after_optimizer_step"):
        model.after_optimizer_step()
    logs = {key: float(value) for key, value in outputs.items() if key != "loss" and value.numel() == 1}
    return float(outputs["loss"].detach()), logs


def _contrastive_backward(trained: torch.nn.Module, model: Any, batch: dict[str, Any], accum: int, precision: str,
                          device: torch.device) -> dict[str, torch.Tensor]:
    """With accumulation, features of all micro-batches are first computed without gradient, then each
    micro-batch is recomputed with gradient against the cached others, so the loss sees every negative of
    the whole batch (open_clip's scheme), and the temperature gets its gradient once."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    images = batch["images"].to(device, dtype, non_blocking=True)
    texts = [batch["input_ids"].to(device, non_blocking=True), batch["attention_mask"].to(device, non_blocking=True)]
    negatives = [batch["negative_ids"].to(device), batch["negative_mask"].to(device)] if "negative_ids" in batch \
        else []
    # per-sample tensors passed by name (phrase pre-training's multi-hot targets), split with their samples
    extras = {key: batch[key].to(device) for key in PER_SAMPLE_EXTRAS if key in batch}
    negative_extras = {key: batch[key].to(device) for key in PER_NEGATIVE_EXTRAS if key in batch and negatives}
    if accum == 1 or len(images) < accum:
        with autocast(precision, device):
            outputs = model.loss_from_features(trained(images, *texts, *negatives, **extras, **negative_extras))
        outputs["loss"].backward()
    else:
        image_chunks = images.chunk(accum)
        sizes = [len(chunk) for chunk in image_chunks]
        chunks = [[chunk] for chunk in image_chunks]
        for tensor in texts:
            for chunk, part in zip(chunks, tensor.split(sizes)):
                chunk.append(part)
        named: list[dict[str, torch.Tensor]] = [{} for _ in chunks]
        for key, tensor in extras.items():
            for kw, part in zip(named, tensor.split(sizes)):
                kw[key] = part
        if negatives:  # a sample's hard negatives (and their targets) travel in its micro-batch
            counts = [int(part.sum()) for part in batch["negative_counts"].split(sizes)]
            for tensor in negatives:
                for chunk, part in zip(chunks, tensor.split(counts)):
                    chunk.append(part)
            for key, tensor in negative_extras.items():
                for kw, part in zip(named, tensor.split(counts)):
                    kw[key] = part
        with torch.no_grad(), autocast(precision, device):
            cached = [trained(*chunk, **kw) for chunk, kw in zip(chunks, named)]
        for index, chunk in enumerate(chunks):
            sync = index == len(chunks) - 1
            context = trained.no_sync() if (isinstance(trained, DistributedDataParallel) and not sync) \
                else nullcontext()
            with context:
                with autocast(precision, device):
                    fresh = trained(*chunk, **named[index])
                    features = {key: torch.cat([fresh[key] if j == index else cached[j][key]
                                                for j in range(len(chunks))]) for key in fresh}
                    outputs = model.loss_from_features(features, temperature_grad=index == 0)
                outputs["loss"].backward()
    return outputs


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """``parts`` micro-batches: tensors and lists with one entry per sample are split, anything else shared."""
    size = len(batch["images"])
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    micro = []
    for start, stop in zip(bounds, bounds[1:]):
        micro.append({key: value[start:stop] if isinstance(value, (torch.Tensor, list)) and len(value) == size
                      else value for key, value in batch.items()})
    return [part for part in micro if len(part["images"])]


def _generic_backward(trained: torch.nn.Module, batch: dict[str, Any], accum: int,
                      precision: str) -> dict[str, torch.Tensor]:
    """Mean of the micro-batches' losses; gradients synchronised once, after the last micro-batch."""
    parts = split_batch(batch, accum) if accum > 1 else [batch]
    device = next(trained.parameters()).device
    totals: dict[str, torch.Tensor] = {}
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        context = trained.no_sync() if isinstance(trained, DistributedDataParallel) and not last else nullcontext()
        with context:
            with autocast(precision, device):
                outputs = trained(part)
            (outputs["loss"] / len(parts)).backward()
        for key, value in outputs.items():
            totals[key] = totals.get(key, 0) + value.detach() / len(parts)
    return totals

"""Process-group helpers that are no-ops at world size 1.

Everything here works with or without ``torch.distributed`` being initialised, so losses and the trainer are
written once and run alike in one process or under ``torchrun``.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group when started by torchrun (gloo on CPU, nccl on CUDA).

    Returns True when a process group is (now) active.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def gather_sizes(local_size: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's batch size (batches may differ when bad samples were skipped)."""
    if world_size() == 1:
        return [local_size]
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local_size], dtype=torch.int64, device=device))
    return [int(size.item()) for size in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of [B_r, ...] tensors (B_r may differ by rank) whose backward sums every rank's gradient
    for this rank's slice. Backward uses all_reduce, which every backend (gloo included) supports."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        longest = max(sizes)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` [B_r, ...] from all ranks in rank order into [sum B_r, ...], keeping gradients.

    ``sizes`` (from :func:`gather_sizes`) saves a collective when the caller already knows them.
    At world size 1 this returns ``tensor`` unchanged.
    """
    if world_size() == 1:
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return _GatherWithGrad.apply(tensor, sizes)


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python float over ranks (for logging)."""
    if world_size() == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / world_size()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when it is true on any (each rank's clock and signals are its own; a decision to stop
    must be one, or a rank waits forever in the other's next collective)."""
    if world_size() == 1:
        return bool(flag)
    return all_reduce_sum_int(int(bool(flag)), device) > 0


def all_reduce_sum_int(value: int, device: torch.device | str = "cpu") -> int:
    if world_size() == 1:
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())

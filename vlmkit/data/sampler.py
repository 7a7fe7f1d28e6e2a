"""Deterministic, resumable batch order for training, identical whatever the number of processes.

Epoch ``e`` visits a permutation of the samples drawn from ``(seed, e)``; step ``k`` of the run takes the next
``global_batch`` indices of that order, and process ``r`` of ``W`` takes its contiguous ``global_batch / W``
slice. So one process with batch 2B sees exactly what two processes with batch B see together, and a run
resumed at step ``k`` continues with the batches an uninterrupted run would have had.
"""
from __future__ import annotations

from typing import Iterator

import torch


class ResumableBatchSampler:
    """Yields lists of indices ``epoch * num_samples + index`` (see :class:`EpochIndexed`) for steps
    ``start_step .. total_steps - 1``. The last incomplete batch of each epoch is dropped."""

    def __init__(self, num_samples: int, global_batch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, total_steps: int | None = None) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"the data has {num_samples} samples, fewer than one batch of {global_batch}: "
                             "lower train.batch_size or bring more data")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.total_steps = total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            for position in range(within, self.steps_per_epoch):
                if self.total_steps is not None and step >= self.total_steps:
                    return
                start = position * self.global_batch + self.rank * self.local_batch
                yield [epoch * self.num_samples + int(i) for i in order[start : start + self.local_batch]]
                step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless sampler has no length")
        return max(0, self.total_steps - self.start_step)


class EpochIndexed(torch.utils.data.Dataset):
    """Wraps a dataset with ``set_epoch``: index ``epoch * N + i`` loads sample ``i`` as seen in ``epoch``.

    The epoch travels inside the index, so DataLoader workers stay alive across epochs and every sample's
    random augmentation depends only on (seed, epoch, index).
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.num_samples = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        epoch, sample = divmod(int(index), self.num_samples)
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        return self.dataset[sample]

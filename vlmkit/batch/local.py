"""The local executor: decoding in DataLoader worker processes, the model in this process, a progress bar."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from vlmkit.batch.jobs import BatchJob, prepare_record
from vlmkit.batch.results import UnitAssembler
from vlmkit.batch.units import Record, WorkUnit
from vlmkit.data.decode import BadSample


class _Records(torch.utils.data.Dataset):
    """(unit index, row, record) triples; items come back prepared, or as their BadSample."""

    def __init__(self, entries: list[tuple[int, int, Record]], prepare: Callable) -> None:
        self.entries, self.prepare = entries, prepare

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[int, int, Any]:
        unit_index, row, record = self.entries[index]
        return unit_index, row, prepare_record(self.prepare, record)


def _as_list(items: list[Any]) -> list[Any]:
    return items


def run_local(job: BatchJob, todo: Sequence[tuple[int, WorkUnit]], assembler: UnitAssembler, *, workers: int = 0,
              progress: bool = True, on_bad_sample: str = "skip") -> None:
    """Run ``job`` over the units ``todo`` ((plan index, unit) pairs), handing every result to ``assembler``."""
    job.setup()
    entries = [(index, row, record) for index, unit in todo for row, record in enumerate(unit.records)]
    loader = torch.utils.data.DataLoader(_Records(entries, job.preparer()), batch_size=job.batch_size,
                                         num_workers=workers, collate_fn=_as_list,
                                         prefetch_factor=4 if workers > 0 else None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), desc="batch job", unit="img")
    try:
        for batch in loader:
            good = []
            for unit_index, row, item in batch:
                if isinstance(item, BadSample):
                    if on_bad_sample == "error":
                        raise item
                    assembler.add(unit_index, row, item)
                else:
                    good.append((unit_index, row, item))
            if good:
                outputs = job.run([prepared for _, _, (prepared, _) in good])
                for position, (unit_index, row, (_, meta)) in enumerate(good):
                    assembler.add(unit_index, row, {**meta, **{name: values[position]
                                                               for name, values in outputs.items()}})
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

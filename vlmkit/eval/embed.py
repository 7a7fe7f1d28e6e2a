"""Run a model's ``encode_image`` / ``encode_text`` over many samples in batches."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch

EVAL_PRECISIONS = ("fp32", "bf16-mixed")


def _autocast(model: Any, precision: str) -> Any:
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"evaluation precision must be one of {', '.join(EVAL_PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return nullcontext()
    device = getattr(model, "device", torch.device("cpu"))
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def embed_images(model: Any, samples: Sequence[Any], *, batch_size: int = 256, workers: int = 1,
                 precision: str = "fp32", on_bad_sample: str = "skip", report: Any = None,
                 progress: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Embed the images of ``samples`` with the model's own eval preprocessing.

    Returns embeddings [N_ok, D] (float32, on CPU) and the positions in ``samples`` that decoded; samples whose
    image could not be decoded are skipped and counted in ``report`` (a ``BadSampleReport``) when given.
    """
    from vlmkit.data import Collator, ImageTextDataset

    dataset = ImageTextDataset(list(samples), model.image_transform, on_bad_sample=on_bad_sample)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=Collator(None), shuffle=False)
    was_training = model.training
    model.eval()
    chunks, kept = [], []
    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="images", unit="batch", leave=False)
    for batch in iterator:
        if report is not None:
            report.update_from_batch(batch)
        if batch["images"] is None or len(batch["images"]) == 0:
            continue
        with _autocast(model, precision):
            chunks.append(model.encode_image(batch["images"]).float().cpu())
        kept.extend(int(i) for i in batch["indices"])
    model.train(was_training)
    if not chunks:
        raise ValueError("no image could be decoded: nothing to evaluate")
    return torch.cat(chunks), kept


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], *, batch_size: int = 256, precision: str = "fp32") -> torch.Tensor:
    """Texts -> [N, D] float32 embeddings on CPU, in batches."""
    was_training = getattr(model, "training", False)
    model.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        with _autocast(model, precision):
            chunks.append(model.encode_text(list(texts[start : start + batch_size])).float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)

"""Embed many images or texts in batches and write them as .npy (+ ids) or parquet."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vlmkit.capabilities import require
from vlmkit.data.decode import DEFAULT_MAX_PIXELS, BadSample, decode_image
from vlmkit.data.report import BadSampleReport
from vlmkit.data.shards import IMAGE_EXTENSIONS
from vlmkit.data.sources import ImageRef, detect_format, group_by_image, load_samples


@dataclass
class Embeddings:
    """``vectors[i]`` (float32, L2-normalised) is the embedding of ``ids[i]`` (an image path/key or a text)."""

    ids: list[str]
    vectors: np.ndarray
    report: BadSampleReport = field(default_factory=BadSampleReport)


def image_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, ImageRef]]:
    """(id, image) pairs from image files, folders of images, manifests (CSV/TSV/JSONL, COCO) or shards.

    A folder is read as a dataset when it holds a manifest or shards, else every image file in it is taken.
    Each image appears once, in input order.
    """
    pairs: list[tuple[str, ImageRef]] = []
    seen: set[tuple[str, int | None]] = set()
    for item in inputs:
        path = str(item)
        extension = os.path.splitext(path)[1].lower().lstrip(".")
        if os.path.isfile(path) and extension in IMAGE_EXTENSIONS:
            found = [(path, ImageRef(path))]
        else:
            if not os.path.exists(path) and "{" not in path and "*" not in path:
                raise FileNotFoundError(f"no such image, folder or manifest: {path}")
            samples = group_by_image(load_samples(path, fmt=detect_format(path)))
            found = [(sample.image.path if sample.image.offset is None else sample.key, sample.image)
                     for sample in samples]
        for identifier, ref in found:
            if (ref.path, ref.offset) not in seen:
                seen.add((ref.path, ref.offset))
                pairs.append((identifier, ref))
    if not pairs:
        raise ValueError("no images found in the inputs")
    return pairs


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes safely in worker processes; a bad image comes back as its BadSample reason."""

    def __init__(self, refs: list[ImageRef], transform: Any, max_pixels: int) -> None:
        self.refs, self.transform, self.max_pixels = refs, transform, max_pixels

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            image, _ = decode_image(self.refs[index].read(), max_pixels=self.max_pixels)
        except BadSample as bad:
            return index, bad
        return index, self.transform(image)


def _collate(items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return items


@torch.no_grad()
def embed_image_files(model: Any, inputs: Sequence[str | os.PathLike], *, batch_size: int = 64, workers: int = 0,
                      progress: bool = False, on_bad_sample: str = "skip",
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Embeddings:
    """Embed every image named by ``inputs`` (see :func:`image_inputs`) with the model's own preprocessing.

    Undecodable images are skipped and counted in the result's ``report`` (``on_bad_sample="error"`` raises).
    """
    require(model, "encode_image", "embed images")
    pairs = image_inputs(inputs)
    dataset = _ImageDataset([ref for _, ref in pairs], model.image_transform, max_pixels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    report = BadSampleReport()
    ids, chunks = [], []
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="embedding images", unit="batch")
    for batch in batches:
        good = []
        for index, item in batch:
            if isinstance(item, BadSample):
                if on_bad_sample == "error":
                    raise item
                report.skip(item.reason, key=pairs[index][0])
            else:
                good.append((index, item))
        if good:
            chunks.append(model.encode_image(torch.stack([tensor for _, tensor in good])).float().cpu())
            ids.extend(pairs[index][0] for index, _ in good)
    vectors = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    return Embeddings(ids, vectors, report)


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> Embeddings:
    """Embed texts in batches with the model's own tokenizer."""
    require(model, "encode_text", "embed texts")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="embedding texts", unit="batch")
    chunks = [model.encode_text(texts[start:start + batch_size]).float().cpu() for start in starts]
    return Embeddings(texts, torch.cat(chunks).numpy())


def read_texts(path: str | os.PathLike, column: str = "caption") -> list[str]:
    """Texts from a .txt file (one per line) or a CSV/TSV/JSONL manifest's ``column``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file: {path}")
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
        samples = load_samples(str(path), caption_key=column)
        return [caption for sample in samples for caption in sample.captions]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_embeddings(embeddings: Embeddings, out: str | os.PathLike) -> list[Path]:
    """``.npy``: the [N, D] float32 matrix plus ``<name>.ids.json`` (the ids in row order);
    ``.parquet``: one row per id with columns ``id`` and ``embedding``. Written atomically."""
    from vlmkit.files import atomic_path, atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        with atomic_path(out) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, embeddings.vectors.astype(np.float32))
        ids_path = out.with_suffix(".ids.json")
        atomic_write_text(ids_path, json.dumps(embeddings.ids, ensure_ascii=False) + "\n")
        return [out, ids_path]
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError("parquet output needs pyarrow: pip install pyarrow (or write .npy)") from error
        dim = embeddings.vectors.shape[1] if embeddings.vectors.ndim == 2 else 0
        column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.vectors.reshape(-1), pa.float32()), dim)
        table = pa.table({"id": pa.array(embeddings.ids, pa.string()), "embedding": column})
        with atomic_path(out) as temporary:
            pq.write_table(table, str(temporary))
        return [out]
    raise ValueError(f"{out}: write embeddings to a .npy or .parquet file")

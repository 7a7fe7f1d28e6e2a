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
from vlmkit.data.decode import DEFAULT_MAX_PIXELS
from vlmkit.data.report import BadSampleReport
from vlmkit.data.sources import load_samples


@dataclass
class Embeddings:
    """``vectors[i]`` (float32, L2-normalised) is the embedding of ``ids[i]`` (an image path/key or a text)."""

    ids: list[str]
    vectors: np.ndarray
    report: BadSampleReport = field(default_factory=BadSampleReport)


def embed_image_files(model: Any, inputs: Sequence[str | os.PathLike], *, batch_size: int = 64, workers: int = 0,
                      progress: bool = False, on_bad_sample: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS,
                      executor: str = "local", ray_address: str | None = None,
                      work_dir: str | os.PathLike | None = None) -> Embeddings:
    """Embed every image named by ``inputs`` (image files, folders, manifests or shards; each image once, in input
    order) with the model's own preprocessing, through the batch-job layer (:mod:`vlmkit.batch`).

    ``model`` is a loaded model, or a spec (folder, ``hf:ID``, ...) which ``executor="ray"`` needs. With
    ``work_dir`` the job is resumable there (run again after an interruption); without, a temporary folder is used.
    Undecodable images are skipped and counted in the result's ``report`` (``on_bad_sample="error"`` raises).
    """
    import tempfile

    from vlmkit.batch import EmbedImages, plan_units, read_results, run_job

    if not isinstance(model, (str, os.PathLike)):
        require(model, "encode_image", "embed images")
    units = plan_units(list(inputs))
    job = EmbedImages(model, batch_size=batch_size, max_pixels=max_pixels)
    with tempfile.TemporaryDirectory(prefix="vlmkit-embed-") as temporary:
        folder = Path(work_dir) if work_dir is not None else Path(temporary)
        run_job(job, units, folder, executor=executor, workers=workers, ray_address=ray_address,
                progress=progress, on_bad_sample=on_bad_sample)
        table = read_results(folder)
    report = BadSampleReport()
    for entry in table.bad:
        report.skip(entry["reason"], key=entry["id"])
    return Embeddings(table.ids, table.vectors, report)


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

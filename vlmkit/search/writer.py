"""Write a search index from vectors: create, add, remove. Every file is replaced atomically.

The order of each write keeps readers consistent when a write fails or the process dies part-way: ids are
reserved in SQLite first (never reused), then the FAISS file (and, for ivfpq, the exact vectors) is replaced,
then the metadata rows are committed, then ``index.json``. A hit only counts when its row is live in SQLite, so
vectors written without rows stay invisible, and a failed write leaves the previous index readable.
One writer at a time per index (a lock file serialises them); readers never block.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlmkit.files import atomic_path, atomic_write_text, temporary_path
from vlmkit.search import faiss_index
from vlmkit.search.index import (FORMAT, FORMAT_VERSION, INFO_NAME, META_NAME, REFINE_NAME, VECTORS_NAME,
                                 SearchIndex, read_info)
from vlmkit.search.store import MetadataStore

LOCK_NAME = ".write.lock"


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the index's write lock (blocks while another process writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checked_vectors(vectors: np.ndarray, rows: Sequence[dict], dim: int | None = None) -> np.ndarray:
    """``vectors`` as float32 [N, D], L2-normalised; checks one row per vector and the dimension."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"expected a non-empty [N, D] matrix of vectors, got shape {array.shape}")
    if len(rows) != len(array):
        raise ValueError(f"{len(array)} vectors but {len(rows)} metadata rows")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"vectors have dimension {array.shape[1]} but the index holds {dim}-dimensional "
                         "vectors; embed with the index's model")
    missing = [name for name in ("path", "sha256") if any(not row.get(name) for row in rows)]
    if missing:
        raise ValueError(f"every metadata row needs {' and '.join(missing)}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vectors must be finite and non-zero")
    return np.ascontiguousarray(array / norms)


def _write_info(folder: Path, info: dict, store: MetadataStore) -> None:
    info["count"], info["removed"] = store.counts()
    info["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(folder / INFO_NAME, json.dumps(info, indent=2) + "\n")


def _write_refine(folder: Path, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Write ``vectors.npy`` [ids[-1] + 1, D]: the old rows, zeros for ids never written, then ``vectors``."""
    path = folder / REFINE_NAME
    old = np.load(path, mmap_mode="r") if path.is_file() else np.zeros((0, vectors.shape[1]), np.float32)
    first = int(ids[0])
    with atomic_path(path) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(first + len(ids), old.shape[1]))
        for start in range(0, min(len(old), first), 65_536):
            out[start:min(start + 65_536, len(old), first)] = old[start:min(start + 65_536, len(old), first)]
        out[first:] = vectors
        out.flush()
        del out
    del old


def create_index(path: str | os.PathLike, model_spec: str, vectors: np.ndarray, rows: Sequence[dict], *,
                 index_type: str = "auto", flat_threshold: int = faiss_index.FLAT_THRESHOLD,
                 max_memory_mb: float = faiss_index.DEFAULT_MAX_MEMORY_MB, nlist: int | None = None,
                 nprobe: int = faiss_index.DEFAULT_NPROBE, refine_factor: int = faiss_index.DEFAULT_REFINE_FACTOR,
                 seed: int = 0, extra_info: dict | None = None) -> SearchIndex:
    """Write a new index folder from ``vectors`` [N, D] (embeddings of ``model_spec``) and one metadata row per
    vector (path, sha256, and optional key, caption, width, height, offset, size, unit, meta dict).

    ``index_type``: auto | flat | ivf | ivfpq or a FAISS factory string (see :mod:`vlmkit.search.faiss_index`
    for the auto rule, ``flat_threshold`` and ``max_memory_mb``). The folder may exist (e.g. holding a build's
    ``_work``) but must not already be an index.
    """
    folder = Path(path)
    if (folder / INFO_NAME).exists():
        raise FileExistsError(f"{folder} is already a search index; add images with `vlmkit index add` "
                              "or write to another folder")
    vectors = _checked_vectors(vectors, rows)
    plan = faiss_index.plan_index(len(vectors), vectors.shape[1], index_type, flat_threshold=flat_threshold,
                                  max_memory_mb=max_memory_mb, nlist=nlist, nprobe=nprobe,
                                  refine_factor=refine_factor)
    with writer_lock(folder):
        meta_temporary = temporary_path(folder / META_NAME)
        try:
            store = MetadataStore(meta_temporary, create=True)
            ids = store.reserve_ids(len(vectors))
            store.insert(ids, rows)
            index = faiss_index.new_index(plan, vectors.shape[1], vectors, seed=seed)
            faiss_index.add(index, vectors, ids)
            faiss_index.write(index, folder / VECTORS_NAME)
            if plan.kind == "ivfpq":
                _write_refine(folder, vectors, ids)
            store.close()
            os.replace(meta_temporary, folder / META_NAME)
        finally:
            meta_temporary.unlink(missing_ok=True)
        info = {"format": FORMAT, "version": FORMAT_VERSION, "model_spec": str(model_spec),
                "dim": int(vectors.shape[1]), "metric": "inner_product", "normalized": True, **plan.as_dict(),
                "flat_threshold": flat_threshold, "max_memory_mb": max_memory_mb,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra_info or {})}
        store = MetadataStore(folder / META_NAME)
        try:
            _write_info(folder, info, store)
        finally:
            store.close()
    return SearchIndex.open(folder)


def add_vectors(path: str | os.PathLike, vectors: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
    """Add ``vectors`` [N, D] and their metadata rows to an index; returns the new ids [N] int64.

    The index keeps its kind and trained lists (rebuild it when it has grown past its kind, see ``info``).
    """
    folder = Path(path)
    with writer_lock(folder):
        info = read_info(folder)
        vectors = _checked_vectors(vectors, rows, dim=int(info["dim"]))
        store = MetadataStore(folder / META_NAME)
        try:
            ids = store.reserve_ids(len(vectors))
            index = faiss_index.read(folder / VECTORS_NAME, info["kind"])
            if info["kind"] == "ivfpq":
                _write_refine(folder, vectors, ids)
            faiss_index.add(index, vectors, ids)
            faiss_index.write(index, folder / VECTORS_NAME)
            store.insert(ids, rows)
            _write_info(folder, info, store)
        finally:
            store.close()
    return ids


def remove_items(path: str | os.PathLike, ids: Sequence[int] | None = None,
                 paths: Sequence[str] | None = None) -> int:
    """Remove items by id and/or by stored path (a shard path removes all its members; relative paths are
    also tried as absolute). Returns how many live items were removed; unknown ones are ignored."""
    folder = Path(path)
    candidates = [str(p) for p in (paths or [])]
    candidates += [os.path.abspath(p) for p in candidates]
    with writer_lock(folder):
        info = read_info(folder)
        store = MetadataStore(folder / META_NAME)
        try:
            doomed = store.live_ids(ids or [], candidates)
            if len(doomed):
                store.tombstone(doomed)  # first: from here on no search returns them
                index = faiss_index.read(folder / VECTORS_NAME, info["kind"])
                if faiss_index.remove(index, doomed):
                    faiss_index.write(index, folder / VECTORS_NAME)
                _write_info(folder, info, store)
        finally:
            store.close()
    return len(doomed)


def describe(index: SearchIndex) -> dict[str, Any]:
    """What ``vlmkit index info`` prints: index.json plus live counts, file sizes and advice."""
    live, removed = index.store.counts()
    files = {name: (index.path / name).stat().st_size for name in (VECTORS_NAME, REFINE_NAME, META_NAME)
             if (index.path / name).is_file()}
    summary = {**index.info, "count": live, "removed": removed, "faiss_ntotal": int(index.index.ntotal),
               "file_bytes": files}
    flat_threshold = int(index.info.get("flat_threshold") or faiss_index.FLAT_THRESHOLD)
    if index.kind == "flat" and live >= flat_threshold:
        summary["advice"] = (f"{live} items in an exact flat index: rebuild with --index-type auto (IVF) "
                             "for faster searches")
    return summary

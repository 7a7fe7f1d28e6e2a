"""The FAISS side of a search index: choosing the index kind, training, adding, removing, reading and writing.

Kinds (all inner product on L2-normalised vectors, so a score is a cosine similarity):

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; the default below :data:`FLAT_THRESHOLD` vectors.
- ``ivf``: ``IVF{nlist},Flat`` (spherical k-means centroids, a hash-table direct map so vectors can be read back by
  id); ``nlist`` about 4·sqrt(N), searched with ``nprobe`` lists (default :data:`DEFAULT_NPROBE`).
- ``ivfpq``: ``IVF{nlist},PQ{m}x{bits}np`` for the coarse search plus exact re-ranking of the top
  ``refine_factor * k`` candidates against the float32 vectors kept on disk in ``vectors.npy`` (memory-mapped, so only
  the rows re-ranked are paged in): the RAM cost is the PQ codes, while recall stays close to IVF-Flat.
- ``custom``: any FAISS factory string (IVF indexes keep their own ids, others are wrapped in ``IndexIDMap2``).

``index_type="auto"`` picks ``flat`` below ``flat_threshold`` vectors, ``ivf`` above, and ``ivfpq`` when the flat
float32 vectors (N·D·4 bytes) would exceed ``max_memory_mb``.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vlmkit.files import atomic_path

FLAT_THRESHOLD = 50_000
DEFAULT_NPROBE = 32
DEFAULT_MAX_MEMORY_MB = 2048
DEFAULT_REFINE_FACTOR = 8
MAX_NLIST = 65_536
# Training points per IVF centroid (FAISS warns below 39) and the fewest vectors worth an IVF/PQ index.
POINTS_PER_CENTROID = 50
MIN_TRAIN_VECTORS = 1_000
KINDS = ("auto", "flat", "ivf", "ivfpq")


def import_faiss() -> Any:
    """The faiss module, or an ImportError that says what to install."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("the search index needs FAISS, a dependency of vlmkit: pip install faiss-cpu") from error
    return faiss


@dataclass
class IndexPlan:
    """What to build: ``kind`` (flat | ivf | ivfpq | custom), its FAISS ``factory`` string and parameters."""

    kind: str
    factory: str
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    refine_factor: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_nlist(num_vectors: int) -> int:
    """About 4·sqrt(N) lists, at most :data:`MAX_NLIST`, with at least 39 training points per list."""
    return max(1, min(MAX_NLIST, int(4 * math.sqrt(num_vectors)), num_vectors // 39))


def _pq_m(dim: int) -> int:
    """Sub-quantizers for PQ: the divisor of ``dim`` closest to dim/8 (8 dimensions, one byte, per code)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 8), -m))


def plan_index(num_vectors: int, dim: int, index_type: str = "auto", *, flat_threshold: int = FLAT_THRESHOLD,
               max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, nlist: int | None = None,
               nprobe: int = DEFAULT_NPROBE, refine_factor: int = DEFAULT_REFINE_FACTOR) -> IndexPlan:
    """Choose the index for ``num_vectors`` vectors of dimension ``dim`` (see the module docstring).

    ``index_type``: auto | flat | ivf | ivfpq, or a raw FAISS factory string such as ``"HNSW32,Flat"``.
    """
    if num_vectors < 1:
        raise ValueError("nothing to index: no vectors")
    kind = index_type
    if index_type == "auto":
        if num_vectors >= MIN_TRAIN_VECTORS and num_vectors * dim * 4 > max_memory_mb * 2**20:
            kind = "ivfpq"
        else:
            kind = "flat" if num_vectors < flat_threshold else "ivf"
    if kind == "flat":
        return IndexPlan("flat", "IDMap2,Flat")
    if kind in ("ivf", "ivfpq"):
        lists = min(nlist or default_nlist(num_vectors), num_vectors)
        if num_vectors < 39 * lists:
            raise ValueError(f"{kind} with {lists} lists needs at least {39 * lists} vectors to train "
                             f"(have {num_vectors}); use index_type='flat' or a smaller nlist")
        probes = max(1, min(nprobe, lists))
        if kind == "ivf":
            return IndexPlan("ivf", f"IVF{lists},Flat", nlist=lists, nprobe=probes)
        training = min(num_vectors, lists * POINTS_PER_CENTROID)
        bits = 8 if training >= 256 * 39 else max(4, int(math.log2(training / 39)))
        m = _pq_m(dim)
        # "np": no polysemous training, which FAISS's factory otherwise runs (10x the training time, unused here)
        return IndexPlan("ivfpq", f"IVF{lists},PQ{m}x{bits}np", nlist=lists, nprobe=probes, pq_m=m, pq_bits=bits,
                         refine_factor=refine_factor)
    faiss = import_faiss()
    try:
        probe = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"index type {index_type!r} is neither one of {', '.join(KINDS)} nor a FAISS factory "
                         f"string FAISS accepts ({str(error).strip().splitlines()[-1]})") from None
    ivf = faiss.try_extract_index_ivf(probe)
    return IndexPlan("custom", index_type, nlist=int(ivf.nlist) if ivf is not None else None,
                     nprobe=min(nprobe, int(ivf.nlist)) if ivf is not None else None)


def _is_top_level_ivf(faiss: Any, index: Any) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexIVF)


def new_index(plan: IndexPlan, dim: int, training_vectors: np.ndarray, *, seed: int = 0) -> Any:
    """An empty, trained FAISS index for ``plan``. ``training_vectors``: [N, D] float32 (a sample is used)."""
    faiss = import_faiss()
    if plan.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if not _is_top_level_ivf(faiss, index):
        index = faiss.IndexIDMap2(index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.spherical = True  # centroids on the unit sphere suit inner product on normalised vectors
        ivf.cp.seed = seed
    if not index.is_trained:
        count = len(training_vectors)
        limit = count if ivf is None else min(count, int(ivf.nlist) * POINTS_PER_CENTROID)
        rows = np.random.default_rng(seed).choice(count, size=limit, replace=False) if limit < count else None
        index.train(np.ascontiguousarray(training_vectors if rows is None else training_vectors[np.sort(rows)]))
    if _is_top_level_ivf(faiss, index):
        faiss.downcast_index(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def add(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add ``vectors`` [N, D] float32 under ``ids`` [N] int64."""
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove(index: Any, ids: np.ndarray) -> bool:
    """Remove ``ids`` from ``index``; False when this index type cannot remove (SQLite tombstones still apply)."""
    if len(ids) == 0:
        return True
    faiss = import_faiss()
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def write(index: Any, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` atomically (temporary name, fsync, rename)."""
    faiss = import_faiss()
    with atomic_path(path) as temporary:
        faiss.write_index(index, str(temporary))
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def read(path: str | os.PathLike, kind: str, *, mmap: bool = False) -> Any:
    """Read an index; ``mmap=True`` maps IVF lists (``IO_FLAG_MMAP``) or flat codes (``IO_FLAG_MMAP_IFC``)
    from the file instead of loading them, for serving large indexes (read only)."""
    faiss = import_faiss()
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP_IFC if kind == "flat" else faiss.IO_FLAG_MMAP
    return faiss.read_index(str(path), flags)


def search_parameters(index: Any, nprobe: int | None, selector: Any | None) -> Any:
    """Per-call search parameters (thread-safe, unlike setting ``index.nprobe``); None when there are none."""
    faiss = import_faiss()
    if _is_top_level_ivf(faiss, index):
        parameters = faiss.SearchParametersIVF()
        if nprobe is not None:
            parameters.nprobe = int(nprobe)
    elif selector is not None:
        parameters = faiss.SearchParameters()
    else:
        return None
    if selector is not None:
        parameters.sel = selector
    return parameters


def reconstruct(index: Any, ids: np.ndarray) -> np.ndarray:
    """The stored vectors [len(ids), D] for ``ids`` (exact for flat and IVF-Flat, decoded for compressed codes)."""
    if len(ids) == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    try:
        return index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
    except RuntimeError as error:
        raise ValueError(f"this index type cannot give back its vectors ({str(error).strip().splitlines()[-1]}); "
                         "build it with index_type flat, ivf or ivfpq to use this option") from None


"""A searchable image index on disk: FAISS vectors + SQLite metadata, opened with :meth:`SearchIndex.open`.

Layout of an index folder::

    INDEX/index.json      format version, model spec, dim, kind, factory string, nlist, nprobe, metric, counts
    INDEX/vectors.faiss   the FAISS index (ids = item ids)
    INDEX/vectors.npy     ivfpq only: the exact float32 vectors [next_id, D] (row = id) for re-ranking
    INDEX/meta.sqlite     one row per item (path, key, caption, width, height, sha256, shard offset/size)

``index.json`` is written last, so a folder without it is not (yet) an index. Build, add and remove live in
:mod:`vlmkit.search.writer` (vectors) and :mod:`vlmkit.search.build` (images through the batch-job layer).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmkit.search import faiss_index
from vlmkit.search.filters import compile_where
from vlmkit.search.store import MetadataStore

FORMAT = "vlmkit-search-index"
FORMAT_VERSION = 1
INFO_NAME, VECTORS_NAME, REFINE_NAME, META_NAME = "index.json", "vectors.faiss", "vectors.npy", "meta.sqlite"
# A filter matching at most this many items is scored exactly against each of them (IVF lists would miss some).
EXACT_SUBSET_LIMIT = 50_000
# collapse_duplicates: a hit this similar (cosine) to a better one is the same picture.
DUPLICATE_COSINE = 0.995


@dataclass
class Hit:
    """One search result: the item's id, its cosine ``score`` to the query, and its metadata."""

    id: int
    score: float
    path: str
    key: str
    caption: str | None
    width: int | None
    height: int | None
    sha256: str


def read_info(path: str | Path) -> dict:
    """The ``index.json`` of an index folder; a clear error when ``path`` is not one."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no search index at {folder}")
    info_path = folder / INFO_NAME
    if not folder.is_dir() or not info_path.is_file():
        raise ValueError(f"{folder} is not a search index (no {INFO_NAME}); build one with `vlmkit index build`")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{info_path} is not valid JSON ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{info_path} is not a vlmkit search index description (format is not {FORMAT!r})")
    if int(info.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer vlmkit (index format {info['version']}); upgrade vlmkit")
    for name in (VECTORS_NAME, META_NAME) + ((REFINE_NAME,) if info.get("kind") == "ivfpq" else ()):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is an incomplete search index: {name} is missing")
    return info


def as_queries(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Query vectors as a C-contiguous float32 [Q, D] array, L2-normalised (a single [D] vector is one query)."""
    queries = np.asarray(vectors, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"query vectors have shape {tuple(np.shape(vectors))}; this index holds {dim}-dimensional "
                         "vectors (give [Q, D]); was the query embedded with another model?")
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("query vectors must be finite and non-zero")
    return np.ascontiguousarray(queries / norms)


def _members(ids: np.ndarray, sorted_allowed: np.ndarray) -> np.ndarray:
    """Boolean mask [len(ids)]: which ids are in ``sorted_allowed`` (sorted int64)."""
    positions = np.searchsorted(sorted_allowed, ids).clip(0, max(len(sorted_allowed) - 1, 0))
    return (sorted_allowed[positions] == ids) if len(sorted_allowed) else np.zeros(len(ids), dtype=bool)


class SearchIndex:
    """Search an index folder by vector; ``where`` filters on metadata, duplicates can collapse.

    Safe to search from several threads. Writes (``add``/``remove``) go through :mod:`vlmkit.search.writer`.
    """

    def __init__(self, path: Path, info: dict, *, mmap: bool = False) -> None:
        self.path, self.mmap = Path(path), mmap
        self.store = MetadataStore(self.path / META_NAME)
        self._load(info)

    def _load(self, info: dict) -> None:
        self.info = info
        self.model_spec: str = info["model_spec"]
        self.dim: int = int(info["dim"])
        self.kind: str = info["kind"]
        self.nprobe: int | None = info.get("nprobe")
        self.refine_factor: int = int(info.get("refine_factor") or faiss_index.DEFAULT_REFINE_FACTOR)
        self.index = faiss_index.read(self.path / VECTORS_NAME, self.kind, mmap=self.mmap)
        self.refine = np.load(self.path / REFINE_NAME, mmap_mode="r") if self.kind == "ivfpq" else None

    @classmethod
    def open(cls, path: str | Path, *, mmap: bool = False) -> "SearchIndex":
        """Open an index folder; ``mmap=True`` maps the vectors from the file (IVF lists with
        ``faiss.IO_FLAG_MMAP``) instead of loading them, for serving a large index."""
        return cls(Path(path), read_info(path), mmap=mmap)

    def reload(self) -> None:
        """Re-read the index after another writer changed it."""
        self._load(read_info(self.path))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SearchIndex({str(self.path)!r}, kind={self.kind!r}, count={self.count}, dim={self.dim})"

    @property
    def count(self) -> int:
        """Live (not removed) items."""
        return self.store.counts()[0]

    def item(self, item_id: int) -> dict | None:
        """The metadata row of a live item (id, path, offset, size, key, caption, width, height, sha256, unit,
        meta), or None when the id is unknown or removed."""
        return self.store.item(item_id)

    def read_image_bytes(self, item_id: int) -> bytes:
        """The encoded bytes of an indexed image (a file, or a member of a tar shard), read from where the index
        recorded it. Raises KeyError for an unknown or removed id (no other path is ever read), and
        FileNotFoundError / OSError when the recorded file is gone or cut short since it was indexed."""
        from vlmkit.data.decode import BadSample
        from vlmkit.data.sources import ImageRef

        row = self.store.item(item_id)
        if row is None:
            raise KeyError(f"no item {item_id} in the index {self.path}")
        try:
            return ImageRef(row["path"], row["offset"], row["size"]).read()
        except BadSample as bad:
            error = FileNotFoundError if bad.reason == "missing_file" else OSError
            raise error(f"item {item_id}: {bad.detail or bad.reason}") from None

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors [len(ids), D] float32 of ``ids`` (exact for flat, ivf and ivfpq)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.refine is not None:
            return np.asarray(self.refine[ids], dtype=np.float32)
        return faiss_index.reconstruct(self.index, ids)

    def add(self, vectors: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
        """Add ``vectors`` [N, D] with their metadata rows; returns their ids [N] (see writer.add_vectors)."""
        from vlmkit.search.writer import add_vectors

        ids = add_vectors(self.path, vectors, rows)
        self.reload()
        return ids

    def remove(self, ids: Sequence[int] = (), paths: Sequence[str] = ()) -> int:
        """Remove items by id and/or stored path; returns how many live items were removed."""
        from vlmkit.search.writer import remove_items

        removed = remove_items(self.path, ids=ids, paths=paths)
        self.reload()
        return removed

    def search(self, vectors: np.ndarray, k: int = 10, *, where: list[str] | None = None,
               collapse_duplicates: bool = False, nprobe: int | None = None) -> list[list[Hit]]:
        """The ``k`` best items for each query, best first.

        Args:
            vectors: [Q, D] float32 query embeddings (L2-normalised here if they are not); score = cosine.
            where: filters such as ``["caption~dog", "width>=64"]`` (see :mod:`vlmkit.search.filters`), AND-ed;
                exact on flat indexes, and on any index when at most EXACT_SUBSET_LIMIT items match.
            collapse_duplicates: keep only the best of items with the same sha256 or near-identical vectors
                (cosine >= DUPLICATE_COSINE to a better hit); still k results when the index has them.
            nprobe: IVF lists to visit (default: the index's, 32).
        Returns:
            Q lists of at most ``k`` :class:`Hit`.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        queries = as_queries(vectors, self.dim)
        allowed = None
        if where:
            allowed = self.store.matching_ids(*compile_where(where, self.store.meta_keys()))
            if len(allowed) == 0:
                return [[] for _ in range(len(queries))]
        results: list[list[Hit] | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        fetch = k * 4 if collapse_duplicates else k + 8
        while pending:
            scores, labels, exhausted = self._candidates(queries[pending], fetch, allowed, nprobe or self.nprobe)
            still = []
            for row, query in enumerate(pending):
                hits = self._accept(scores[row], labels[row], k, allowed, collapse_duplicates)
                if len(hits) >= k or exhausted[row]:
                    results[query] = hits[:k]
                else:
                    still.append(query)
            pending, fetch = still, fetch * 4
        return [hits or [] for hits in results]

    def _candidates(self, queries: np.ndarray, fetch: int, allowed: np.ndarray | None,
                    nprobe: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores [Q, F], ids [Q, F] (best first, -1 = none) and exhausted [Q] bool (nothing more to fetch)."""
        if allowed is not None and self.kind != "flat" and len(allowed) <= EXACT_SUBSET_LIMIT:
            return self._exact_subset(queries, fetch, allowed)
        faiss = faiss_index.import_faiss()
        selector = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        parameters = faiss_index.search_parameters(self.index, nprobe, selector)
        total = int(self.index.ntotal)
        wanted = min(fetch * (self.refine_factor if self.refine is not None else 1), max(total, 1))
        scores, labels = self.index.search(queries, wanted, params=parameters)
        exhausted = ((labels >= 0).sum(axis=1) < wanted) | (wanted >= total)
        if self.refine is not None:
            scores, labels = self._rerank(queries, labels, fetch)
        return scores, labels, exhausted

    def _rerank(self, queries: np.ndarray, labels: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the PQ candidates against the float32 vectors; keeps the best ``fetch``."""
        exact = np.full(labels.shape, -np.inf, dtype=np.float32)
        for row in range(len(queries)):
            valid = labels[row] >= 0
            exact[row, valid] = self.vectors(labels[row, valid]) @ queries[row]
        order = np.argsort(-exact, axis=1, kind="stable")[:, :fetch]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(labels, order, axis=1)

    def _exact_subset(self, queries: np.ndarray, fetch: int,
                      allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Brute-force scores of every allowed item (a selective filter on an IVF index)."""
        chunks = [self.vectors(allowed[start:start + 16_384]) @ queries.T for start in range(0, len(allowed), 16_384)]
        scores = np.concatenate(chunks).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
        exhausted = np.full(len(queries), fetch >= len(allowed))
        return np.take_along_axis(scores, order, axis=1), allowed[order], exhausted

    def _accept(self, scores: np.ndarray, labels: np.ndarray, k: int, allowed: np.ndarray | None,
                collapse: bool) -> list[Hit]:
        """Hits among one query's candidates: live, allowed, and (with ``collapse``) not duplicates."""
        keep = labels >= 0
        if allowed is not None:
            keep &= _members(labels, allowed)
        labels, scores = labels[keep], scores[keep]
        rows = self.store.rows(labels)
        hits: list[Hit] = []
        seen_hashes: set[str] = set()
        kept_vectors: list[np.ndarray] = []
        candidate_vectors = self.vectors(labels) if collapse and len(labels) else None
        for position, (item_id, score) in enumerate(zip(labels.tolist(), scores.tolist())):
            row = rows.get(item_id)
            if row is None:
                continue
            if collapse:
                vector = candidate_vectors[position]
                if row["sha256"] in seen_hashes or (
                        kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) >= DUPLICATE_COSINE):
                    continue
                seen_hashes.add(row["sha256"])
                kept_vectors.append(vector)
            hits.append(Hit(id=item_id, score=float(score), path=row["path"], key=row["key"], caption=row["caption"],
                            width=row["width"], height=row["height"], sha256=row["sha256"]))
            if len(hits) == k:
                break
        return hits

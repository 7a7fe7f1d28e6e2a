"""Synthetic vectors and metadata rows for the search-index tests."""
from __future__ import annotations

import numpy as np


def clustered(count: int, dim: int = 32, clusters: int = 20, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """[count, dim] float32 unit vectors around ``clusters`` random centres (like image embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def rows_for(count: int, start: int = 0) -> list[dict]:
    """Metadata rows: captions alternate dog/cat, widths 10..., a distinct sha256 each."""
    return [{"path": f"/images/{start + i}.png", "key": f"item{start + i}",
             "caption": f"A {'Dog' if (start + i) % 2 else 'cat'} number {start + i}",
             "width": 10 + (start + i) % 50, "height": 20, "sha256": f"{start + i:064x}"} for i in range(count)]


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores [Q, k], row indices [Q, k]) by inner product."""
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def recall_at(found: list[list], truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids among the found hits."""
    return float(np.mean([len({hit.id for hit in hits} & set(row.tolist())) / len(row)
                          for hits, row in zip(found, truth)]))

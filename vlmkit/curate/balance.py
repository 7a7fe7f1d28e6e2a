"""Concept balancing on image embeddings: k-means (FAISS, fixed seed) with a cap per cluster, and DataComp's
image-based filter (keep samples whose nearest centroid is the nearest centroid of some reference-set image)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vlmkit.curate.dedup import import_faiss
from vlmkit.curate.stages import Drops, Stage, check_number
from vlmkit.curate.table import SampleTable


def kmeans_centroids(vectors: np.ndarray, clusters: int, *, seed: int, iterations: int) -> np.ndarray:
    """k-means centroids [K, D] of ``vectors`` [M, D] with FAISS (K = min(clusters, M); deterministic for a seed)."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = min(int(clusters), len(vectors))
    kmeans = faiss.Kmeans(vectors.shape[1], count, niter=int(iterations), seed=int(seed), verbose=False)
    kmeans.cp.min_points_per_centroid = 1  # small pools: no warning spam, the clustering is the same
    kmeans.train(vectors)
    return kmeans.centroids


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each vector's nearest centroid (L2): [M] int64."""
    faiss = import_faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, nearest = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return nearest[:, 0].astype(np.int64)


@dataclass
class _Clustering(Stage):
    clusters: int = 100
    seed: int = 0
    iterations: int = 20

    @property
    def needs_model(self) -> bool:
        return True

    def validate(self) -> None:
        check_number(self.name, "clusters", self.clusters, low=1, optional=False, integer=True)
        check_number(self.name, "seed", self.seed, low=0, optional=False, integer=True)
        check_number(self.name, "iterations", self.iterations, low=1, optional=False, integer=True)

    def assign(self, table: SampleTable, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centroids [K, D] fitted on the alive samples, the cluster of each of them [M])."""
        vectors = table.require_embeddings(self.name)[indices]
        centroids = kmeans_centroids(vectors, self.clusters, seed=self.seed, iterations=self.iterations)
        return centroids, nearest_centroid(vectors, centroids)


@dataclass
class ClusterBalance(_Clustering):
    """k-means on the alive samples' image embeddings; keep at most ``max_per_cluster`` per cluster (the first in
    input order), so over-represented concepts stop dominating the pool."""

    name = "cluster_balance"
    summary = "concept balancing (k-means, cap per cluster)"
    max_per_cluster: Optional[int] = None

    def validate(self) -> None:
        super().validate()
        check_number(self.name, "max_per_cluster", self.max_per_cluster, low=1, optional=False, integer=True)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        indices = np.flatnonzero(alive)
        if not len(indices):
            return {}
        _, assigned = self.assign(table, indices)
        seen = np.zeros(int(assigned.max()) + 1, np.int64)
        drops: Drops = {}
        for index, cluster in zip(indices, assigned):
            seen[cluster] += 1
            if seen[cluster] > self.max_per_cluster:
                drops[int(index)] = ("cluster_full", f"cluster {int(cluster)} already holds {self.max_per_cluster}")
        return drops


@dataclass
class ImageBasedFilter(_Clustering):
    """DataComp's image-based filter: k-means on the alive samples' image embeddings, then keep a sample only if
    its nearest centroid is the nearest centroid of some image of ``reference`` (DataComp: ImageNet-1k train)."""

    name = "image_based"
    summary = "image-based filter (clusters of a reference set)"
    reference: Optional[str] = None

    def validate(self) -> None:
        super().validate()
        if not self.reference or not isinstance(self.reference, str):
            raise ValueError(f"stage {self.name}: reference is required: the reference images (folder, manifest or "
                             "shards), e.g. --set image_based.reference=imagenet/train")

    def references(self) -> dict[str, str]:
        return {"reference": str(self.reference)}

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        indices = np.flatnonzero(alive)
        reference = references["reference"]
        good = np.flatnonzero(reference.decoded)
        if not len(good):
            raise ValueError(f"stage {self.name}: no image of the reference set {self.reference} could be decoded")
        if not len(indices):
            return {}
        centroids, assigned = self.assign(table, indices)
        wanted = set(nearest_centroid(reference.require_embeddings(self.name)[good], centroids).tolist())
        return {int(index): ("off_reference", f"cluster {int(cluster)} holds no reference image")
                for index, cluster in zip(indices, assigned) if int(cluster) not in wanted}

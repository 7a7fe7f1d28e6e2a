"""Deduplication (exact content hash, perceptual hash, near-duplicate embeddings via FAISS) and decontamination
against an evaluation set. Within the pool, the first sample in input order of each duplicate group is kept: a
sample is dropped when an earlier sample that was kept is its duplicate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vlmkit.curate.features import PHASH_BITS, hashes_as_bits
from vlmkit.curate.stages import Drops, Stage, check_number, format_value
from vlmkit.curate.table import SampleTable


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("this stage needs FAISS: pip install faiss-cpu (a dependency of vlmkit)") from error
    return faiss


def keep_first(lims: np.ndarray, labels: np.ndarray, values: np.ndarray) -> dict[int, tuple[int, float]]:
    """Greedy keep-first over a range-search result of M items against themselves (item order = input order):
    returns {duplicate: (the kept item it duplicates, their distance or similarity)}."""
    removed: dict[int, tuple[int, float]] = {}
    for item in range(len(lims) - 1):
        if item in removed:
            continue
        for position in range(lims[item], lims[item + 1]):
            other = int(labels[position])
            if other > item and other not in removed:
                removed[other] = (item, float(values[position]))
    return removed


def hash_neighbors(bits: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS range search of packed 64-bit hashes [M, 8] against themselves: pairs at Hamming distance <=
    ``max_distance``, as (lims [M + 1], distances, labels)."""
    faiss = import_faiss()
    index = faiss.IndexBinaryFlat(PHASH_BITS)
    index.add(np.ascontiguousarray(bits))
    lims, distances, labels = index.range_search(np.ascontiguousarray(bits), max_distance + 1)  # radius is strict
    return lims, distances, labels


def embedding_neighbors(vectors: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAISS range search of L2-normalised vectors [M, D] against themselves: pairs with cosine > ``min_similarity``."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index.range_search(vectors, float(min_similarity))


def _drops_from(alive_indices: np.ndarray, ids: list[str], removed: dict[int, tuple[int, float]], reason: str,
                describe: Any) -> Drops:
    return {int(alive_indices[item]): (reason, describe(ids[int(alive_indices[first])], value))
            for item, (first, value) in removed.items()}


@dataclass
class ExactDedup(Stage):
    """Drop samples whose image bytes have the same SHA-256 as an earlier kept sample's."""

    name = "exact_dedup"
    summary = "exact duplicates (content hash)"

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        hashes = table.column("sha256", self.name)
        first: dict[str, int] = {}
        drops: Drops = {}
        for index in np.flatnonzero(alive):
            earlier = first.setdefault(hashes[index], int(index))
            if earlier != index:
                drops[int(index)] = ("duplicate", f"same bytes as {table.ids[earlier]}")
        return drops


@dataclass
class PhashDedup(Stage):
    """Drop samples whose 64-bit perceptual hash is within ``max_distance`` bits of an earlier kept sample's."""

    name = "phash_dedup"
    summary = "near duplicates (perceptual hash)"
    max_distance: int = 4

    def validate(self) -> None:
        check_number(self.name, "max_distance", self.max_distance, low=0, high=PHASH_BITS, optional=False,
                     integer=True)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        indices = np.flatnonzero(alive)
        if not len(indices):
            return {}
        bits = hashes_as_bits(list(table.column("phash", self.name)[indices]))
        lims, distances, labels = hash_neighbors(bits, self.max_distance)
        removed = keep_first(lims, labels, distances)
        return _drops_from(indices, table.ids, removed, "near_duplicate",
                           lambda other, distance: f"pHash {int(distance)} bits from {other}")


@dataclass
class EmbeddingDedup(Stage):
    """Drop samples whose image embedding has cosine > ``min_similarity`` with an earlier kept sample's."""

    name = "embedding_dedup"
    summary = "near duplicates (image embeddings, FAISS)"
    min_similarity: float = 0.95

    @property
    def needs_model(self) -> bool:
        return True

    def validate(self) -> None:
        check_number(self.name, "min_similarity", self.min_similarity, low=-1.0, high=1.0, optional=False)

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        indices = np.flatnonzero(alive)
        if not len(indices):
            return {}
        vectors = table.require_embeddings(self.name)[indices]
        lims, similarities, labels = embedding_neighbors(vectors, self.min_similarity)
        removed = keep_first(lims, labels, similarities)
        return _drops_from(indices, table.ids, removed, "semantic_duplicate",
                           lambda other, similarity: f"cosine {format_value(similarity)} with {other}")


@dataclass
class Decontaminate(Stage):
    """Drop pool samples that duplicate an image of the evaluation set ``eval_set`` (a folder, manifest or shards):
    same bytes (``exact``), a perceptual hash within ``max_distance`` bits (None: off), or an image-embedding
    cosine of at least ``min_similarity`` (None: off; needs the pipeline's model)."""

    name = "decontaminate"
    summary = "near duplicates of an evaluation set"
    eval_set: Optional[str] = None
    exact: bool = True
    max_distance: Optional[int] = 4
    min_similarity: Optional[float] = None

    @property
    def needs_model(self) -> bool:
        return self.min_similarity is not None

    def validate(self) -> None:
        if not self.eval_set or not isinstance(self.eval_set, str):
            raise ValueError(f"stage {self.name}: eval_set is required: the evaluation images (folder, manifest or "
                             "shards), e.g. --set decontaminate.eval_set=data/val/shards")
        check_number(self.name, "max_distance", self.max_distance, low=0, high=PHASH_BITS, integer=True)
        check_number(self.name, "min_similarity", self.min_similarity, low=-1.0, high=1.0)
        if not self.exact and self.max_distance is None and self.min_similarity is None:
            raise ValueError(f"stage {self.name}: turn on at least one of exact, max_distance, min_similarity")

    def references(self) -> dict[str, str]:
        return {"eval_set": str(self.eval_set)}

    def decide(self, table: SampleTable, alive: np.ndarray, references: dict[str, SampleTable]) -> Drops:
        evaluation = references["eval_set"]
        good = np.flatnonzero(evaluation.decoded)
        indices = np.flatnonzero(alive)
        drops: Drops = {}
        if not len(good) or not len(indices):
            return drops
        eval_ids = [evaluation.ids[i] for i in good]
        if self.exact:
            by_hash = {evaluation.columns["sha256"][i]: evaluation.ids[i] for i in good}
            hashes = table.column("sha256", self.name)
            for index in indices:
                if hashes[index] in by_hash:
                    drops[int(index)] = ("contaminated", f"same bytes as eval image {by_hash[hashes[index]]}")
        faiss = import_faiss()
        if self.max_distance is not None:
            index = faiss.IndexBinaryFlat(PHASH_BITS)
            index.add(hashes_as_bits(list(evaluation.columns["phash"][good])))
            distances, nearest = index.search(hashes_as_bits(list(table.column("phash", self.name)[indices])), 1)
            for position in np.flatnonzero(distances[:, 0] <= self.max_distance):
                drops.setdefault(int(indices[position]), (
                    "contaminated", f"pHash {int(distances[position, 0])} bits from eval image "
                                    f"{eval_ids[int(nearest[position, 0])]}"))
        if self.min_similarity is not None:
            index = faiss.IndexFlatIP(evaluation.require_embeddings(self.name).shape[1])
            index.add(np.ascontiguousarray(evaluation.embeddings[good]))
            similarities, nearest = index.search(np.ascontiguousarray(table.require_embeddings(self.name)[indices]), 1)
            for position in np.flatnonzero(similarities[:, 0] >= self.min_similarity):
                drops.setdefault(int(indices[position]), (
                    "contaminated", f"cosine {format_value(float(similarities[position, 0]))} with eval image "
                                    f"{eval_ids[int(nearest[position, 0])]}"))
        return drops

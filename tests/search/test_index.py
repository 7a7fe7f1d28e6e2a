"""SearchIndex on plain vectors: exactness, IVF / IVF-PQ recall, mmap, open errors, custom factories."""
from __future__ import annotations

import json

import numpy as np
import pytest
from search_helpers import brute_force, clustered, recall_at, rows_for

from vlmkit.search import SearchIndex, create_index
from vlmkit.search.faiss_index import plan_index


@pytest.fixture(scope="module")
def data():
    vectors = clustered(3000, dim=32, seed=0)
    queries = clustered(40, dim=32, seed=1)
    return vectors, queries


@pytest.fixture(scope="module")
def flat(tmp_path_factory, data):
    return create_index(tmp_path_factory.mktemp("flat") / "index", "test-model", data[0], rows_for(len(data[0])))


@pytest.fixture(scope="module")
def ivf(tmp_path_factory, data):
    return create_index(tmp_path_factory.mktemp("ivf") / "index", "test-model", data[0], rows_for(len(data[0])),
                        flat_threshold=1000)


def test_flat_equals_brute_force_top_k(flat, data):
    vectors, queries = data
    assert flat.kind == "flat" and flat.count == 3000 and flat.dim == 32 and flat.model_spec == "test-model"
    scores, order = brute_force(vectors, queries, 10)
    results = flat.search(queries, k=10)
    assert [[hit.id for hit in hits] for hits in results] == order.tolist()
    np.testing.assert_allclose([[hit.score for hit in hits] for hits in results], scores, atol=1e-5)
    first = results[0][0]
    assert first.path == f"/images/{first.id}.png" and first.key == f"item{first.id}" and first.height == 20


def test_auto_picks_ivf_past_the_threshold_with_high_recall(ivf, data):
    vectors, queries = data
    info = json.loads((ivf.path / "index.json").read_text())
    assert ivf.kind == "ivf" and info["factory"].startswith("IVF") and info["nprobe"] == 32
    assert info["nlist"] == 3000 // 39  # 4*sqrt(N) = 219 is capped at 39 training points per list
    _, truth = brute_force(vectors, queries, 10)
    assert recall_at(ivf.search(queries, k=10), truth) >= 0.95
    assert recall_at(ivf.search(queries, k=10, nprobe=1), truth) < recall_at(ivf.search(queries, k=10), truth)


def test_ivfpq_with_exact_reranking_keeps_recall(tmp_path, data):
    vectors, queries = data
    index = create_index(tmp_path / "pq", "m", vectors, rows_for(len(vectors)), index_type="auto",
                         max_memory_mb=0.1)  # 3000 x 32 x 4 bytes = 0.37 MB > budget -> ivfpq
    assert index.kind == "ivfpq" and (tmp_path / "pq" / "vectors.npy").is_file()
    scores, truth = brute_force(vectors, queries, 10)
    results = index.search(queries, k=10)
    assert recall_at(results, truth) >= 0.95
    # re-ranked scores are exact cosines
    np.testing.assert_allclose([hit.score for hit in results[0]], vectors[[h.id for h in results[0]]] @ queries[0],
                               atol=1e-5)
    faiss_bytes = (tmp_path / "pq" / "vectors.faiss").stat().st_size
    assert faiss_bytes < vectors.nbytes / 2  # the PQ codes are much smaller than the float vectors


def test_mmap_open_gives_the_same_results(ivf, flat, data):
    queries = data[1]
    for index in (ivf, flat):
        mapped = SearchIndex.open(index.path, mmap=True)
        assert [[h.id for h in hits] for hits in mapped.search(queries, 5)] == \
               [[h.id for h in hits] for hits in index.search(queries, 5)]


def test_custom_factory_string_and_bad_one(tmp_path, data):
    vectors, queries = data
    index = create_index(tmp_path / "hnsw", "m", vectors[:500], rows_for(500), index_type="HNSW16,Flat")
    assert index.kind == "custom" and index.info["factory"] == "HNSW16,Flat"
    assert [hits[0].id for hits in index.search(vectors[[7, 99]], 1)] == [7, 99]  # HNSW is approximate
    with pytest.raises(ValueError, match="neither one of auto, flat, ivf, ivfpq nor a FAISS factory"):
        create_index(tmp_path / "bad", "m", vectors[:10], rows_for(10), index_type="NotAnIndex")


def test_plan_rules():
    assert plan_index(10, 16).kind == "flat"
    assert plan_index(60_000, 16).kind == "ivf"
    assert plan_index(60_000, 512, max_memory_mb=64).kind == "ivfpq"
    assert plan_index(60_000, 512, max_memory_mb=64).pq_m == 64
    with pytest.raises(ValueError, match="needs at least"):
        plan_index(100, 16, "ivf", nlist=10)


def test_open_errors_and_query_checks(tmp_path, flat):
    with pytest.raises(FileNotFoundError):
        SearchIndex.open(tmp_path / "absent")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a search index"):
        SearchIndex.open(tmp_path / "folder")
    with pytest.raises(ValueError, match="32-dimensional"):
        flat.search(np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="non-zero"):
        flat.search(np.zeros((1, 32), np.float32))
    with pytest.raises(FileExistsError, match="already a search index"):
        create_index(flat.path, "m", np.ones((1, 32)), rows_for(1))
    hits = flat.search(np.ones(32, np.float32) * 3, k=2)  # unnormalised single vector: normalised
    assert len(hits) == 1 and hits[0][0].score <= 1.0 + 1e-5

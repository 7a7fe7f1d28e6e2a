"""Filters (each operator, exactness, injection), duplicates, add/remove, atomic writes, image bytes."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from search_helpers import brute_force, clustered, rows_for

import vlmkit.search.faiss_index as faiss_index
from vlmkit.search import SearchIndex, create_index
from vlmkit.search.filters import compile_where
from vlmkit.search.store import MetadataStore

N = 1200


@pytest.fixture(scope="module")
def vectors():
    return clustered(N, dim=16, seed=3)


@pytest.fixture(params=["flat", "ivf"])
def index(request, tmp_path, vectors):
    rows = rows_for(N)
    rows[5]["meta"] = {"label": "zebra", "score": 7}
    rows[6]["meta"] = {"label": "horse", "score": 2}
    rows[7]["caption"] = "x' OR 1=1 --"
    return create_index(tmp_path / "index", "m", vectors, rows, index_type=request.param, nlist=8, nprobe=1)


def _ids(hits_lists):
    return [[hit.id for hit in hits] for hits in hits_lists]


@pytest.mark.parametrize("where, expected", [
    (["caption~DOG"], lambda r: "dog" in r["caption"].lower()),
    (["caption=A cat number 4"], lambda r: r["caption"] == "A cat number 4"),
    (["width>=55", "width<58"], lambda r: 55 <= r["width"] < 58),
    (["width>58"], lambda r: r["width"] > 58),
    (["width<=10"], lambda r: r["width"] <= 10),
    (["width!=10", "height=20", "path~/images/1"], lambda r: r["width"] != 10 and r["path"].startswith("/images/1")),
    (["sha256=" + f"{42:064x}"], lambda r: r["key"] == "item42"),
    (["key=item7"], lambda r: r["key"] == "item7"),
])
def test_filters_are_exact_against_brute_force(index, vectors, where, expected):
    rows = rows_for(N)
    rows[7]["caption"] = "x' OR 1=1 --"
    allowed = np.array([i for i, row in enumerate(rows) if expected(row)])
    queries = clustered(5, dim=16, seed=9)
    k = min(10, len(allowed))
    _, order = brute_force(vectors[allowed], queries, k)
    # nprobe=1 on the IVF index: a filtered search is still exact (it scores the matching items directly)
    assert _ids(index.search(queries, k=10, where=where)) == allowed[order].tolist()


def test_meta_keys_unknown_fields_and_bad_values(index, vectors):
    query = vectors[5:6]
    assert _ids(index.search(query, 5, where=["label=zebra"])) == [[5]]
    assert _ids(index.search(query, 5, where=["score>5"])) == [[5]]
    assert 5 not in _ids(index.search(query, 5, where=["label!=zebra"]))[0]
    assert len(index.search(query, 5, where=["label!=zebra"])[0]) == 5  # items without a label match !=
    with pytest.raises(ValueError, match=r"unknown filter field 'colour'.*caption.*label, score"):
        index.search(query, where=["colour=red"])
    with pytest.raises(ValueError, match="compares numbers"):
        index.search(query, where=["caption>3"])
    with pytest.raises(ValueError, match="not an integer"):
        index.search(query, where=["width=wide"])
    with pytest.raises(ValueError, match="cannot read the filter"):
        index.search(query, where=["just words"])
    assert index.search(query, 3, where=["caption=nothing like this"]) == [[]]


def test_injection_is_a_literal_value(index, vectors):
    hits = index.search(vectors[0:1], 10, where=["caption=x' OR 1=1 --"])
    assert _ids(hits) == [[7]]
    assert index.search(vectors[0:1], 10, where=['caption~"; DROP TABLE items; --']) == [[]]
    assert index.count == N
    sql, parameters = compile_where(["caption=x' OR 1=1 --"])
    assert "OR 1=1" not in sql and parameters == ["x' OR 1=1 --"]


def test_collapse_duplicates(tmp_path):
    base = clustered(60, dim=16, seed=4)
    near = base[0] + 0.001 * np.random.default_rng(0).standard_normal(16).astype(np.float32)
    vectors = np.vstack([base, base[0:1], near[None, :], base[1:2]])
    rows = rows_for(len(vectors))
    rows[60]["sha256"] = rows[0]["sha256"]  # same bytes as item 0
    rows[62]["sha256"] = rows[1]["sha256"]
    index = create_index(tmp_path / "dups", "m", vectors, rows)
    plain = _ids(index.search(base[0:1], 5))[0]
    assert {0, 60, 61} <= set(plain[:3])
    collapsed = index.search(base[0:1], 5, collapse_duplicates=True)[0]
    ids = [hit.id for hit in collapsed]
    assert len(ids) == 5 and len({0, 60, 61} & set(ids)) == 1 and len({hit.sha256 for hit in collapsed}) == 5
    assert len({1, 62} & set(_ids(index.search(base[1:2], 5, collapse_duplicates=True))[0])) == 1
    assert len(index.search(base[0:1], 100, collapse_duplicates=True)[0]) == 60  # every distinct item


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_add_and_remove_by_ids_and_paths(tmp_path, kind):
    vectors = clustered(1100, dim=16, seed=5)
    index = create_index(tmp_path / kind, "m", vectors[:1000], rows_for(1000), index_type=kind, nlist=8)
    new_ids = index.add(vectors[1000:], rows_for(100, start=1000))
    assert new_ids.tolist() == list(range(1000, 1100)) and index.count == 1100
    assert _ids(index.search(vectors[1050:1051], 1)) == [[1050]]
    assert index.remove(ids=[1050, 3, 99999]) == 2
    assert index.remove(paths=["/images/4.png", "/images/3.png"]) == 1
    assert index.count == 1097 and index.item(1050) is None and index.item(4) is None
    for item_id in (1050, 3, 4):
        found = _ids(index.search(vectors[item_id:item_id + 1], 50))[0]
        assert item_id not in found and len(found) == 50
    assert SearchIndex.open(index.path).info["removed"] == 3
    assert index.add(vectors[:1], rows_for(1)).tolist() == [1100]  # ids are never reused


def test_failed_faiss_write_leaves_the_old_index(tmp_path, monkeypatch, vectors):
    index = create_index(tmp_path / "index", "m", vectors[:100], rows_for(100))
    before = _ids(index.search(vectors[:3], 5))
    faiss = faiss_index.import_faiss()

    def broken_write(faiss_object, path):
        with open(path, "wb") as handle:
            handle.write(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        index.add(vectors[100:110], rows_for(10, start=100))
    monkeypatch.undo()
    reopened = SearchIndex.open(index.path)
    assert reopened.count == 100 and _ids(reopened.search(vectors[:3], 5)) == before
    assert not list(index.path.glob(".*.tmp"))


def test_rows_lost_after_faiss_write_stay_invisible(tmp_path, monkeypatch, vectors):
    index = create_index(tmp_path / "index", "m", vectors[:100], rows_for(100))

    def broken_insert(self, ids, rows):
        raise RuntimeError("killed")

    monkeypatch.setattr(MetadataStore, "insert", broken_insert)
    with pytest.raises(RuntimeError):
        index.add(vectors[100:110], rows_for(10, start=100))
    monkeypatch.undo()
    reopened = SearchIndex.open(index.path)
    assert reopened.count == 100 and reopened.index.ntotal == 110  # vectors without rows...
    assert all(hit.id < 100 for hit in reopened.search(vectors[100:101], 20)[0])  # ...are never hits
    assert reopened.add(vectors[100:101], rows_for(1, start=100)).tolist() == [110]


def test_read_image_bytes_files_shard_members_and_refusals(tmp_path, vectors):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG file bytes")
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("k0.png", b"first member"), ("k1.png", b"second member")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with tarfile.open(shard) as archive:
        member = archive.getmember("k1.png")
        offset, size = member.offset_data, member.size
    rows = [{"path": str(image), "key": str(image), "sha256": "a"},
            {"path": str(shard), "key": "k1", "offset": offset, "size": size, "sha256": "b"}]
    index = create_index(tmp_path / "index", "m", vectors[:2], rows)
    assert index.read_image_bytes(0) == b"\x89PNG file bytes"
    assert index.read_image_bytes(1) == b"second member"
    assert index.item(1)["offset"] == offset
    for unknown in (2, -1):
        with pytest.raises(KeyError):
            index.read_image_bytes(unknown)
    index.remove(ids=[0])
    with pytest.raises(KeyError):
        index.read_image_bytes(0)
    shard.write_bytes(shard.read_bytes()[:offset + 3])
    with pytest.raises(OSError, match="item 1"):
        index.read_image_bytes(1)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="no such file"):
        index.read_image_bytes(1)


def test_large_filters_go_through_the_faiss_selector_exactly(tmp_path, monkeypatch, vectors):
    import vlmkit.search.index as index_module

    index = create_index(tmp_path / "ivf", "m", vectors, rows_for(N), index_type="ivf", nlist=8)
    monkeypatch.setattr(index_module, "EXACT_SUBSET_LIMIT", 0)  # as if the filter matched millions
    allowed = np.array([i for i, row in enumerate(rows_for(N)) if "dog" in row["caption"].lower()])
    queries = clustered(5, dim=16, seed=11)
    _, order = brute_force(vectors[allowed], queries, 10)
    assert _ids(index.search(queries, 10, where=["caption~dog"], nprobe=8)) == allowed[order].tolist()


def test_tombstones_hold_on_an_index_type_that_cannot_remove(tmp_path, vectors):
    index = create_index(tmp_path / "hnsw", "m", vectors[:300], rows_for(300), index_type="HNSW16,Flat")
    assert index.remove(ids=list(range(0, 300, 2))) == 150
    assert index.index.ntotal == 300  # HNSW keeps the vectors; SQLite's tombstones hide them
    hits = index.search(vectors[:4], 20)
    assert all(len(row) == 20 and all(hit.id % 2 for hit in row) for row in hits)

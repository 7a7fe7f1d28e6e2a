"""Building an index from images with a tiny native CLIP: files, shards, bad images, add, model checks, resume."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import vlmkit.batch.results as batch_results
from vlmkit.batch import EmbedImages
from vlmkit.search import SearchIndex, add_to_index, build_index, remove_from_index, search_image, search_text

pytest.importorskip("pyarrow")


@pytest.fixture(scope="package")
def built(tmp_path_factory, scenes, clip_folder):
    return build_index(str(clip_folder), [scenes / "captions.csv"], tmp_path_factory.mktemp("built") / "index",
                       progress=False, batch_size=8)


def test_build_from_a_manifest_records_metadata_and_finds_each_image(built, scenes, clip_folder):
    assert built.count == 24 and built.dim == 16 and built.kind == "flat"
    assert built.model_spec == str(clip_folder.resolve())
    assert not (built.path / "_work").exists()
    row = built.item(0)
    data = open(row["path"], "rb").read()
    assert row["width"] == row["height"] == 32 and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert built.read_image_bytes(0) == data and row["caption"]
    hits = search_image(built, str(clip_folder), [row["path"]], k=3)[0]
    assert hits[0].id == 0 and hits[0].score == pytest.approx(1.0, abs=1e-4)
    text_hits = search_text(built, str(clip_folder), ["a red circle", "two blue squares"], k=5)
    assert [len(hits) for hits in text_hits] == [5, 5]
    assert search_text(built, str(clip_folder), "a red circle", k=30, where=["caption~circle"])[0]
    assert all("circle" in hit.caption.lower()
               for hit in search_text(built, str(clip_folder), "x", k=30, where=["caption~circle"])[0])


def test_other_model_is_refused_unless_allowed(built, tmp_path, clip_folder):
    other = shutil.copytree(clip_folder, tmp_path / "other-clip")
    with pytest.raises(ValueError, match="built with the model .*not comparable"):
        search_text(built, str(other), ["a red circle"])
    assert len(search_text(built, str(other), ["a red circle"], k=2, allow_other_model=True)[0]) == 2


def test_build_from_shards_reads_members_and_counts_bad_images(tmp_path, scenes, clip_folder):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sorted((scenes / "images").glob("*.png"))[0], folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    index = build_index(clip_folder, [scenes / "shards", folder], tmp_path / "index", progress=False)
    assert index.count == 25
    info = json.loads((index.path / "index.json").read_text())
    assert info["bad_samples"]["count"] == 1 and info["bad_samples"]["examples"][0]["id"].endswith("broken.png")
    member = next(row for row in index.store.rows(range(25)).values() if row["offset"] is not None)
    data = index.read_image_bytes(member["id"])
    assert hashlib.sha256(data).hexdigest() == member["sha256"] and member["path"].endswith(".tar")
    assert remove_from_index(index.path, paths=[member["path"]]) == 10  # a shard path removes its members
    with pytest.raises(ValueError, match="say what to remove"):
        remove_from_index(index.path)


def test_add_embeds_only_new_images(tmp_path, scenes, clip_folder):
    shards = sorted((scenes / "shards").glob("*.tar"))
    index = build_index(clip_folder, [shards[0]], tmp_path / "index", progress=False)
    assert index.count == 10
    index = add_to_index(index.path, [scenes / "shards"], progress=False)
    assert index.count == 24 and len({row["key"] for row in index.store.rows(range(24)).values()}) == 24
    assert add_to_index(index.path, [scenes / "shards"], progress=False).count == 24
    with pytest.raises(FileExistsError, match="already a search index"):
        build_index(clip_folder, [shards[0]], index.path, progress=False)


def test_interrupted_build_resumes_without_embedding_twice(tmp_path, monkeypatch, scenes, clip_folder):
    original = batch_results.WorkDir.write_unit
    calls = {"units": 0, "embedded": 0}

    def failing_after_first_unit(self, unit, results):
        calls["units"] += 1
        if calls["units"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, unit, results)

    monkeypatch.setattr(batch_results.WorkDir, "write_unit", failing_after_first_unit)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_index(clip_folder, [scenes / "captions.csv"], out, unit_size=8, batch_size=8, progress=False)
    assert not (out / "index.json").exists() and (out / "_work" / "build").is_dir()
    with pytest.raises(ValueError, match="not a search index"):
        SearchIndex.open(out)
    monkeypatch.setattr(batch_results.WorkDir, "write_unit", original)
    run = EmbedImages.run

    def counting_run(self, items):
        calls["embedded"] += len(items)
        return run(self, items)

    monkeypatch.setattr(EmbedImages, "run", counting_run)
    index = build_index(clip_folder, [scenes / "captions.csv"], out, unit_size=8, batch_size=8, progress=False)
    assert index.count == 24 and calls["embedded"] == 16  # the first unit of 8 was not embedded again


@pytest.mark.slow
def test_ray_build_gives_the_local_index(local_ray, tmp_path, scenes, clip_folder):
    remote = build_index(str(clip_folder), [scenes / "shards"], tmp_path / "ray", executor="ray", progress=False)
    local = build_index(str(clip_folder), [scenes / "shards"], tmp_path / "local", progress=False)
    assert remote.count == local.count == 24
    rows = remote.store.rows(range(24)), local.store.rows(range(24))
    assert [(r["key"], r["sha256"], r["offset"]) for r in rows[0].values()] == \
           [(r["key"], r["sha256"], r["offset"]) for r in rows[1].values()]
    import numpy as np

    np.testing.assert_allclose(remote.vectors(np.arange(24)), local.vectors(np.arange(24)), atol=1e-5)

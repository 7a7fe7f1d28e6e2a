"""The batch-job layer: plans, the local executor against direct embedding, bad input, resume, and the Ray
executor giving the same vectors and ids as the local one."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import vlmkit
from vlmkit.data.decode import decode_image
from vlmkit.batch import EmbedImages, WorkDir, plan_units, read_results, run_job


@pytest.fixture(scope="module")
def manifest_with_bad_images(tmp_path_factory, synth_data) -> Path:
    """A CSV of 20 scenes (two rows each) plus a corrupt file, a missing file and a repeated image."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    with open(synth_data / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:40]  # 20 images, two captions each
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for row in rows:
        row["image"] = str((synth_data / row["image"]).resolve()) if not Path(row["image"]).is_absolute() \
            else row["image"]
    rows += [{"image": str(folder / "corrupt.png"), "caption": "broken"},
             {"image": str(folder / "missing.png"), "caption": "gone"}, dict(rows[0])]
    path = folder / "items.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows({"image": row["image"], "caption": row["caption"]} for row in rows)
    return path


def test_shards_are_one_unit_each_and_manifests_are_cut(synth_data):
    shards = plan_units([synth_data / "shards"])
    assert [len(unit) for unit in shards] == [100, 100, 40]
    assert len({unit.name for unit in shards}) == 3 and all(r.offset is not None for r in shards[0].records)
    chunks = plan_units([synth_data / "captions.csv"], unit_size=64)
    assert [len(unit) for unit in chunks] == [64, 64, 64, 48]  # 240 images, each once although captioned twice
    assert len({record.id for unit in chunks for record in unit.records}) == 240
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plan_units(["nowhere/at-all.csv"])
    with pytest.raises(ValueError, match="unit_size"):
        plan_units([synth_data / "captions.csv"], unit_size=0)


def test_parquet_manifests_are_read(synth_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = sorted(str(path) for path in (synth_data / "images").glob("*.png"))[:5]
    pq.write_table(pa.table({"image_path": images, "caption": [f"c{i}" for i in range(5)]}), tmp_path / "m.parquet")
    (unit,) = plan_units([tmp_path / "m.parquet"])
    assert [record.path for record in unit.records] == images and unit.records[2].caption == "c2"
    pq.write_table(pa.table({"url": images}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="image path column"):
        plan_units([tmp_path / "bad.parquet"])


def test_local_executor_matches_direct_embedding(tiny_run, synth_data, tmp_path):
    units = plan_units([synth_data / "shards"])
    summary = run_job(EmbedImages(tiny_run, batch_size=32), units, tmp_path / "work", workers=1, progress=False)
    assert (summary.units_done, summary.units_skipped, summary.rows, summary.bad) == (3, 0, 240, 0)
    table = read_results(tmp_path / "work")
    model = vlmkit.load(tiny_run)
    records = [record for unit in units for record in unit.records]
    images = [decode_image(record.image.read())[0] for record in records]
    assert table.ids == [record.id for record in records]
    np.testing.assert_allclose(table.vectors, model.encode_image(images).numpy(), atol=1e-5)
    assert table.columns["width"][0] == 32 and len(table.columns["sha256"][0]) == 64
    assert table.columns["unit"][0] == units[0].name and table.columns["offset"][0] is not None


def test_bad_images_are_reported_not_lost(tiny_run, manifest_with_bad_images, tmp_path):
    units = plan_units([manifest_with_bad_images], unit_size=8)
    assert sum(map(len, units)) == 22  # the repeated image is one record
    summary = run_job(EmbedImages(tiny_run), units, tmp_path / "work", progress=False)
    assert (summary.rows, summary.bad) == (20, 2)
    assert summary.bad_reasons == {"corrupt_image": 1, "missing_file": 1}
    table = read_results(tmp_path / "work")
    assert len(table) == 20 and {entry["reason"] for entry in table.bad} == {"corrupt_image", "missing_file"}
    assert all(entry["id"].endswith((".png",)) for entry in table.bad)
    with pytest.raises(vlmkit.data.decode.BadSample, match="corrupt_image|missing_file"):
        run_job(EmbedImages(tiny_run), units, tmp_path / "strict", progress=False, on_bad_sample="error")


def test_interrupted_job_resumes_without_embedding_twice(tiny_run, synth_data, tmp_path, monkeypatch):
    units = plan_units([synth_data / "captions.csv"], unit_size=100)
    original = WorkDir.write_unit

    def die_after_first(self, unit, results):
        counts = original(self, unit, results)
        raise KeyboardInterrupt("stopped after the first unit")

    monkeypatch.setattr(WorkDir, "write_unit", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_job(EmbedImages(tiny_run, batch_size=50), units, tmp_path / "work", progress=False)
    monkeypatch.setattr(WorkDir, "write_unit", original)
    with pytest.raises(ValueError, match="not finished: 1 of 3"):
        read_results(tmp_path / "work")

    job = EmbedImages(tiny_run, batch_size=50)
    embedded = []
    run = job.run
    monkeypatch.setattr(job, "run", lambda items: embedded.append(len(items)) or run(items))
    summary = run_job(job, units, tmp_path / "work", progress=False)
    assert (summary.units_skipped, summary.units_done, sum(embedded)) == (1, 2, 140)
    resumed = read_results(tmp_path / "work")
    fresh_summary = run_job(EmbedImages(tiny_run, batch_size=50), units, tmp_path / "fresh", progress=False)
    fresh = read_results(tmp_path / "fresh")
    assert fresh_summary.rows == 240 and resumed.ids == fresh.ids
    np.testing.assert_allclose(resumed.vectors, fresh.vectors, atol=1e-6)
    again = run_job(EmbedImages(tiny_run), units, tmp_path / "work", progress=False)
    assert (again.units_done, again.units_skipped) == (0, 3)


def test_a_work_folder_refuses_other_inputs_or_jobs(tiny_run, synth_data, tmp_path):
    units = plan_units([synth_data / "captions.csv"], unit_size=120)
    run_job(EmbedImages(tiny_run), units, tmp_path / "work", progress=False)
    with pytest.raises(ValueError, match="other inputs"):
        run_job(EmbedImages(tiny_run), units[:1], tmp_path / "work", progress=False)
    with pytest.raises(ValueError, match="another job"):
        run_job(EmbedImages(tiny_run, max_pixels=10), units, tmp_path / "work", progress=False)
    with pytest.raises(ValueError, match="executor"):
        run_job(EmbedImages(tiny_run), units, tmp_path / "work", executor="spark")
    assert json.loads((tmp_path / "work" / "job.json").read_text())["records"] == 240


def test_a_loaded_model_cannot_go_to_other_processes(tiny_run):
    import pickle

    with pytest.raises(ValueError, match="folder or spec"):
        pickle.dumps(EmbedImages(vlmkit.load(tiny_run)))


def test_ray_executor_gives_the_local_vectors_and_ids(local_ray, tiny_run, synth_data, manifest_with_bad_images,
                                                      tmp_path):
    units = plan_units([synth_data / "shards", manifest_with_bad_images])
    local = run_job(EmbedImages(tiny_run, batch_size=32), units, tmp_path / "local", progress=False)
    remote = run_job(EmbedImages(tiny_run, batch_size=32), units, tmp_path / "ray", executor="ray", progress=False)
    assert remote.pool["actors"] == 1 and remote.pool["threads_per_actor"] == 2  # 2 CPUs: 1 actor, 2 threads
    assert (remote.rows, remote.bad, remote.bad_reasons) == (local.rows, local.bad, local.bad_reasons)
    local_table, ray_table = read_results(tmp_path / "local"), read_results(tmp_path / "ray")
    assert ray_table.ids == local_table.ids and len(ray_table) == 260
    np.testing.assert_allclose(ray_table.vectors, local_table.vectors, atol=1e-5)
    assert ray_table.columns["sha256"] == local_table.columns["sha256"]
    assert [entry["id"] for entry in ray_table.bad] == [entry["id"] for entry in local_table.bad]

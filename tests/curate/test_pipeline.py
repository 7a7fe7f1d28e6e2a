"""The whole pipeline on a small noisy pool: outputs, nothing dropped silently, resume, bad input, the model stages,
the CLI, and the Ray executor giving the local executor's decisions."""
from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pytest

from vlmkit.batch.results import WorkDir
from vlmkit.curate import curate, pipeline_from_dict

TEXT_AND_IMAGE = {"stages": [
    "caption_length", "boilerplate", "repeated_chars", {"language": {"languages": ["en"]}},
    {"image_size": {"min_side": 24, "max_aspect": 3.0}}, "exact_dedup", {"phash_dedup": {"max_distance": 0}}]}
WITH_MODEL = {"stages": [
    "caption_length", {"language": {"languages": ["en"]}}, {"image_size": {"min_side": 24}}, "exact_dedup",
    {"embedding_dedup": {"min_similarity": 0.999}}, {"clip_score": {"top_fraction": 0.6}},
    {"cluster_balance": {"clusters": 4, "max_per_cluster": 25, "seed": 1}}]}


def test_pipeline_without_a_model_writes_shards_table_and_report(noisy_pool, tmp_path):
    import pyarrow.parquet as pq

    from vlmkit.data import load_samples

    result = curate([noisy_pool["shards"][0], noisy_pool["shards"][1]], tmp_path / "out",
                    pipeline_from_dict(TEXT_AND_IMAGE), progress=False)
    labels = noisy_pool["labels"]
    by_stage = {name: {labels[i] for i, d in zip(result.table.ids, result.decisions.dropped_by) if d == name}
                for name in ("decodable", "caption_length", "boilerplate", "language", "image_size", "exact_dedup")}
    assert by_stage["decodable"] == {"corrupt"} and by_stage["caption_length"] == {"short"}
    assert by_stage["boilerplate"] == {"boilerplate"} and by_stage["image_size"] == {"bad_size"}
    assert by_stage["exact_dedup"] == {"duplicate"} and "foreign" in by_stage["language"]
    assert {labels[i] for i in result.kept_ids} <= {"clean", "mismatched", "near_duplicate", "foreign"}

    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    assert [row["id"] for row in rows] == result.table.ids and len(rows) == 160
    for row in rows:  # nothing dropped silently
        assert row["kept"] == (row["dropped_by"] is None) and (row["kept"] or row["reason"]) and "words" in row
    corrupt = [row for row in rows if labels[row["id"]] == "corrupt"]
    assert {row["reason"] for row in corrupt} <= {"corrupt_image", "truncated_image"} and not corrupt[0]["decoded"]

    shards = sorted((tmp_path / "out" / "shards").glob("curated-*.tar"))
    assert [path.name for path in shards] == ["curated-00000.tar"]
    samples = load_samples(str(shards[0]))
    kept_rows = [row for row in rows if row["kept"]]
    assert [sample.captions[0] for sample in samples] == [row["caption"] for row in kept_rows]
    with tarfile.open(shards[0]) as archive:
        meta = json.loads(archive.extractfile(f"{kept_rows[0]['key']}.json").read())
    assert meta["id"] == kept_rows[0]["id"] and meta["sha256"] == kept_rows[0]["sha256"]

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["total"] == 160 and report["kept"] == len(result.kept_ids)
    assert sum(stage["dropped"] for stage in report["stages"]) == report["dropped"]
    language = next(stage for stage in report["stages"] if stage["stage"] == "language")
    assert (tmp_path / "out" / language["histogram"]).is_file()
    assert (tmp_path / "out" / language["examples"]["language"]).is_file()
    assert "Curation report" in (tmp_path / "out" / "report.html").read_text()


def test_an_interrupted_pass_resumes_per_shard(noisy_pool, tmp_path, monkeypatch):
    pipeline = pipeline_from_dict(TEXT_AND_IMAGE)
    original = WorkDir.write_unit

    def die_after_first(self, unit, results):
        original(self, unit, results)
        raise KeyboardInterrupt("stopped after one shard")

    monkeypatch.setattr(WorkDir, "write_unit", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        curate(noisy_pool["shards"], tmp_path / "out", pipeline, progress=False)
    monkeypatch.setattr(WorkDir, "write_unit", original)
    resumed = curate(noisy_pool["shards"], tmp_path / "out", pipeline, progress=False, report_images=False)
    assert (resumed.report["pass1"]["units_resumed"], resumed.report["pass1"]["units_done"]) == (1, 1)
    fresh = curate(noisy_pool["shards"], tmp_path / "fresh", pipeline, progress=False, report_images=False)
    assert resumed.kept_ids == fresh.kept_ids and list(resumed.decisions.reason) == list(fresh.decisions.reason)
    assert (tmp_path / "out" / "shards" / "curated-00000.tar").read_bytes() == \
        (tmp_path / "fresh" / "shards" / "curated-00000.tar").read_bytes()
    again = curate(noisy_pool["shards"], tmp_path / "out", pipeline, progress=False, report_images=False)
    assert again.report["pass1"]["units_done"] == 0 and again.kept_ids == fresh.kept_ids


def test_bad_input_is_reported_or_refused(noisy_pool, synth_data, tmp_path):
    with open(synth_data / "captions.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle)][:10:2]
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    rows += [{"image": str(tmp_path / "broken.png"), "caption": "a broken file here"},
             {"image": str(tmp_path / "gone.png"), "caption": "a missing file here"}]
    manifest = tmp_path / "items.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        for row in rows:
            image = row["image"] if row["image"].startswith("/") else str(synth_data / row["image"])
            writer.writerow({"image": image, "caption": row["caption"]})
    result = curate([manifest], tmp_path / "out", pipeline_from_dict({"stages": ["exact_dedup"]}), progress=False)
    assert list(result.decisions.reason[-2:]) == ["corrupt_image", "missing_file"]
    assert result.decisions.kept.sum() == 5
    with pytest.raises(FileNotFoundError, match="nowhere"):
        curate([tmp_path / "nowhere.csv"], tmp_path / "x", pipeline_from_dict({"stages": ["exact_dedup"]}))
    with pytest.raises(ValueError, match="clip_score need a contrastive model"):
        curate(noisy_pool["shards"], tmp_path / "y",
               pipeline_from_dict({"stages": [{"clip_score": {"threshold": 0.2}}]}))


def test_model_stages_score_embed_and_balance(noisy_pool, tiny_run, tmp_path):
    import pyarrow.parquet as pq

    result = curate(noisy_pool["shards"], tmp_path / "out", pipeline_from_dict(WITH_MODEL), model=tiny_run,
                    batch_size=32, progress=False, report_images=False)
    table = result.table
    scores = table.columns["clip_score"][table.decoded]
    assert np.all(np.isfinite(scores)) and np.all(np.abs(scores) <= 1.0001) and scores.std() > 0
    assert table.embeddings.shape == (160, 16)
    np.testing.assert_allclose(np.linalg.norm(table.embeddings[table.decoded], axis=1), 1.0, atol=1e-4)
    counts = {stage["stage"]: stage for stage in result.report["stages"]}
    alive = counts["clip_score"]["input"]
    assert counts["clip_score"]["kept"] == round(0.6 * alive)
    assert counts["cluster_balance"]["kept"] <= 4 * 25
    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    low = [row for row in rows if row["dropped_by"] == "clip_score"]
    kept_scores = [row["clip_score"] for row in rows if row["kept"]]
    assert low and max(row["clip_score"] for row in low) <= min(kept_scores)
    # the model's own direct CLIP score of one sample agrees with pass 1's
    import vlmkit
    from vlmkit.data.decode import decode_image
    from vlmkit.data.sources import ImageRef

    model = vlmkit.load(tiny_run)
    index = int(np.flatnonzero(table.decoded)[0])
    image = decode_image(ImageRef(table.columns["source"][index], int(table.columns["offset"][index]),
                                  int(table.columns["size"][index])).read())[0]
    direct = float((model.encode_image([image]) * model.encode_text([table.columns["caption"][index]])).sum())
    assert direct == pytest.approx(table.columns["clip_score"][index], abs=1e-4)


def test_decontamination_and_image_based_filter_with_reference_sets(noisy_pool, tiny_run, synth_data, tmp_path):
    from vlmkit.data import load_samples

    pool = load_samples(noisy_pool["shards"][0])
    leaked = [sample for sample in pool if noisy_pool["labels"][sample.key] == "clean"][:3]
    (tmp_path / "eval").mkdir()
    for sample in leaked:  # an evaluation set that holds three of the pool's images
        (tmp_path / "eval" / f"{sample.key}.png").write_bytes(sample.image.read())
    pipeline = pipeline_from_dict({"stages": [
        {"decontaminate": {"eval_set": str(tmp_path / "eval"), "exact": False, "max_distance": 0}},
        {"image_based": {"reference": str(synth_data / "shards" / "00000.tar"), "clusters": 6}}]})
    result = curate(noisy_pool["shards"], tmp_path / "out", pipeline, model=tiny_run, progress=False,
                    report_images=False)
    contaminated = {i for i, d in zip(result.table.ids, result.decisions.dropped_by) if d == "decontaminate"}
    assert {sample.key for sample in leaked} <= contaminated
    counts = {stage["stage"]: stage for stage in result.report["stages"]}
    assert set(counts["image_based"]["reasons"]) <= {"off_reference"} and counts["image_based"]["kept"] > 0
    assert (tmp_path / "out" / "references").is_dir()


def test_cli_curate(noisy_pool, tmp_path, capsys):
    from vlmkit.cli import main

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages:\n  - caption_length: {min_words: 3}\n  - exact_dedup\n")
    assert main(["curate", "--input", str(noisy_pool["folder"] / "shards"), "--out", str(tmp_path / "out"),
                 "--pipeline", str(pipeline), "--no-progress", "--no-images"]) == 0
    printed = capsys.readouterr().out
    assert "exact_dedup" in printed and "report:" in printed
    assert main(["curate", "--input", str(noisy_pool["folder"] / "shards"), "--out", str(tmp_path / "out"),
                 "--pipeline", str(pipeline), "--set", "caption_length.min_wrds=2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "min_wrds; allowed: min_words" in error
    assert main(["curate", "--input", str(tmp_path / "none"), "--out", str(tmp_path / "o2"), "--pipeline",
                 "basic"]) == 2


def test_ray_executor_gives_the_local_decisions(local_ray, noisy_pool, tiny_run, tmp_path):
    pipeline = pipeline_from_dict(WITH_MODEL)
    local = curate(noisy_pool["shards"], tmp_path / "local", pipeline, model=tiny_run, progress=False,
                   report_images=False)
    remote = curate(noisy_pool["shards"], tmp_path / "ray", pipeline, model=tiny_run, executor="ray",
                    progress=False, report_images=False)
    assert remote.report["executor"] == "ray"
    assert remote.kept_ids == local.kept_ids and len(local.kept_ids) > 0
    assert list(remote.decisions.dropped_by) == list(local.decisions.dropped_by)
    np.testing.assert_allclose(remote.table.columns["clip_score"], local.table.columns["clip_score"], atol=1e-5)

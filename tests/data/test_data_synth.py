"""Synthetic scenes: determinism, the files written, and that every loader reads them back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.data import load_samples, synth
from vlmkit.data.scenes import CLASS_NAMES, COLORS, SHAPES

N, CAPTIONS, SHARD = 30, 2, 12


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synth.generate(str(out), N, seed=3, image_size=64, captions_per_image=CAPTIONS,
                               shard_size=SHARD, workers=1)


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_same_seed_gives_byte_identical_files_whatever_the_workers(generated, tmp_path,
                                                                   monkeypatch):
    out, _ = generated
    monkeypatch.setattr(synth, "_POOL_THRESHOLD", 0)  # force the process pool for 30 images
    synth.generate(str(tmp_path / "again"), N, seed=3, image_size=64,
                   captions_per_image=CAPTIONS, shard_size=SHARD, workers=2)
    first, second = all_files(out), all_files(tmp_path / "again")
    assert list(first) == list(second)
    assert all(first[name] == second[name] for name in first)
    assert not [name for name in first if ".tmp" in name]  # no temporary leftovers


def test_another_seed_differs(generated, tmp_path):
    out, _ = generated
    synth.generate(str(tmp_path / "other"), 3, seed=4, image_size=64, workers=1)
    assert (out / "images/000000.png").read_bytes() != (
        tmp_path / "other/images/000000.png").read_bytes()


def test_summary_and_files(generated):
    out, summary = generated
    assert summary["n"] == N and summary["num_single"] == 15 and summary["num_multi"] == 15
    assert summary["num_captions"] == N * CAPTIONS
    assert [Path(p).name for p in summary["shards"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert (out / "classes.txt").read_text().splitlines() == CLASS_NAMES
    assert CLASS_NAMES[:2] == ["red circle", "red square"] and len(CLASS_NAMES) == 30
    image = Image.open(out / "images/000000.png")
    assert image.size == (64, 64) and image.mode == "RGB"


def test_metadata_is_consistent(generated):
    out, _ = generated
    metas = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["key"] for m in metas] == [f"{i:06d}" for i in range(N)]
    for meta in metas:
        objects = meta["objects"]
        assert len(set(meta["captions"])) == CAPTIONS
        assert sum(meta["counts"].values()) == len(objects)
        for obj in objects:
            assert obj["color"] in COLORS and obj["shape"] in SHAPES
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < obj["center"][0] < x1 <= 64 and 0 <= y0 < y1 <= 64
        if meta["label"] is not None:
            assert len(objects) == 1 and meta["label"] == f"{objects[0]['color']} {objects[0]['shape']}"
            assert all(objects[0]["shape"] in c and objects[0]["color"] in c for c in meta["captions"])
            assert 0.45 * 64 - 1 <= objects[0]["bbox"][2] - objects[0]["bbox"][0] <= 0.75 * 64 + 1
        else:
            assert 2 <= len(objects) <= 4 and {o["size"] for o in objects} <= {"small", "large"}
        for relation in meta["relations"]:
            a, b = objects[relation["subject"]], objects[relation["object"]]
            axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1),
                          "below": (1, 1)}[relation["relation"]]
            assert sign * (a["center"][axis] - b["center"][axis]) > 0


def test_multi_object_boxes_do_not_overlap(generated):
    out, _ = generated
    for line in (out / "metadata.jsonl").read_text().splitlines():
        boxes = [o["bbox"] for o in json.loads(line)["objects"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_objects_are_drawn_in_their_colour(generated):
    out, _ = generated
    for line in (out / "metadata.jsonl").read_text().splitlines()[:10]:
        meta = json.loads(line)
        pixels = np.asarray(Image.open(out / "images" / f"{meta['key']}.png")).astype(int)
        for obj in meta["objects"]:
            if obj["shape"] in ("circle", "square"):  # their centre pixel is inside the shape
                cx, cy = (int(v) for v in obj["center"])
                assert np.abs(pixels[cy, cx] - COLORS[obj["color"]]).max() <= 20


def test_loads_as_csv_coco_and_shards_with_matching_labels(generated):
    out, summary = generated
    rows = load_samples(summary["captions_csv"])
    coco = load_samples(summary["coco_json"])
    shards = load_samples(str(out / "shards"))
    braces = load_samples(summary["shard_pattern"])
    folder = load_samples(str(out))  # the folder's captions.csv
    assert len(rows) == len(folder) == N * CAPTIONS
    assert len(coco) == len(shards) == len(braces) == N
    assert [s.captions for s in coco] == [s.captions for s in shards]
    assert [s.label for s in coco] == [s.label for s in shards]
    assert sum(s.label is not None for s in coco) == summary["num_single"]
    assert {s.label for s in coco if s.label} <= set(CLASS_NAMES)
    assert [s.captions[0] for s in coco] == [s.captions[0] for s in rows[::CAPTIONS]]
    assert coco[0].image.read() == shards[0].image.read() == rows[0].image.read()


def test_rerun_with_fewer_images_removes_stale_files(tmp_path):
    out = tmp_path / "d"
    synth.generate(str(out), 25, seed=0, image_size=32, shard_size=10, workers=1)
    summary = synth.generate(str(out), 8, seed=0, image_size=32, shard_size=10, workers=1)
    assert len(load_samples(str(out / "shards"))) == 8
    assert len(list((out / "images").iterdir())) == 8 and len(summary["shards"]) == 1


@pytest.mark.parametrize("bad", [{"n": 0}, {"captions_per_image": 0}, {"single_fraction": 2.0}])
def test_invalid_arguments(tmp_path, bad):
    arguments = {"n": 4, **bad}
    with pytest.raises(ValueError):
        synth.generate(str(tmp_path), arguments.pop("n"), **arguments)

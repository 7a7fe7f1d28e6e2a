"""load_samples for every format, ImageRef reads, group_by_image / expand_captions."""
from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import Callable

import pytest
from data_helpers import encode, noise_image
from PIL import Image

from vlmkit.data import (BadSample, ImageRef, Sample, decode_caption, expand_captions,
                         group_by_image, load_samples)
from vlmkit.data.shards import expand_braces
from vlmkit.data.sources import detect_format


@pytest.fixture
def write_image(tmp_path: Path) -> Callable[..., Path]:
    """write_image("a/b.png", image=None, fmt=None) -> path of a small image file under tmp_path."""

    def write(relative: str, image: Image.Image | None = None, fmt: str | None = None,
              seed: int = 0) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image = image if image is not None else noise_image(24, 20, seed)
        fmt = fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        path.write_bytes(encode(image, fmt))
        return path

    return write


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream, delimiter=delimiter).writerows(rows)
    return path


def test_csv_manifest(tmp_path, write_image):
    write_image("imgs/a.png")
    absolute = write_image("elsewhere/b.png")
    manifest = write_csv(tmp_path / "train.csv", [
        ["image", "caption", "label", "url"],
        ["imgs/a.png", "a red circle", "red circle", "http://x"],
        [str(absolute), "a blue square", "", ""],
        ["imgs/a.png", "", "red circle", ""],
    ])
    with open(manifest, "a", encoding="utf-8") as stream:
        stream.write("imgs/a.png\n")  # a short row: no caption cell at all
    samples = load_samples(str(manifest))
    assert [s.key for s in samples] == ["000000", "000001", "000002", "000003"]
    assert samples[0].image.path == str(tmp_path / "imgs" / "a.png")
    assert samples[0].captions == ["a red circle"] and samples[0].label == "red circle"
    assert samples[0].meta == {"url": "http://x"}
    assert samples[1].image.path == str(absolute) and samples[1].label is None
    assert samples[2].captions == [""]  # reported later as empty_caption
    assert samples[3].captions == []  # reported later as missing_caption
    assert samples[0].image.read() == (tmp_path / "imgs" / "a.png").read_bytes()


def test_tsv_with_key_column_and_custom_columns(tmp_path, write_image):
    write_image("a.jpg")
    manifest = write_csv(tmp_path / "data.tsv", [["key", "filepath", "title"],
                                                 ["cat-1", "a.jpg", "a cat, sitting"]], "\t")
    samples = load_samples(str(manifest), image_key="filepath", caption_key="title")
    assert samples[0].key == "cat-1" and samples[0].captions == ["a cat, sitting"]
    assert samples[0].label is None


def test_missing_column_error_names_file_columns_and_option(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", [["filepath", "caption"], ["a.png", "x"]])
    with pytest.raises(ValueError) as caught:
        load_samples(str(manifest))
    message = str(caught.value)
    assert "m.csv" in message and "'image'" in message and "filepath, caption" in message
    assert "--set data.image_key=" in message
    with pytest.raises(ValueError, match="--set data.caption_key="):
        load_samples(str(manifest), image_key="filepath", caption_key="text")


def test_jsonl_and_json_list(tmp_path, write_image):
    write_image("a.png")
    rows = [{"image": "a.png", "caption": ["one", "two"], "label": 3},
            {"image": "a.png", "caption": "three"},
            {"image": "a.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = load_samples(str(tmp_path / "m.jsonl"))
    assert [s.captions for s in samples] == [["one", "two"], ["three"], []]
    assert samples[0].label == "3" and samples[1].label is None
    (tmp_path / "m.json").write_text(json.dumps(rows))
    assert [s.captions for s in load_samples(str(tmp_path / "m.json"))] == [["one", "two"],
                                                                            ["three"], []]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_samples(str(tmp_path / "bad.jsonl"))


def test_non_utf8_manifest_is_reported_at_decode_time(tmp_path, write_image):
    write_image("a.png")
    (tmp_path / "m.csv").write_bytes(b"image,caption\na.png,caf\xe9 au lait\n")
    sample = load_samples(str(tmp_path / "m.csv"))[0]
    assert decode_caption(sample.captions[0]) == ("café au lait", ["non_utf8"])


def test_coco_json_with_images_folder(tmp_path, write_image):
    write_image("images/1.png")
    write_image("images/2.png", seed=1)
    coco = {"images": [{"id": 7, "file_name": "1.png", "label": "dog"},
                       {"id": 9, "file_name": "2.png"}, {"id": 11, "file_name": "3.png"}],
            "annotations": [{"id": 0, "image_id": 9, "caption": "second"},
                            {"id": 1, "image_id": 7, "caption": "first a"},
                            {"id": 2, "image_id": 7, "caption": "first b"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    samples = load_samples(str(tmp_path / "captions.json"))
    assert [s.key for s in samples] == ["7", "9", "11"]
    assert samples[0].captions == ["first a", "first b"] and samples[0].label == "dog"
    assert samples[1].captions == ["second"] and samples[2].captions == []
    assert samples[0].image.path == str(tmp_path / "images" / "1.png")
    assert samples[1].image.read() == (tmp_path / "images" / "2.png").read_bytes()


def test_coco_json_in_the_official_layout(tmp_path, write_image):
    write_image("coco/val2017/000000000139.jpg")
    coco = {"images": [{"id": 139, "file_name": "000000000139.jpg"}],
            "annotations": [{"image_id": 139, "caption": "a room"}]}
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "captions_val2017.json").write_text(json.dumps(coco))
    sample = load_samples(str(tmp_path / "coco" / "annotations" / "captions_val2017.json"))[0]
    assert sample.image.path == str(tmp_path / "coco" / "val2017" / "000000000139.jpg")


def test_coco_json_without_file_name_is_a_clear_error(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match="'file_name'"):
        load_samples(str(tmp_path / "c.json"))


def test_coco_json_with_paths_relative_to_its_folder(tmp_path, write_image):
    write_image("pics/1.png")
    coco = {"images": [{"id": 1, "file_name": "pics/1.png"}],
            "annotations": [{"image_id": 1, "caption": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert load_samples(str(tmp_path / "c.json"))[0].image.path == str(tmp_path / "pics/1.png")


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def shard_members(first: int, count: int) -> dict[str, bytes]:
    members = {}
    for number in range(first, first + count):
        key = f"{number:06d}"
        members[f"{key}.jpg"] = encode(noise_image(16, 16, number), "JPEG")
        members[f"{key}.txt"] = f"caption {number}".encode()
        members[f"{key}.json"] = json.dumps({"label": f"class {number % 2}", "url": "u"}).encode()
    return members


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    for shard in range(3):
        write_shard(tmp_path / "shards" / f"{shard:05d}.tar", shard_members(shard * 4, 4))
    return tmp_path / "shards"


@pytest.mark.parametrize("form", ["dir", "glob", "brace", "file"])
def test_webdataset_shards_in_every_form(shard_dir, form):
    path = {"dir": str(shard_dir), "glob": str(shard_dir / "*.tar"),
            "brace": str(shard_dir / "{00000..00002}.tar"),
            "file": str(shard_dir / "00001.tar")}[form]
    samples = load_samples(path)
    expected = list(range(4, 8)) if form == "file" else list(range(12))
    assert [s.key for s in samples] == [f"{n:06d}" for n in expected]
    first = samples[0]
    number = expected[0]
    assert first.captions == [f"caption {number}"] and first.label == f"class {number % 2}"
    assert first.meta["url"] == "u"
    assert first.image.offset is not None
    assert first.image.read() == encode(noise_image(16, 16, number), "JPEG")


def test_shards_missing_from_a_brace_range_are_an_error(shard_dir):
    with pytest.raises(FileNotFoundError, match="1 of 4 shards"):
        load_samples(str(shard_dir / "{00000..00003}.tar"))


def test_shard_keys_without_image_warn_and_empty_shard_fails(tmp_path):
    members = shard_members(0, 2)
    members["orphan.txt"] = b"no image for me"
    members["dir/000009.PNG"] = encode(noise_image(8, 8))
    members["000010.webp.json"] = b"{}"  # a key that only has a json member
    shard = write_shard(tmp_path / "a.tar", members)
    with pytest.warns(UserWarning, match="2 keys without an image"):
        samples = load_samples(str(shard))
    assert [s.key for s in samples] == ["000000", "000001", "dir/000009"]
    assert samples[2].captions == []
    empty = write_shard(tmp_path / "b.tar", {"x.txt": b"caption only"})
    with pytest.raises(ValueError, match="no samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_samples(str(empty))


def test_shard_json_caption_list_wins_over_txt(tmp_path):
    shard = write_shard(tmp_path / "s.tar", {
        "k.png": encode(noise_image(8, 8)), "k.txt": b"first",
        "k.json": json.dumps({"captions": ["first", "second"]}).encode()})
    assert load_samples(str(shard))[0].captions == ["first", "second"]


def test_brace_expansion():
    assert expand_braces("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_folder_with_sidecars(tmp_path, write_image):
    write_image("photos/b.png")
    write_image("photos/a.jpg")
    write_image("photos/sub/c.png")
    write_image("photos/.hidden/d.png")
    (tmp_path / "photos" / "a.txt").write_text("first caption\n\nsecond caption\n")
    (tmp_path / "photos" / "sub" / "c.txt").write_text("")
    samples = load_samples(str(tmp_path / "photos"))
    assert [s.key for s in samples] == ["a", "b", "sub/c"]
    assert samples[0].captions == ["first caption", "second caption"]
    assert samples[1].captions == []  # no sidecar: missing_caption later
    assert samples[2].captions == [""]  # empty sidecar: empty_caption later
    assert detect_format(str(tmp_path / "photos")) == "folder"


def test_folder_with_manifest_inside(tmp_path, write_image):
    write_image("d/x.png")
    write_csv(tmp_path / "d" / "captions.csv", [["image", "caption"], ["x.png", "an x"]])
    samples = load_samples(str(tmp_path / "d"))
    assert len(samples) == 1 and samples[0].captions == ["an x"]


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(ValueError, match="fmt="):
        load_samples(str(tmp_path / "notes.md"))
    with pytest.raises(FileNotFoundError):
        load_samples(str(tmp_path / "nothing.here"))
    with pytest.raises(ValueError, match="unknown data format"):
        load_samples(str(tmp_path / "notes.md"), fmt="parquet")


def test_image_ref_failures(tmp_path):
    def reason(ref: ImageRef) -> str:
        with pytest.raises(BadSample) as caught:
            ref.read()
        return caught.value.reason

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "short.tar").write_bytes(b"x" * 100)
    assert reason(ImageRef(str(tmp_path / "gone.png"))) == "missing_file"
    assert reason(ImageRef(str(tmp_path))) == "missing_file"  # a folder
    assert reason(ImageRef("")) == "missing_file"
    assert reason(ImageRef("https://example.com/a.jpg")) == "missing_file"
    assert reason(ImageRef(str(tmp_path / "empty.png"))) == "empty_file"
    assert reason(ImageRef(str(tmp_path / "short.tar"), offset=50, size=80)) == "truncated_image"
    assert ImageRef(str(tmp_path / "short.tar"), offset=90, size=10).read() == b"x" * 10
    ref = ImageRef("a.png", 3, 4)
    assert pickle.loads(pickle.dumps(ref)) == ref


def test_group_by_image_and_expand_captions():
    a, b = ImageRef("a.png"), ImageRef("shard.tar", offset=512, size=10)
    rows = [Sample("0", a, ["a1"], "cat"), Sample("1", b, ["b1"]), Sample("2", a, ["a2"], "cat"),
            Sample("3", ImageRef("shard.tar", offset=1024, size=10), ["c1"])]
    grouped = group_by_image(rows)
    assert [(s.key, s.captions, s.label) for s in grouped] == [
        ("0", ["a1", "a2"], "cat"), ("1", ["b1"], None), ("3", ["c1"], None)]
    assert rows[0].captions == ["a1"]  # inputs untouched
    expanded = expand_captions(grouped + [Sample("4", ImageRef("d.png"), [])])
    assert [(s.key, s.captions, s.label) for s in expanded] == [
        ("0#0", ["a1"], "cat"), ("0#1", ["a2"], "cat"), ("1", ["b1"], None),
        ("3", ["c1"], None), ("4", [], None)]

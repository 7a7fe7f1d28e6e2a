"""Compositional probes: negatives false for their scene, determinism, exact scoring rules, loaders, the command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmkit.cli import main
from vlmkit.data.probes import (
    PROBE_TYPES,
    ProbeGroup,
    ProbeItem,
    ProbeSuite,
    builtin_suite,
    load_aro,
    load_sugarcrepe,
    load_winoground,
    read_scenes,
)
from vlmkit.eval.probes import choice_correct, evaluate_probes, winoground_correct


@pytest.fixture(scope="module")
def suite(heldout_data: Path) -> ProbeSuite:
    return builtin_suite(heldout_data, seed=3)


def _claims(scene, caption: str) -> bool:
    """Whether a generated caption is true of the scene, read back from the metadata alone."""
    from vlmkit.data.scenes import RELATION_WORDS
    from vlmkit.data.scenes import NUMBER_WORDS, PLURALS

    singular = {plural: shape for shape, plural in PLURALS.items()}
    for relation, words in RELATION_WORDS.items():
        if f" {words} " in caption:
            left, right = caption.split(f" {words} ")
            subject, obj = tuple(left.split()[1:]), tuple(right.split()[1:])
            return scene.relation_holds(subject, relation, obj)
    if caption.startswith("there "):
        words = caption.split()
        number, color, shape = NUMBER_WORDS.index(words[2]), words[3], singular.get(words[4], words[4])
        return scene.counts.get(f"{color} {shape}", 0) == number
    parts = caption.replace(", ", " and ").split(" and ")
    sizes = {(c, s): z for c, s, z in scene.objects}
    for part in parts:
        words = part.split()
        if words[0] in NUMBER_WORDS:
            if scene.counts.get(f"{words[1]} {singular[words[2]]}", 0) != NUMBER_WORDS.index(words[0]):
                return False
            continue
        *size, color, shape = words[1:]
        if not scene.has(color, shape) or (size and sizes[(color, shape)] != size[0]):
            return False
    return True


def test_negatives_differ_and_are_false(suite: ProbeSuite, heldout_data: Path) -> None:
    scenes = {scene.key: scene for scene in read_scenes(heldout_data)}
    kinds = {item.kind for item in suite.items}
    assert kinds == set(PROBE_TYPES)  # every probe type has items on 80 held-out scenes
    for item in suite.items:
        scene = scenes[item.key.split("/")[0]]
        true = item.captions[item.answer]
        assert len(set(item.captions)) == len(item.captions), item
        if item.kind == "word_order":
            assert len(item.captions) == 5
            assert all(sorted(c.split()) == sorted(true.split()) for c in item.captions)
            continue
        assert _claims(scene, true), (item, scene.counts)
        for negative in item.captions[1:]:
            assert not _claims(scene, negative), (item, scene.counts, scene.relations)
    relation = next(item for item in suite.items if item.kind == "aro_relation")
    assert sorted(relation.captions[0].split()) == sorted(relation.captions[1].split())


def test_groups_swap_word_order_and_contradict(suite: ProbeSuite, heldout_data: Path) -> None:
    bigger = builtin_suite(heldout_data, seed=0)
    assert bigger.groups  # relation-swap pairs exist among 80 scenes
    scenes = {scene.image: scene for scene in read_scenes(heldout_data)}
    for group in bigger.groups:
        assert group.captions[0] != group.captions[1]
        assert sorted(group.captions[0].split()) == sorted(group.captions[1].split())
        for index, path in enumerate(group.images):
            scene = scenes[path]
            shapes = {s for _, s, _ in scene.objects}
            own, other = group.captions[index], group.captions[1 - index]
            for relation in ("to the left of", "above"):
                if relation in own:
                    a, b = [part.split()[-1] for part in own.split(f" {relation} ")]
                    assert {a, b} <= shapes
                    assert other == f"a {b} {relation} a {a}"


def test_deterministic(suite: ProbeSuite, heldout_data: Path) -> None:
    again = builtin_suite(heldout_data, seed=3)
    assert again.items == suite.items and again.groups == suite.groups
    other = builtin_suite(heldout_data, seed=4)
    assert other.items != suite.items


class FakeModel:
    """score(images, texts) from a table keyed by (image file name, caption): no embeddings, like a fusion model."""

    capabilities = ("score",)

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls = 0

    def score(self, images, texts):
        self.calls += 1
        return torch.tensor([[self.table.get((image.info["name"], text), 0.0) for text in texts] for image in images])


class FakeEmbedder:
    """encode_image / encode_text as one-hot lookups: counts how often each is called."""

    capabilities = ("encode_image", "encode_text", "score")

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors, self.image_calls, self.text_calls = vectors, 0, 0

    def encode_image(self, images):
        self.image_calls += 1
        return torch.tensor([self.vectors[image.info["name"]] for image in images])

    def encode_text(self, texts):
        self.text_calls += 1
        return torch.tensor([self.vectors[text] for text in texts])

    def score(self, images, texts):  # pragma: no cover - the embedding path is used
        raise AssertionError


@pytest.fixture()
def images(tmp_path: Path, monkeypatch) -> Path:
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / f"{name}.png")
    import vlmkit.eval.probes as module

    load = module._load_image

    def named(ref):  # tag each image with its file name so the fake models can look it up
        image = load(ref)
        image.info["name"] = Path(ref[0]).stem
        return image
    monkeypatch.setattr(module, "_load_image", named)
    return tmp_path


def test_scoring_rules_exact(images: Path) -> None:
    path = lambda name: str(images / f"{name}.png")
    items = [ProbeItem("p", "1", path("a"), ("t", "f")),            # right
             ProbeItem("p", "2", path("b"), ("t", "f")),            # tie: wrong
             ProbeItem("p", "3", path("c"), ("t", "f")),            # wrong
             ProbeItem("q", "4", path("a"), ("x", "y", "z"), 2),    # right (answer 2)
             ProbeItem("q", "5", path("missing"), ("x", "y"))]      # unreadable: skipped
    # Winoground groups; scores s(caption, image) chosen so that each case is known by hand
    groups = [ProbeGroup("w", "g1", (path("a"), path("b")), ("c0", "c1")),  # text and image right
              ProbeGroup("w", "g2", (path("b"), path("c")), ("d0", "d1")),  # text right only
              ProbeGroup("w", "g3", (path("c"), path("a")), ("e0", "e1")),  # image right only
              ProbeGroup("w", "g4", (path("a"), path("c")), ("f0", "f1"))]  # all tied: neither
    table = {("a", "t"): 2, ("a", "f"): 1, ("b", "t"): 1, ("b", "f"): 1, ("c", "t"): 0, ("c", "f"): 1,
             ("a", "x"): 1, ("a", "y"): 2, ("a", "z"): 3,
             ("a", "c0"): 5, ("a", "c1"): 1, ("b", "c0"): 1, ("b", "c1"): 5,
             ("b", "d0"): 2, ("b", "d1"): 1, ("c", "d0"): 3, ("c", "d1"): 4,
             ("c", "e0"): 2, ("c", "e1"): 3, ("a", "e0"): 1, ("a", "e1"): 4}
    model = FakeModel(table)
    result = evaluate_probes(model, ProbeSuite("t", items, groups))
    assert result.metrics["p_accuracy"] == pytest.approx(1 / 3)
    assert result.metrics["q_accuracy"] == 1.0
    assert result.metrics["mean_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert result.skipped == {"missing_file": 1}
    assert (result.num_items, result.num_groups) == (4, 4)
    assert result.metrics["w_text_score"] == 0.5
    assert result.metrics["w_image_score"] == 0.5
    assert result.metrics["w_group_score"] == 0.25
    assert model.calls == 4 + 2 * 4  # one score call per item image, two per group
    assert [f["key"] for f in result.failures] == ["2", "3"]
    assert result.failures[1]["preferred"] == "f"


def test_winoground_formula_cases() -> None:
    both = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # [caption, image]
    assert winoground_correct(both) == {"text": True, "image": True, "group": True}
    # each image prefers its own caption, but caption 0 prefers image 1
    text_only = torch.tensor([[2.0, 3.0], [1.0, 4.0]])
    assert winoground_correct(text_only) == {"text": True, "image": False, "group": False}
    image_only = torch.tensor([[2.0, 1.0], [3.0, 4.0]])
    assert winoground_correct(image_only) == {"text": False, "image": True, "group": False}
    assert not choice_correct(torch.tensor([1.0, 1.0]), 0) and choice_correct(torch.tensor([0.0, 1.0]), 1)


def test_embedding_path_encodes_each_image_and_text_once(images: Path) -> None:
    path = lambda name: str(images / f"{name}.png")
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "red": [1.0, 0.0], "blue": [0.0, 1.0]}
    items = [ProbeItem("k", str(i), path(name), ("red", "blue"), answer)
             for i, (name, answer) in enumerate([("a", 0), ("b", 1), ("a", 0), ("b", 0)])]
    groups = [ProbeGroup("w", "g", (path("a"), path("b")), ("red", "blue"))]
    model = FakeEmbedder(vectors)
    result = evaluate_probes(model, ProbeSuite("t", items, groups), batch_size=8)
    assert (model.image_calls, model.text_calls) == (1, 1)
    assert result.metrics["k_accuracy"] == 0.75
    assert result.metrics["w_group_score"] == 1.0


def test_loaders_read_public_formats(tmp_path: Path) -> None:
    aro = [{"image_id": "1", "relation_name": "on", "bbox_x": 1, "bbox_y": 2, "bbox_w": 3, "bbox_h": 4,
            "true_caption": "the cup is on the table", "false_caption": "the table is on the cup",
            "image_path": "1.jpg"},
           {"image_id": "2", "attributes": ["red", "wooden"], "bbox_x": 0, "bbox_y": 0, "bbox_w": 5, "bbox_h": 5,
            "true_caption": "the red door and the wooden chair", "false_caption": "the wooden door and the red chair",
            "image_path": "2.jpg"}]
    (tmp_path / "aro.json").write_text(json.dumps(aro))
    suite = load_aro(tmp_path / "aro.json", tmp_path / "vg")
    assert [i.kind for i in suite.items] == ["vg_relation", "vg_attribution"]
    assert suite.items[0].captions == ("the cup is on the table", "the table is on the cup")
    assert suite.items[0].crop == (1, 2, 4, 6) and suite.items[0].image == str(tmp_path / "vg" / "1.jpg")

    sugar = {"0": {"filename": "000000391895.jpg", "caption": "a man rides a bike",
                   "negative_caption": "a bike rides a man"}}
    (tmp_path / "sugar").mkdir()
    (tmp_path / "sugar" / "swap_obj.json").write_text(json.dumps(sugar))
    (tmp_path / "sugar" / "add_att.json").write_text(json.dumps(sugar))
    suite = load_sugarcrepe(tmp_path / "sugar" / "swap_obj.json", tmp_path / "coco")
    assert suite.items == [ProbeItem("swap_obj", "swap_obj/0", str(tmp_path / "coco" / "000000391895.jpg"),
                                     ("a man rides a bike", "a bike rides a man"))]
    assert [i.kind for i in load_sugarcrepe(tmp_path / "sugar", tmp_path).items] == ["add_att", "swap_obj"]

    lines = [{"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "an old person kisses a young "
              "person", "caption_1": "a young person kisses an old person", "tag": "Object", "secondary_tag": "",
              "num_main_preds": 1, "collapsed_tag": "Object"}]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    group = load_winoground(tmp_path / "examples.jsonl", tmp_path / "images").groups[0]
    assert group.images == (str(tmp_path / "images" / "ex_0_img_0.png"), str(tmp_path / "images" / "ex_0_img_1.png"))
    assert group.captions == ("an old person kisses a young person", "a young person kisses an old person")

    (tmp_path / "bad.json").write_text(json.dumps([{"image_path": "x"}]))
    with pytest.raises(ValueError, match="lacks"):
        load_aro(tmp_path / "bad.json", tmp_path)


def test_command_end_to_end(tiny_run: Path, heldout_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["eval", "probes", "--model", str(tiny_run), "--suite", "builtin", "--data", str(heldout_data),
                 "--json", "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "compositional_probes" and record["dataset"] == str(heldout_data)
    assert set(record) >= {"dataset", "model", "pretrained", "task", "metrics", "language"}
    metrics = record["metrics"]
    assert all(0 <= metrics[f"{kind}_accuracy"] <= 1 for kind in PROBE_TYPES)
    assert {"winoground_relation_text_score", "winoground_relation_group_score"} <= set(metrics)
    assert json.loads((out / "compositional_probes.json").read_text())["metrics"] == metrics
    with Image.open(out / "probe_failures.png") as image:
        assert image.format == "PNG"
    assert main(["eval", "probes", "--model", str(tiny_run), "--suite", "builtin", "--data", str(heldout_data),
                 "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "aro_relation" in table and "winoground_relation group" in table

    lines = [{"id": 0, "image_0": "000000", "image_1": "000001", "caption_0": "a red circle",
              "caption_1": "circle a red"}]
    (tmp_path / "w.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert main(["eval", "probes", "--model", str(tiny_run), "--winoground", str(tmp_path / "w.jsonl"),
                 "--images", str(heldout_data / "images"), "--json", "--device", "cpu"]) == 0
    assert "winoground_text_score" in json.loads(capsys.readouterr().out)["metrics"]
    assert main(["eval", "probes", "--model", str(tiny_run), "--suite", "builtin"]) == 2
    assert "needs --data" in capsys.readouterr().err

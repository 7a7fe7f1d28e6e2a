"""VQA data: VQAv2 and JSONL readers, and the questions written for the built-in scenes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmkit.data import synth
from vlmkit.data.scene_vqa import question_rng, scene_questions
from vlmkit.data.vqa import coco_image_name, load_vqa, load_vqa_annotations, load_vqa_jsonl
from vlmkit.eval.vqa import evaluate_vqa

N = 24


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scenes") / "data"
    return out, synth.generate(str(out), N, seed=5, image_size=32, workers=1)


# ---------------------------------------------------------------- VQAv2 and JSONL

def vqav2(folder: Path, split: str = "val2014", image_folder: Path | None = None) -> tuple[Path, Path]:
    questions = {"data_subtype": split, "questions": [
        {"image_id": 7, "question": "What is it?", "question_id": 7000},
        {"image_id": 8, "question": "Is it red?", "question_id": 8000, "image": "pictures/eight.png"}]}
    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["cat"] * 10)]
    annotations = {"annotations": [{"question_id": 7000, "image_id": 7, "question_type": "what is",
                                    "answer_type": "other", "multiple_choice_answer": "cat", "answers": answers}]}
    (folder / "q.json").write_text(json.dumps(questions))
    (folder / "a.json").write_text(json.dumps(annotations))
    if image_folder is not None:
        image_folder.mkdir(parents=True, exist_ok=True)
        (image_folder / coco_image_name(split.replace("test-dev", "test"), 7)).write_bytes(b"x")
    return folder / "q.json", folder / "a.json"


def test_vqav2_questions_and_annotations(tmp_path):
    questions, annotations = vqav2(tmp_path, image_folder=tmp_path / "images" / "val2014")
    loaded = load_vqa(questions, annotations)
    assert [q.question_id for q in loaded] == [7000, 8000]
    first, second = loaded
    assert first.answers == ["cat"] * 10 and first.question_type == "what is" and first.answer_type == "other"
    assert first.multiple_choice_answer == "cat" and first.image_id == 7
    assert first.image.path == str(tmp_path / "images" / "val2014" / "COCO_val2014_000000000007.jpg")
    assert first.image.read() == b"x"
    # an explicit image path wins; a question without annotation keeps no answers
    assert second.image.path == str(tmp_path / "pictures" / "eight.png") and second.answers == []
    assert coco_image_name("val2014", 42) == "COCO_val2014_000000000042.jpg"
    assert load_vqa_annotations(annotations)[7000]["answers"] == ["cat"] * 10


def test_vqav2_image_folders(tmp_path):
    # the official layout: Questions/ beside Images/mscoco/<split>/; test-dev images are named test2015
    (tmp_path / "Questions").mkdir()
    questions, _ = vqav2(tmp_path / "Questions", split="test-dev2015",
                         image_folder=tmp_path / "Images" / "mscoco" / "test2015")
    assert load_vqa(questions)[0].image.path == str(
        tmp_path / "Images" / "mscoco" / "test2015" / "COCO_test2015_000000000007.jpg")
    explicit = load_vqa(questions, images=tmp_path / "elsewhere")[0].image.path
    assert explicit == str(tmp_path / "elsewhere" / "COCO_test2015_000000000007.jpg")


def test_vqa_file_errors(tmp_path):
    questions, annotations = vqav2(tmp_path)
    with pytest.raises(ValueError, match="annotations file"):
        load_vqa(annotations)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_vqa(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a VQAv2 annotations file"):
        load_vqa_annotations(questions)


def test_jsonl_form(tmp_path):
    rows = [{"image": "a.png", "question": "what color?", "answer": "red"},
            {"image": "/abs/b.png", "question": "how many?", "answers": ["2", "3"], "question_id": "q2",
             "question_type": "how many", "answer_type": "number"},
            {"image": "c.png", "question": "unanswered?"}]
    (tmp_path / "vqa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = load_vqa_jsonl(tmp_path / "vqa.jsonl")
    assert [q.question_id for q in loaded] == [0, "q2", 2]
    assert loaded[0].answers == ["red"] * 10 and loaded[0].image.path == str(tmp_path / "a.png")
    assert loaded[1].answers == ["2", "3"] and loaded[1].image.path == "/abs/b.png"
    assert loaded[1].answer_type == "number" and loaded[2].answers == []
    assert load_vqa(tmp_path / "vqa.jsonl") == loaded
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "no image"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_vqa_jsonl(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- built-in scenes

def test_scene_files_are_vqav2_and_answers_are_true(scenes):
    out, summary = scenes
    loaded = load_vqa(summary["vqa_questions_json"], summary["vqa_annotations_json"])
    assert summary["num_vqa_questions"] == len(loaded) and 2 * N <= len(loaded) <= 3 * N
    metas = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    for question in loaded:
        image_id = question.question_id // 1000
        meta = metas[image_id]
        assert question.image_id == image_id and question.image.path == str(out / "images" / f"{meta['key']}.png")
        assert question.image.read()[:4] == b"\x89PNG"
        assert len(question.answers) == 10 and len(set(question.answers)) == 1
        answer = question.answers[0]
        assert question.multiple_choice_answer == answer
        assert question.answer_type == {"is there a": "yes/no", "is the": "yes/no", "how many": "number"}.get(
            question.question_type, "other")
        names = {f"{o['color']} {o['shape']}" for o in meta["objects"]}
        text = question.question
        if question.question_type == "is there a":
            asked = text.removeprefix("is there ").removeprefix("an ").removeprefix("a ").rstrip("?")
            assert (asked in names) == (answer == "yes")
        elif question.question_type == "what color is the":
            shape = text.split()[-1].rstrip("?")
            assert [o["color"] for o in meta["objects"] if o["shape"] == shape] == [answer]
        elif question.question_type == "what shape is the":
            color = text.split()[-2]
            assert [o["shape"] for o in meta["objects"] if o["color"] == color] == [answer]
        elif question.question_type == "how many":
            assert answer.isdigit()
            if text == "how many objects are there?":
                assert int(answer) == len(meta["objects"])
    existence = [q for q in loaded if q.question_type == "is there a"]
    assert len(existence) == N and sum(q.answers[0] == "yes" for q in existence) == N // 2


def test_scene_questions_cover_every_family_and_perfect_answers_score_100(tmp_path):
    summary = synth.generate(str(tmp_path / "d"), 120, seed=0, image_size=16, workers=1)
    loaded = load_vqa(summary["vqa_questions_json"], summary["vqa_annotations_json"])
    assert {q.question_type for q in loaded} == {"is there a", "what color is the", "what shape is the",
                                                 "how many", "is the", "where is the"}
    assert {q.answer_type for q in loaded} == {"yes/no", "number", "other"}
    relation_answers = {q.answers[0] for q in loaded if q.question_type == "where is the"}
    assert relation_answers <= {"left", "right", "above", "below"}
    perfect = evaluate_vqa({q.question_id: q.answers[0] for q in loaded}, loaded)
    assert perfect.metrics["accuracy"] == 100.0 and perfect.num_unanswered == 0


def test_questions_come_from_the_metadata_and_a_seeded_stream(scenes, tmp_path):
    out, _ = scenes
    written = json.loads((out / "vqa_questions.json").read_text())["questions"]
    metas = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    again = [q["question"] for index, meta in enumerate(metas)
             for q in scene_questions(meta, question_rng(5, index), want_yes=index % 2 == 0)]
    assert again == [q["question"] for q in written]
    with pytest.raises(ValueError, match="vqa_questions_per_image"):
        synth.generate(str(tmp_path / "bad"), 2, vqa_questions_per_image=0)

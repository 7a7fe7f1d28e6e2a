"""Questions and answers about the built-in scenes, in the VQAv2 format.

Each scene (a ``metadata.jsonl`` record: ``objects`` with color/shape, ``relations``, ``counts``) gets one
existence question, a relation question when the scene has a usable relation, then questions from the other
families it supports, drawn in a random order, up to ``per_image``:

    existence  "is there a red circle?"                         yes/no  (yes for even image ids: balanced)
    color      "what color is the star?"                        other   (only for a shape seen once)
    shape      "what shape is the blue object?"                 other   (only for a colour seen once)
    count      "how many red circles are there?" / "... objects"  number  (digits, "0" for an absent class)
    relation   "is the red circle to the left of the blue star?" yes/no, or "where is the red circle relative
               to the blue star?" -> left | right | above | below  (only unambiguous relations between objects
               whose names are unique in the scene; "no" asks the opposite relation)

Answers are exact by construction, so the 10 annotator answers of each question are identical. Everything
depends only on (seed, image index, metadata): one ``numpy.random.Generator`` per image, separate from the one
that drew the scene, so adding questions changes no image or caption.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .scenes import CLASS_NAMES, PLURALS, RELATION_WORDS, article

ANSWERS_PER_QUESTION = 10
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
WHERE = {"left of": "left", "right of": "right", "above": "above", "below": "below"}
_STREAM = 2  # third word of the per-image seed: keeps this stream apart from the scene's ([seed, index])


def question_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, _STREAM])


def _question(text: str, answer: str, question_type: str, answer_type: str) -> dict[str, str]:
    return {"question": text, "answer": answer, "question_type": question_type, "answer_type": answer_type}


def _pick(options: list, rng: np.random.Generator) -> Any:
    return options[int(rng.integers(len(options)))]


def _existence(meta: dict, rng: np.random.Generator, want_yes: bool) -> dict[str, str]:
    present = list(meta["counts"])
    absent = [name for name in CLASS_NAMES if name not in meta["counts"]]
    name = _pick(present if want_yes else absent, rng)
    return _question(f"is there {article(name)} {name}?", "yes" if want_yes else "no", "is there a", "yes/no")


def _color(objects: list[dict], rng: np.random.Generator) -> dict[str, str] | None:
    shapes = [obj["shape"] for obj in objects]
    unique = [obj for obj in objects if shapes.count(obj["shape"]) == 1]
    if not unique:
        return None
    obj = _pick(unique, rng)
    return _question(f"what color is the {obj['shape']}?", obj["color"], "what color is the", "other")


def _shape(objects: list[dict], rng: np.random.Generator) -> dict[str, str] | None:
    colors = [obj["color"] for obj in objects]
    unique = [obj for obj in objects if colors.count(obj["color"]) == 1]
    if not unique:
        return None
    obj = _pick(unique, rng)
    return _question(f"what shape is the {obj['color']} object?", obj["shape"], "what shape is the", "other")


def _count(meta: dict, rng: np.random.Generator) -> dict[str, str]:
    objects, counts = meta["objects"], meta["counts"]
    kind = int(rng.integers(4))
    if kind == 0:
        return _question("how many objects are there?", str(len(objects)), "how many", "number")
    if kind == 1:
        shape = _pick(sorted({obj["shape"] for obj in objects}), rng)
        number = sum(obj["shape"] == shape for obj in objects)
        return _question(f"how many {PLURALS[shape]} are there?", str(number), "how many", "number")
    name = _pick(list(counts) if kind == 2 else [n for n in CLASS_NAMES if n not in counts], rng)
    color, shape = name.split()
    return _question(f"how many {color} {PLURALS[shape]} are there?", str(counts.get(name, 0)), "how many",
                     "number")


def _relation(meta: dict, rng: np.random.Generator) -> dict[str, str] | None:
    objects, counts = meta["objects"], meta["counts"]
    names = [f"{obj['color']} {obj['shape']}" for obj in objects]
    usable = [rel for rel in meta.get("relations") or []
              if counts[names[rel["subject"]]] == 1 and counts[names[rel["object"]]] == 1]
    if not usable:
        return None
    rel = _pick(usable, rng)
    subject, target = names[rel["subject"]], names[rel["object"]]
    if rng.random() < 0.5:
        return _question(f"where is the {subject} relative to the {target}?", WHERE[rel["relation"]],
                         "where is the", "other")
    truthful = bool(rng.random() < 0.5)
    asked = rel["relation"] if truthful else OPPOSITE[rel["relation"]]
    return _question(f"is the {subject} {RELATION_WORDS[asked]} the {target}?", "yes" if truthful else "no",
                     "is the", "yes/no")


def scene_questions(meta: dict, rng: np.random.Generator, *, want_yes: bool, per_image: int = 3
                    ) -> list[dict[str, str]]:
    """Up to ``per_image`` questions about one scene, of distinct families: an existence question (answer "yes"
    iff ``want_yes``), a relation question when there is a usable relation, then others in a random order. Each is ``{"question", "answer", "question_type",
    "answer_type"}``."""
    questions = [_existence(meta, rng, want_yes)]
    objects = meta["objects"]
    relation = _relation(meta, rng)
    # Relations exist in few scenes: ask one whenever there is one, so that position is not a rare skill.
    if relation is not None and per_image > 1:
        questions.append(relation)
    others = [question for question in (_color(objects, rng), _shape(objects, rng), _count(meta, rng))
              if question is not None]
    for position in rng.permutation(len(others))[:max(0, per_image - len(questions))]:
        questions.append(others[int(position)])
    return questions


def vqa_files(questions_per_image: list[list[dict[str, str]]], image_paths: list[str], *, seed: int
              ) -> tuple[dict, dict]:
    """The VQAv2 questions and annotations JSON objects for all images (image id = index; question id =
    image id * 1000 + k, as in VQAv2; each question also names its image file, relative to the output folder)."""
    subtype = f"synth-seed{seed}"
    header = {"info": {"description": f"vlmkit synthetic shapes VQA, seed {seed}"}, "license": {},
              "data_type": "vlmkit-shapes", "data_subtype": subtype}
    questions, annotations = [], []
    answer_lists: dict[str, list[dict]] = {}  # one shared (read-only) list per distinct answer: 10x fewer dicts
    for image_id, (asked, image_path) in enumerate(zip(questions_per_image, image_paths)):
        for k, item in enumerate(asked):
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": item["question"], "question_id": question_id,
                              "image": image_path})
            answers = answer_lists.get(item["answer"])
            if answers is None:
                answers = answer_lists[item["answer"]] = [
                    {"answer": item["answer"], "answer_confidence": "yes", "answer_id": number}
                    for number in range(1, ANSWERS_PER_QUESTION + 1)]
            annotations.append({"question_type": item["question_type"], "multiple_choice_answer": item["answer"],
                                "answers": answers, "image_id": image_id, "answer_type": item["answer_type"],
                                "question_id": question_id})
    return ({**header, "task_type": "Open-Ended", "questions": questions}, {**header, "annotations": annotations})

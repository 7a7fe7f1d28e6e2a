"""Visual question answering data: VQAv2 questions + annotations JSON, and a simple JSONL form.

VQAv2 (``v2_OpenEnded_mscoco_val2014_questions.json`` + ``v2_mscoco_val2014_annotations.json``)::

    questions:   {"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}, ...]}
    annotations: {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                                   "multiple_choice_answer", "answers": [{"answer", "answer_confidence",
                                   "answer_id"}, ... 10]}, ...]}

Images are ``COCO_<split>_<image_id:012d>.jpg`` in an image folder (``images=``, else found beside the files:
``val2014/``, ``../val2014/``, ``images/val2014/``, ``../Images/mscoco/val2014/`` ...); a question with an
``image`` (or ``file_name``) entry names its image explicitly, relative to the questions file (the built-in
scenes do this). JSONL: one ``{"image": path, "question": ..., "answers": [...]}`` per line, or ``"answer": x``
for a single answer (counted as 10 identical answers, so that an exact match scores 1 under the VQA rule);
optional ``question_id`` (default: the line number), ``question_type``, ``answer_type``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .sources import ImageRef

ANSWERS_PER_QUESTION = 10


@dataclass
class VQAQuestion:
    """One question about one image, with its ground-truth answers (empty for unannotated test questions)."""

    question_id: Any  # int in VQAv2; whatever the JSONL says otherwise
    image: ImageRef
    question: str
    answers: list[str] = field(default_factory=list)
    question_type: str | None = None
    answer_type: str | None = None  # "yes/no" | "number" | "other" in VQAv2
    multiple_choice_answer: str | None = None
    image_id: Any = None


def coco_image_name(split: str, image_id: int | str) -> str:
    """The COCO file name of an image id: ``COCO_val2014_000000000042.jpg``."""
    return f"COCO_{split}_{int(image_id):012d}.jpg"


def load_vqa(questions: str | os.PathLike, annotations: str | os.PathLike | None = None, *,
             images: str | os.PathLike | None = None) -> list[VQAQuestion]:
    """Read VQA questions (VQAv2 JSON or JSONL), joined with VQAv2 annotations when given.

    Args:
        questions: a VQAv2 questions JSON, or a JSONL file (which carries its own answers).
        annotations: a VQAv2 annotations JSON (question_id -> answers and types); questions it does not cover
            keep empty answers.
        images: the image folder for VQAv2 image ids (default: looked for beside the questions file).
    """
    path = os.fspath(questions)
    if path.lower().endswith((".jsonl", ".ndjson")):
        if annotations is not None:
            raise ValueError(f"{path}: a JSONL file carries its own answers; give no annotations file")
        return load_vqa_jsonl(path)
    data = _read_json(path)
    if isinstance(data, dict) and "annotations" in data and "questions" not in data:
        raise ValueError(f"{path} is a VQAv2 annotations file; give the questions file first")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{path}: not a VQAv2 questions file (needs a 'questions' list)")
    split = _split_name(path, data)
    annotated = load_vqa_annotations(annotations) if annotations is not None else {}
    entries = data["questions"]
    folder = _image_folder(path, split, entries, images)
    base = os.path.dirname(os.path.abspath(path))
    result = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "question_id" not in entry or "question" not in entry:
            raise ValueError(f"{path}: question {number} needs 'question_id' and 'question'")
        annotation = annotated.get(entry["question_id"], {})
        result.append(VQAQuestion(
            question_id=entry["question_id"],
            image=ImageRef(_image_path(entry, base, folder, split)),
            question=str(entry["question"]),
            answers=list(annotation.get("answers", [])),
            question_type=annotation.get("question_type"),
            answer_type=annotation.get("answer_type"),
            multiple_choice_answer=annotation.get("multiple_choice_answer"),
            image_id=entry.get("image_id"),
        ))
    return result


def load_vqa_annotations(path: str | os.PathLike) -> dict[Any, dict]:
    """VQAv2 annotations as ``{question_id: {"answers": [str, ...], "question_type", "answer_type",
    "multiple_choice_answer", "image_id"}}`` (answers in annotator order)."""
    path = os.fspath(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a VQAv2 annotations file (needs an 'annotations' list)")
    result: dict[Any, dict] = {}
    for number, entry in enumerate(data["annotations"]):
        if not isinstance(entry, dict) or "question_id" not in entry or not isinstance(entry.get("answers"), list):
            raise ValueError(f"{path}: annotation {number} needs 'question_id' and an 'answers' list")
        answers = [str(item["answer"]) if isinstance(item, dict) else str(item) for item in entry["answers"]]
        if entry["question_id"] in result:
            raise ValueError(f"{path}: question_id {entry['question_id']!r} is annotated twice")
        result[entry["question_id"]] = {
            "answers": answers,
            "question_type": entry.get("question_type"),
            "answer_type": entry.get("answer_type"),
            "multiple_choice_answer": entry.get("multiple_choice_answer"),
            "image_id": entry.get("image_id"),
        }
    return result


def load_vqa_jsonl(path: str | os.PathLike) -> list[VQAQuestion]:
    """Read the JSONL form (see the module docstring); image paths are relative to the file's folder."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    result, seen = [], set()
    with open(path, encoding="utf-8-sig") as stream:
        lines = [line for line in stream]
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error})") from None
        if not isinstance(row, dict) or "question" not in row or "image" not in row:
            raise ValueError(f"{path}:{line_number}: each line needs 'image' and 'question'")
        if isinstance(row.get("answers"), list):
            answers = [str(answer) for answer in row["answers"]]
        elif row.get("answer") is not None:
            answers = [str(row["answer"])] * ANSWERS_PER_QUESTION
        else:
            answers = []
        question_id = row.get("question_id", line_number - 1)
        if question_id in seen:
            raise ValueError(f"{path}:{line_number}: question_id {question_id!r} appears twice")
        seen.add(question_id)
        image = str(row["image"])
        result.append(VQAQuestion(
            question_id=question_id,
            image=ImageRef(image if os.path.isabs(image) or "://" in image else os.path.join(base, image)),
            question=str(row["question"]),
            answers=answers,
            question_type=row.get("question_type"),
            answer_type=row.get("answer_type"),
            multiple_choice_answer=row.get("multiple_choice_answer", answers[0] if answers else None),
            image_id=row.get("image_id"),
        ))
    return result


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None


def _split_name(path: str, data: dict) -> str:
    split = data.get("data_subtype")
    if not split:
        found = re.search(r"(train|val|test-dev|test)(\d{4})", os.path.basename(path))
        split = found.group(0) if found else ""
    # test-dev questions are a subset of the test images, which are named COCO_test2015_*.
    return re.sub(r"^test-dev", "test", str(split))


def _explicit_image(entry: dict) -> str | None:
    for key in ("image", "file_name", "image_path"):
        if entry.get(key):
            return str(entry[key])
    return None


def _image_folder(path: str, split: str, entries: list, images: str | os.PathLike | None) -> str:
    """Where ``COCO_<split>_<id>.jpg`` files live, decided once from the first question with an image id."""
    if images is not None:
        return os.fspath(images)
    folder = os.path.dirname(os.path.abspath(path))
    parent = os.path.dirname(folder)
    candidates = [folder, os.path.join(folder, "images")]
    if split:
        candidates += [os.path.join(root, *middle, split) for root in (folder, parent)
                       for middle in ((), ("images",), ("Images",), ("Images", "mscoco"))]
    candidates.append(os.path.join(parent, "images"))
    first = next((e for e in entries if isinstance(e, dict) and not _explicit_image(e) and "image_id" in e), None)
    if first is not None and split:
        name = coco_image_name(split, first["image_id"])
        for candidate in candidates:
            if os.path.exists(os.path.join(candidate, name)):
                return candidate
    return os.path.join(parent, split) if split else folder


def _image_path(entry: dict, base: str, folder: str, split: str) -> str:
    explicit = _explicit_image(entry)
    if explicit is not None:
        return explicit if os.path.isabs(explicit) or "://" in explicit else os.path.join(base, explicit)
    if "image_id" not in entry or not split:
        return ""  # reading it reports missing_file
    return os.path.join(folder, coco_image_name(split, entry["image_id"]))


def is_vqa_file(path: str | os.PathLike) -> bool:
    """A VQAv2 questions JSON or a JSONL whose first row has a ``question`` (cheap: reads little)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith((".jsonl", ".ndjson")):
        with open(path, encoding="utf-8-sig") as stream:
            for line in stream:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        return False
                    return isinstance(row, dict) and "question" in row
        return False
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8-sig") as stream:
            head = stream.read(4096)
        return '"questions"' in head
    return False


def training_answer(question: VQAQuestion) -> str:
    """The answer a model is trained to give: VQAv2's ``multiple_choice_answer``, else the most common answer."""
    if question.multiple_choice_answer:
        return question.multiple_choice_answer
    if not question.answers:
        raise ValueError(f"question {question.question_id} has no answers: training on VQA needs annotations "
                         "(set data.vqa_annotations for a VQAv2 questions file)")
    counts: dict[str, int] = {}
    for answer in question.answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=lambda answer: (counts[answer], -question.answers.index(answer)))

"""VQA evaluation: the official accuracy over a set of questions, from predictions or a results file.

    scores = evaluate_vqa({458752000: "2", ...}, load_vqa("questions.json", "annotations.json"))
    scores.metrics  # {"accuracy": 63.2, "accuracy_per_answer_type": {...}, "accuracy_per_question_type": {...}}

Predictions come as a dict (question id -> answer), so a model-driven evaluation and a results file
(:func:`evaluate_vqa_files`, VQA results format ``[{"question_id", "answer"}]``) share one code path. The
questions with a prediction are scored; annotated questions without one are counted in ``num_unanswered``
(the official script refuses such a results file; scoring a subset is handy while developing).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

from vlmkit.eval.metrics_vqa import vqa_accuracy


@dataclass
class VQAResult:
    metrics: dict
    per_question: dict  # question_id -> accuracy in percent
    num_questions: int
    num_unanswered: int


def evaluate_vqa(predictions: Mapping[Hashable, str], questions: Sequence[Any]) -> VQAResult:
    """Score ``predictions`` (question_id -> answer) on ``questions`` (``vlmkit.data.vqa.VQAQuestion`` s, or any
    objects with ``question_id``, ``answers``, ``question_type``, ``answer_type``).

    Question ids are matched as given, or by their string form (a JSON results file may write 42 or "42").
    """
    by_id = {question.question_id: question for question in questions if question.answers}
    by_text = {str(key): key for key in by_id}
    matched: dict[Hashable, str] = {}
    unknown = []
    for key, answer in predictions.items():
        target = key if key in by_id else by_text.get(str(key))
        if target is None:
            unknown.append(key)
        elif target in matched:
            raise ValueError(f"question {key!r} is answered twice")
        else:
            matched[target] = answer if isinstance(answer, str) else str(answer)
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name questions that have no annotated answers, "
                         f"e.g. {unknown[:5]}")
    if not matched:
        raise ValueError("no predictions to score")
    scores = vqa_accuracy(matched, {key: by_id[key].answers for key in matched},
                          question_types={key: by_id[key].question_type for key in matched},
                          answer_types={key: by_id[key].answer_type for key in matched})
    return VQAResult(metrics=scores.metrics, per_question=scores.per_question, num_questions=len(matched),
                     num_unanswered=len(by_id) - len(matched))


def read_vqa_results(path: str | os.PathLike) -> dict[Any, str]:
    """A VQA results file ``[{"question_id": 1, "answer": "yes"}, ...]`` -> {question_id: answer}."""
    from vlmkit.eval.record import read_results_rows

    predictions: dict[Any, str] = {}
    for question_id, answer in read_results_rows(path, "question_id", "answer"):
        if question_id in predictions:
            raise ValueError(f"{os.fspath(path)}: question_id {question_id!r} is answered twice")
        predictions[question_id] = answer
    return predictions


def load_vqa_ground_truth(annotations: str | os.PathLike, questions: str | os.PathLike | None = None) -> list[Any]:
    """The annotated questions to score against: VQAv2 annotations JSON (with its questions JSON when given, for
    the question text and images), or a VQA JSONL file."""
    from vlmkit.data.vqa import VQAQuestion, load_vqa, load_vqa_annotations

    path = os.fspath(annotations)
    if path.lower().endswith((".jsonl", ".ndjson")):
        if questions is not None:
            raise ValueError(f"{path}: a JSONL file carries its own questions; give no questions file")
        return load_vqa(path)
    if questions is not None:
        loaded = load_vqa(questions, path)
        return [question for question in loaded if question.answers]
    from vlmkit.data import ImageRef

    return [VQAQuestion(question_id=key, image=ImageRef(""), question="", answers=entry["answers"],
                        question_type=entry["question_type"], answer_type=entry["answer_type"],
                        multiple_choice_answer=entry["multiple_choice_answer"], image_id=entry["image_id"])
            for key, entry in load_vqa_annotations(path).items()]


def evaluate_vqa_files(results: str | os.PathLike, annotations: str | os.PathLike,
                       questions: str | os.PathLike | None = None) -> VQAResult:
    """Score a VQA results file against VQAv2 annotations (+ questions) or a VQA JSONL file (no model needed)."""
    return evaluate_vqa(read_vqa_results(results), load_vqa_ground_truth(annotations, questions))

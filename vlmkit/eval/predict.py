"""Predictions of a generative model over a dataset, in the results formats the metrics read: captions per image
(COCO results) and answers per question (VQA results)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from vlmkit.capabilities import require
from vlmkit.data.decode import BadSample, decode_image
from vlmkit.data.report import BadSampleReport


def _in_batches(items: Sequence[Any], image_of: Callable[[Any], Any], batch_size: int, report: BadSampleReport,
                progress: bool, what: str):
    """Yield (items, PIL images) in batches; undecodable images are skipped and counted."""
    starts = range(0, len(items), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=what, unit="batch")
    for start in starts:
        kept, images = [], []
        for item in items[start:start + batch_size]:
            try:
                images.append(decode_image(image_of(item).read())[0])
                kept.append(item)
            except BadSample as bad:
                report.skip(bad.reason, key=str(getattr(item, "key", getattr(item, "question_id", ""))))
        if kept:
            yield kept, images


def predict_captions(model: Any, samples: Sequence[Any], *, batch_size: int = 16, progress: bool = False,
                     report: BadSampleReport | None = None, **decoding: Any) -> dict[str, str]:
    """One generated caption per image of ``samples`` (rows of the same image once): {str(key): caption}."""
    from vlmkit.data import group_by_image

    require(model, "generate", "caption images")
    report = report if report is not None else BadSampleReport()
    predictions: dict[str, str] = {}
    for batch, images in _in_batches(group_by_image(list(samples)), lambda s: s.image, batch_size, report,
                                     progress, "captioning"):
        for sample, caption in zip(batch, model.generate(images, **decoding)):
            predictions[str(sample.key)] = caption
    return predictions


def predict_answers(model: Any, questions: Sequence[Any], *, batch_size: int = 16, progress: bool = False,
                    report: BadSampleReport | None = None, **decoding: Any) -> dict[Any, str]:
    """One answer per ``VQAQuestion``: {question_id: answer}."""
    require(model, "answer", "answer questions about images")
    report = report if report is not None else BadSampleReport()
    predictions: dict[Any, str] = {}
    for batch, images in _in_batches(list(questions), lambda q: q.image, batch_size, report, progress, "answering"):
        answers = model.answer(images, [q.question for q in batch], **decoding)
        for question, answer in zip(batch, answers):
            predictions[question.question_id] = answer
    return predictions

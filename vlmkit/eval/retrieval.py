"""Image-text retrieval of a model over a dataset (several captions per image)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from vlmkit.eval.embed import embed_images, embed_texts
from vlmkit.eval.metrics_retrieval import retrieval_metrics


def _with_clean_captions(sample: Any, report: Any) -> Any:
    """The sample with its captions decoded as training decodes them; empty captions are dropped and counted."""
    from dataclasses import replace

    from vlmkit.data import BadSample, decode_caption

    captions = []
    for caption in sample.captions:
        try:
            text, notes = decode_caption(caption, key=sample.key)
        except BadSample as bad:
            if report is not None:
                report.skip(bad.reason, sample.key)
            continue
        if report is not None:
            for note in notes:
                report.convert(note, sample.key)
        captions.append(text)
    return replace(sample, captions=captions)


def evaluate_retrieval(model: Any, samples: Sequence[Any], *, batch_size: int = 256, workers: int = 1,
                       precision: str = "fp32", ks: Sequence[int] = (1, 5, 10), report: Any = None,
                       progress: bool = False) -> dict[str, float]:
    """Recall@K both ways, mean and median ranks. Rows with the same image are grouped into one image with
    several captions; images that cannot be decoded are dropped with their captions (and counted in ``report``).
    """
    from vlmkit.data import group_by_image

    images = [_with_clean_captions(sample, report) for sample in group_by_image(list(samples))]
    images = [sample for sample in images if sample.captions]
    if not images:
        raise ValueError("no image with a caption to evaluate retrieval on")
    image_embeddings, kept = embed_images(model, images, batch_size=batch_size, workers=workers,
                                          precision=precision, report=report, progress=progress)
    texts, text_to_image = [], []
    for position, index in enumerate(kept):
        for caption in images[index].captions:
            texts.append(caption)
            text_to_image.append(position)
    text_embeddings = embed_texts(model, texts, batch_size=batch_size, precision=precision)
    metrics = retrieval_metrics(image_embeddings, text_embeddings, torch.tensor(text_to_image), ks=tuple(ks))
    metrics["num_images"] = len(kept)
    metrics["num_texts"] = len(texts)
    return metrics

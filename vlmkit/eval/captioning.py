"""Captioning evaluation: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D as pycocoevalcap reports them.

    result = caption_metrics({42: "a dog on a beach"}, {42: ["a dog runs on the beach", ...]})
    result.metrics        # {"Bleu_1": ..., "Bleu_4": ..., "METEOR": ..., "ROUGE_L": ..., "CIDEr": ...}
    result.unavailable    # {"SPICE": "why"} (+ "METEOR" without Java)

Predictions come as a dict (image id -> caption), so a model-driven evaluation and a results file
(:func:`evaluate_caption_files`, COCO results format ``[{"image_id", "caption"}]``) share one code path.
Images with a prediction are scored, as pycocoevalcap's example does (CIDEr-D's idf depends on this set);
references of images without a prediction are counted in ``num_unscored_images`` and otherwise ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from vlmkit.eval.coco_java import SPICE_UNAVAILABLE, JavaUnavailable, meteor_scores, ptb_tokenize
from vlmkit.eval.metrics_captioning import bleu_scores, cider_d_scores, rouge_l_scores

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


@dataclass
class CaptioningResult:
    """``metrics`` uses pycocoevalcap's names (fractions, CIDEr-D under "CIDEr"); ``per_image`` the same per image;
    ``unavailable`` maps a metric that could not be computed to the reason; ``tokenizer`` says which
    tokenisation ran ("ptb-java" is pycocoevalcap's own)."""

    metrics: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]
    unavailable: dict[str, str]
    tokenizer: str
    num_images: int
    num_unscored_images: int = 0
    notes: list[str] = field(default_factory=list)


def caption_metrics(predictions: Mapping[Hashable, str | Sequence[str]], references: Mapping[Hashable, Sequence[str]],
                    *, meteor: bool = True, java: bool = True) -> CaptioningResult:
    """Score one predicted caption per image against that image's reference captions.

    Args:
        predictions: image id -> caption (or a one-caption list). Every id must have references.
        references: image id -> reference captions (raw text; tokenised here as pycocoevalcap does).
        meteor: compute METEOR (Java, ~10 s to start).
        java: use Java for PTB tokenisation and METEOR when available; without it (or with ``java=False``)
            tokens come from a Python approximation and METEOR is reported unavailable.
    """
    hypotheses: dict[Hashable, str] = {}
    for key, caption in predictions.items():
        if not isinstance(caption, str):
            if len(caption) != 1:
                raise ValueError(f"image {key!r}: one predicted caption per image, got {len(caption)}")
            caption = caption[0]
        hypotheses[key] = str(caption)
    unknown = [key for key in hypotheses if key not in references]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions name images without reference captions, e.g. {unknown[:5]}")
    if not hypotheses:
        raise ValueError("no predictions to score")
    keys = [key for key in references if key in hypotheses]
    empty = [key for key in keys if not references[key]]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference caption, e.g. {empty[:5]}")

    # One tokenizer run for references and predictions: each line is tokenised on its own, as in two runs.
    combined = {("ref", key): [str(caption) for caption in references[key]] for key in keys}
    combined.update({("pred", key): [hypotheses[key]] for key in keys})
    tokenised, tokenizer = ptb_tokenize(combined, use_java=java)
    refs = {key: tokenised[("ref", key)] for key in keys}
    preds = {key: tokenised[("pred", key)][0] for key in keys}

    bleu, bleu_per_image = bleu_scores(refs, preds)
    rouge, rouge_per_image = rouge_l_scores(refs, preds)
    cider, cider_per_image = cider_d_scores(refs, preds)
    metrics = {f"Bleu_{k + 1}": bleu[k] for k in range(4)}
    per_image = {key: {**{f"Bleu_{k + 1}": bleu_per_image[key][k] for k in range(4)},
                       "ROUGE_L": rouge_per_image[key], "CIDEr": cider_per_image[key]} for key in keys}
    unavailable = {"SPICE": SPICE_UNAVAILABLE}
    if not meteor:
        unavailable["METEOR"] = "not requested"
    elif not java:
        unavailable["METEOR"] = "METEOR runs in Java, which was not requested"
    else:
        try:
            meteor_score, meteor_per_image = meteor_scores(refs, preds)
        except JavaUnavailable as why:
            unavailable["METEOR"] = f"METEOR needs Java and pycocoevalcap: {why}"
        else:
            metrics["METEOR"] = meteor_score
            for key in keys:
                per_image[key]["METEOR"] = meteor_per_image[key]
    metrics["ROUGE_L"] = rouge
    metrics["CIDEr"] = cider
    notes = [] if tokenizer == "ptb-java" else [f"tokenizer: {tokenizer}; scores may differ from pycocoevalcap's"]
    return CaptioningResult(metrics=metrics, per_image=per_image, unavailable=dict(sorted(unavailable.items())),
                            tokenizer=tokenizer, num_images=len(keys),
                            num_unscored_images=len(references) - len(keys), notes=notes)


def read_caption_results(path: str | os.PathLike) -> dict[str, str]:
    """A COCO captioning results file ``[{"image_id": 42, "caption": "..."}, ...]`` -> {str(image_id): caption}."""
    from vlmkit.eval.record import read_results_rows

    predictions: dict[str, str] = {}
    for image_id, caption in read_results_rows(path, "image_id", "caption"):
        if str(image_id) in predictions:
            raise ValueError(f"{os.fspath(path)}: image_id {image_id!r} has more than one caption (give one per image)")
        predictions[str(image_id)] = caption
    return predictions


def read_caption_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reference captions per image from any captions source vlmkit reads (``vlmkit.data.load_samples``): a COCO
    captions JSON gives {str(image id): captions}; a CSV/JSONL manifest its ``key`` column (else the row number),
    rows of the same image merged."""
    from vlmkit.data import group_by_image, load_samples

    samples = group_by_image(load_samples(os.fspath(path)))
    references: dict[str, list[str]] = {}
    for sample in samples:
        references.setdefault(str(sample.key), []).extend(_valid_text(caption) for caption in sample.captions)
    return references


def _valid_text(text: str) -> str:
    """Manifest text may hold undecodable bytes as surrogate escapes: they become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def evaluate_caption_files(results: str | os.PathLike, annotations: str | os.PathLike, *, meteor: bool = True,
                           java: bool = True) -> CaptioningResult:
    """Score a COCO results file against a COCO captions annotations file (no model needed)."""
    return caption_metrics(read_caption_results(results), read_caption_references(annotations), meteor=meteor,
                           java=java)

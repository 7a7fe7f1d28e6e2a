"""Zero-shot classification of a model over a labelled dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vlmkit.eval.embed import embed_images, embed_texts
from vlmkit.eval.metrics_zeroshot import (DEFAULT_TEMPLATES, build_classifier, confusion_matrix, zeroshot_logits,
                                          zeroshot_metrics)


@dataclass
class ZeroShotResult:
    metrics: dict[str, float]
    confusion: torch.Tensor  # [C, C], rows = true class
    classnames: list[str]
    num_samples: int
    skipped_unknown_labels: int


def read_classes(value: str | Path | Sequence[str]) -> list[str]:
    """Class names from a file (one per line), a comma-separated string, or a list."""
    if isinstance(value, (list, tuple)):
        names = [str(v).strip() for v in value]
    else:
        path = Path(str(value))
        try:
            is_file = path.is_file()
        except OSError:  # a long comma-separated list is no file name
            is_file = False
        if is_file:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        else:
            names = [part.strip() for part in str(value).split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"no class names in {value!r}: give a file with one class per line or 'cat,dog,...'")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    return names


def evaluate_zeroshot(model: Any, samples: Sequence[Any], classnames: Sequence[str], *,
                      templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 256, workers: int = 1,
                      precision: str = "fp32", report: Any = None, progress: bool = False) -> ZeroShotResult:
    """Classify the labelled samples among ``classnames`` by prompt ensembles (CLIP_benchmark semantics).

    Rows of the same image count once; samples without a label are ignored; a label that is not a class name is an error listing a few of them.
    """
    from vlmkit.data import group_by_image

    classnames = list(classnames)
    index = {name: i for i, name in enumerate(classnames)}
    # a manifest often has one row per caption: classify each image once
    labelled = [s for s in group_by_image(list(samples)) if s.label not in (None, "")]
    if not labelled:
        raise ValueError("no sample has a label: zero-shot evaluation needs a label column (data.label_key)")
    unknown = sorted({s.label for s in labelled if s.label not in index})
    if unknown:
        raise ValueError(f"{len(unknown)} labels are not among the {len(classnames)} classes, e.g. {unknown[:5]}; "
                         "check --classes")
    image_embeddings, kept = embed_images(model, labelled, batch_size=batch_size, workers=workers,
                                          precision=precision, report=report, progress=progress)
    targets = torch.tensor([index[labelled[i].label] for i in kept])
    classifier = build_classifier(lambda texts: embed_texts(model, texts, batch_size=batch_size,
                                                            precision=precision),
                                  classnames, list(templates), batch_size=batch_size)
    logits = zeroshot_logits(image_embeddings, classifier.cpu())
    metrics = zeroshot_metrics(logits, targets)
    confusion = confusion_matrix(logits.argmax(dim=1), targets, len(classnames))
    return ZeroShotResult(metrics=metrics, confusion=confusion, classnames=classnames, num_samples=len(kept),
                          skipped_unknown_labels=0)

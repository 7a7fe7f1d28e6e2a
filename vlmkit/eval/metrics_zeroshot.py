"""Zero-shot classification metrics with CLIP_benchmark semantics.

A class is represented by the mean of the L2-normalised embeddings of its prompts, normalised
again; logits are ``100 * image · W^T``. Reported metrics are top-1 / top-5 accuracy and the mean
per-class recall (balanced accuracy), as in CLIP_benchmark's ``zeroshot_classification``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
]

# CLIP's learned temperature saturates at 100; CLIP_benchmark uses this fixed scale for logits.
LOGIT_SCALE = 100.0


def _format_prompt(template: str, classname: str) -> str:
    # Accept both "{}" (ours) and "{c}" (CLIP_benchmark's template files): format ignores unused args.
    return template.format(classname, c=classname)


@torch.no_grad()
def build_classifier(
    encode_text: Callable[[list[str]], Tensor],
    classnames: list[str],
    templates: list[str],
    batch_size: int = 256,
) -> Tensor:
    """Build zero-shot class weights from prompt embeddings.

    Args:
        encode_text: maps a list of B strings to embeddings ``[B, D]`` (need not be normalised).
        classnames: C class names.
        templates: T prompt templates containing ``{}`` (or ``{c}``).
        batch_size: prompts per ``encode_text`` call; batches span class boundaries so that
            few-template setups still fill each batch.

    Returns:
        ``[C, D]`` float32 tensor on the encoder's device: for each class, the mean of its T
        L2-normalised prompt embeddings, L2-normalised again.
    """
    if not classnames:
        raise ValueError("classnames is empty")
    if not templates:
        raise ValueError("templates is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    num_templates = len(templates)
    prompts = [_format_prompt(t, c) for c in classnames for t in templates]  # class-major order
    class_sums: Tensor | None = None
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        embeddings = encode_text(batch)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
            raise ValueError(
                f"encode_text returned shape {tuple(embeddings.shape)} for {len(batch)} prompts; "
                "expected [B, D]"
            )
        embeddings = F.normalize(embeddings.float(), dim=-1)
        if class_sums is None:
            class_sums = embeddings.new_zeros(len(classnames), embeddings.shape[1])
        # Accumulate per-class sums instead of keeping all C*T embeddings: memory stays [C, D].
        class_index = torch.arange(start, start + len(batch), device=embeddings.device) // num_templates
        class_sums.index_add_(0, class_index, embeddings)
    assert class_sums is not None
    # Dividing by T before normalising doesn't change the direction; normalise the sum directly.
    return F.normalize(class_sums, dim=-1)


def zeroshot_logits(image_embeddings: Tensor, classifier: Tensor) -> Tensor:
    """Zero-shot logits ``100 · image · W^T``.

    Args:
        image_embeddings: ``[N, D]``, L2-normalised.
        classifier: ``[C, D]`` from :func:`build_classifier`.

    Returns:
        ``[N, C]`` float32 logits.
    """
    if image_embeddings.ndim != 2 or classifier.ndim != 2:
        raise ValueError("image_embeddings and classifier must be 2-D ([N, D] and [C, D])")
    if image_embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images {image_embeddings.shape[1]}, classifier {classifier.shape[1]}"
        )
    classifier = classifier.to(image_embeddings.device)
    return LOGIT_SCALE * image_embeddings.float() @ classifier.float().T


def _check_targets(targets: Tensor, num_samples: int, num_classes: int, name: str = "targets") -> None:
    if targets.ndim != 1 or targets.shape[0] != num_samples:
        raise ValueError(f"{name} must have shape [{num_samples}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {targets.dtype}")
    if num_samples and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{int(targets.min())}, {int(targets.max())}]")


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Count (true, predicted) pairs.

    Args:
        predictions: ``[N]`` integer predicted classes.
        targets: ``[N]`` integer true classes.
        num_classes: C.

    Returns:
        ``[C, C]`` int64 tensor; ``matrix[t, p]`` = number of samples of true class t predicted as p.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if predictions.ndim != 1:
        raise ValueError(f"predictions must be 1-D, got shape {tuple(predictions.shape)}")
    _check_targets(predictions, predictions.shape[0], num_classes, "predictions")
    _check_targets(targets, predictions.shape[0], num_classes)
    predictions = predictions.to(targets.device)
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@torch.no_grad()
def zeroshot_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy metrics from zero-shot logits.

    Args:
        logits: ``[N, C]`` scores.
        targets: ``[N]`` integer true classes in ``[0, C)``.

    Returns:
        ``acc1``; ``acc5`` only when C >= 5 (undefined otherwise, as in CLIP_benchmark);
        ``mean_per_class_recall`` = mean over the classes present in ``targets`` of the fraction of
        their samples predicted correctly (balanced accuracy; absent classes are skipped, like
        sklearn's ``balanced_accuracy_score``). Ties between top logits are broken by
        ``torch.argmax`` / ``torch.topk`` order.
    """
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape [N, C] with N, C >= 1, got {tuple(logits.shape)}")
    num_samples, num_classes = logits.shape
    _check_targets(targets, num_samples, num_classes)
    targets = targets.to(logits.device).long()

    predictions = logits.argmax(dim=1)
    metrics: dict[str, float] = {"acc1": (predictions == targets).double().mean().item()}
    if num_classes >= 5:
        top5 = logits.topk(5, dim=1).indices  # [N, 5]
        metrics["acc5"] = (top5 == targets[:, None]).any(dim=1).double().mean().item()

    matrix = confusion_matrix(predictions, targets, num_classes)
    support = matrix.sum(dim=1)
    present = support > 0
    recalls = matrix.diagonal()[present].double() / support[present].double()
    metrics["mean_per_class_recall"] = recalls.mean().item()
    return metrics

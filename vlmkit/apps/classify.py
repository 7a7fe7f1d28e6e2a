"""Zero-shot classification of a few images among labels given at run time."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from vlmkit.capabilities import require
from vlmkit.eval.metrics_zeroshot import DEFAULT_TEMPLATES, build_classifier


@torch.no_grad()
def classify(model: Any, images: Any, labels: Sequence[str], *, templates: Sequence[str] | None = None,
             top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each image, the ``top_k`` labels with their probabilities, best first.

    Each label's text embedding is the mean of its prompt-template embeddings (CLIP's prompt ensemble).
    Probabilities are a softmax over labels of the model's logits for CLIP-style models, and the sigmoid of each
    logit for SigLIP-style models (whose loss scores each pair on its own; they need not sum to 1).
    """
    require(model, "encode_image", "classify images")
    labels = [label.strip() for label in labels if label.strip()]
    if not labels:
        raise ValueError("give at least one label, e.g. --labels cat,dog")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    classifier = build_classifier(model.encode_text, labels, list(templates or DEFAULT_TEMPLATES))
    image_embeddings = model.encode_image(images)
    scale, bias = model.logit_parameters()
    logits = scale * image_embeddings @ classifier.to(image_embeddings.device).t()
    if getattr(model, "architecture", "clip") == "siglip":
        probabilities = torch.sigmoid(logits + (bias or 0.0))
    else:
        probabilities = logits.softmax(dim=-1)
    k = min(top_k, len(labels))
    values, indices = probabilities.topk(k, dim=-1)
    return [[(labels[int(i)], float(v)) for v, i in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values, indices)]

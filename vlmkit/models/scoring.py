"""Scores from embeddings, shared by native contrastive models and the adapters of external checkpoints."""
from __future__ import annotations

from typing import Any

import torch


class ContrastiveScoring:
    """``score`` and ``logits`` for any class with ``encode_image``, ``encode_text`` and ``logit_parameters``."""

    def encode_image(self, images: Any) -> torch.Tensor:  # pragma: no cover - provided by the model
        raise NotImplementedError

    def encode_text(self, texts: Any) -> torch.Tensor:  # pragma: no cover - provided by the model
        raise NotImplementedError

    def logit_parameters(self) -> tuple[float, float | None]:  # pragma: no cover - provided by the model
        """(exp(logit_scale), logit_bias or None): how cosine scores become the model's logits."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: Any, texts: Any) -> torch.Tensor:
        """Cosine similarity of every image with every text: [N_images, N_texts]."""
        return self.encode_image(images) @ self.encode_text(texts).t()

    @torch.no_grad()
    def logits(self, images: Any, texts: Any) -> torch.Tensor:
        """The model's own logits [N_images, N_texts]: exp(logit_scale) x cosine (+ logit_bias for SigLIP)."""
        scale, bias = self.logit_parameters()
        logits = scale * self.score(images, texts)
        return logits + bias if bias is not None else logits

"""Contrastive losses, correct across processes.

Under torchrun, features are all-gathered with gradient and each rank computes its local rows against every
rank's columns ("local loss" in open_clip's terms): the mean of the ranks' losses equals the loss of one big
batch, and so do the gradients once DDP averages them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmkit import distributed


def _gathered_negatives(negative_embeddings: torch.Tensor | None) -> torch.Tensor | None:
    """Every rank's hard-negative text embeddings (counts may differ between ranks)."""
    if negative_embeddings is None:
        return None
    sizes = distributed.gather_sizes(negative_embeddings.shape[0], negative_embeddings.device)
    return distributed.gather_with_grad(negative_embeddings, sizes)


def infonce_loss(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, logit_scale: torch.Tensor,
    negative_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy of CLIP.

    Args:
        image_embeddings: [B, D] L2-normalised, this rank's batch.
        text_embeddings: [B, D] L2-normalised, paired row by row with the images.
        logit_scale: scalar, the *log* temperature t (logits are scaled by exp(t)).
        negative_embeddings: [N, D] hard-negative captions (NegCLIP): extra wrong texts for every image in the
            image->text direction; the text->image direction is unchanged.
    Returns:
        scalar: ½ [CE(image→text) + CE(text→image)] over this rank's rows.
    """
    batch = image_embeddings.shape[0]
    sizes = distributed.gather_sizes(batch, image_embeddings.device)
    all_images = distributed.gather_with_grad(image_embeddings, sizes)
    all_texts = distributed.gather_with_grad(text_embeddings, sizes)
    all_negatives = _gathered_negatives(negative_embeddings)
    if all_negatives is not None:
        all_texts = torch.cat([all_texts, all_negatives])  # labels still point into the first block
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeddings.float() @ all_texts.float().t()  # [B, B*W (+ negatives)]
    logits_per_text = scale * text_embeddings.float() @ all_images.float().t()  # [B, B*W]
    labels = torch.arange(batch, device=image_embeddings.device) + sum(sizes[: distributed.rank()])
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def sigmoid_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    negative_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (hard-negative captions, when given, are extra texts with label -1).

    loss = -(1/B) Σ_i Σ_j log σ(z_ij (exp(t) x_i·y_j + b)) with z = +1 for matching pairs, -1 otherwise;
    this rank's B images against the texts of every rank (other ranks' texts are negatives only).

    Args:
        image_embeddings: [B, D]; text_embeddings: [B, D]; logit_scale: scalar log temperature; logit_bias: scalar.
    """
    batch = image_embeddings.shape[0]
    sizes = distributed.gather_sizes(batch, image_embeddings.device)
    all_texts = distributed.gather_with_grad(text_embeddings, sizes)
    all_negatives = _gathered_negatives(negative_embeddings)
    if all_negatives is not None:
        all_texts = torch.cat([all_texts, all_negatives])
    logits = logit_scale.exp() * image_embeddings.float() @ all_texts.float().t() + logit_bias.float()
    # signs: +1 on this rank's diagonal block, -1 elsewhere, built without a dense label matrix in Python loops.
    signs = -torch.ones_like(logits)
    offset = sum(sizes[: distributed.rank()])
    index = torch.arange(batch, device=logits.device)
    signs[index, index + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / batch

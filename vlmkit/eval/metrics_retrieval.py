"""Image-text retrieval metrics (CLIP_benchmark names) computed in bounded memory.

Names follow CLIP_benchmark: ``image_retrieval_recall@k`` is text→image (a caption retrieves
images), ``text_retrieval_recall@k`` is image→text (an image retrieves captions).

Tie rule: the rank of a query is ``1 + (number of candidates scoring strictly higher than its best
positive)``, so a positive tied with negatives counts as ranked first among them (optimistic).
CLIP_benchmark uses ``topk``, which breaks ties arbitrarily; with real-valued embeddings exact ties
are rare and the two agree.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _validate(image_embeddings: Tensor, text_embeddings: Tensor, text_to_image: Tensor, ks: Sequence[int]) -> None:
    if image_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError("image_embeddings and text_embeddings must be 2-D ([N_i, D] and [N_t, D])")
    num_images, num_texts = image_embeddings.shape[0], text_embeddings.shape[0]
    if num_images == 0 or num_texts == 0:
        raise ValueError("need at least one image and one text")
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images {image_embeddings.shape[1]}, texts {text_embeddings.shape[1]}"
        )
    if not image_embeddings.dtype.is_floating_point or not text_embeddings.dtype.is_floating_point:
        raise ValueError("embeddings must be floating point")
    if text_to_image.ndim != 1 or text_to_image.shape[0] != num_texts:
        raise ValueError(f"text_to_image must have shape [{num_texts}], got {tuple(text_to_image.shape)}")
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise ValueError(f"text_to_image must be an integer tensor, got {text_to_image.dtype}")
    low, high = int(text_to_image.min()), int(text_to_image.max())
    if low < 0 or high >= num_images:
        raise ValueError(f"text_to_image must lie in [0, {num_images}), got [{low}, {high}]")
    captions_per_image = torch.bincount(text_to_image.long(), minlength=num_images)
    without_caption = (captions_per_image == 0).nonzero().flatten()
    if without_caption.numel():
        shown = without_caption[:5].tolist()
        raise ValueError(f"{without_caption.numel()} image(s) have no caption, e.g. indices {shown}")
    # A NaN score compares false with everything, which would silently give rank 1 (recall 1).
    if not torch.isfinite(image_embeddings).all() or not torch.isfinite(text_embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


def _rows_per_chunk(num_columns: int, max_scores_in_memory: int) -> int:
    # At least one row per chunk: a single row of scores is the smallest unit we can rank.
    return max(1, max_scores_in_memory // num_columns)


def _text_to_image_ranks(
    image_embeddings: Tensor, text_embeddings: Tensor, text_to_image: Tensor, max_scores_in_memory: int
) -> Tensor:
    """Rank of each text's image among all images: ``[N_t]`` int64, 1-based."""
    num_texts = text_embeddings.shape[0]
    ranks = torch.empty(num_texts, dtype=torch.long, device=text_embeddings.device)
    step = _rows_per_chunk(image_embeddings.shape[0], max_scores_in_memory)
    for start in range(0, num_texts, step):
        stop = min(start + step, num_texts)
        scores = text_embeddings[start:stop] @ image_embeddings.T  # [c, N_i]
        # Read the positive from the same matrix (not a separate dot product) so rounding agrees
        # and the positive never beats itself.
        positive = scores.gather(1, text_to_image[start:stop, None])  # [c, 1]
        ranks[start:stop] = 1 + (scores > positive).sum(dim=1)
        del scores  # free this chunk before the next matmul allocates another
    return ranks


def _image_to_text_ranks(
    image_embeddings: Tensor, text_embeddings: Tensor, text_to_image: Tensor, max_scores_in_memory: int
) -> Tensor:
    """Rank of each image's best caption among all texts: ``[N_i]`` int64, 1-based."""
    num_images = image_embeddings.shape[0]
    ranks = torch.empty(num_images, dtype=torch.long, device=image_embeddings.device)
    # Texts grouped by image, so a chunk of images [start, stop) owns one contiguous slice of
    # captions: we gather just those positive scores rather than masking a [c, N_t] matrix.
    texts_by_image = torch.argsort(text_to_image, stable=True)
    captions_per_image = torch.bincount(text_to_image, minlength=num_images)
    first_caption = torch.cat([captions_per_image.new_zeros(1), captions_per_image.cumsum(0)]).tolist()
    step = _rows_per_chunk(text_embeddings.shape[0], max_scores_in_memory)
    for start in range(0, num_images, step):
        stop = min(start + step, num_images)
        scores = image_embeddings[start:stop] @ text_embeddings.T  # [c, N_t]
        positive_texts = texts_by_image[first_caption[start] : first_caption[stop]]  # [p]
        rows = text_to_image[positive_texts] - start  # [p], row of each positive in this chunk
        best_positive = scores.new_full((stop - start,), float("-inf"))
        best_positive.scatter_reduce_(0, rows, scores[rows, positive_texts], reduce="amax")
        # Other positives can't be strictly above the best positive, so this counts negatives only.
        ranks[start:stop] = 1 + (scores > best_positive[:, None]).sum(dim=1)
        del scores
    return ranks


def _median(values: Tensor) -> float:
    """Statistical median (mean of the two middle values for an even count), like ``numpy.median``."""
    ordered = values.double().sort().values
    middle = ordered.shape[0] // 2
    if ordered.shape[0] % 2:
        return ordered[middle].item()
    return ((ordered[middle - 1] + ordered[middle]) / 2).item()


@torch.no_grad()
def retrieval_metrics(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    max_scores_in_memory: int = 2**24,
) -> dict[str, float]:
    """Recall@k and ranks for text→image and image→text retrieval.

    Scores are dot products (pass L2-normalised embeddings for cosine similarity), computed in
    float32 on ``image_embeddings``' device, chunk by chunk so that at most about
    ``max_scores_in_memory`` scores (or one row, if larger) exist at once: the full ``[N_t, N_i]``
    matrix is never built.

    Args:
        image_embeddings: ``[N_i, D]``.
        text_embeddings: ``[N_t, D]``.
        text_to_image: ``[N_t]`` integer; caption j describes image ``text_to_image[j]``. Every
            image needs at least one caption (ValueError otherwise).
        ks: cut-offs for recall@k.
        max_scores_in_memory: upper bound on scores per chunk.

    Returns:
        ``image_retrieval_recall@{k}`` (text→image: share of texts whose image is in the top k),
        ``text_retrieval_recall@{k}`` (image→text: share of images with any caption in the top k),
        ``text_to_image_mean_rank``, ``text_to_image_median_rank``, ``image_to_text_mean_rank``,
        ``image_to_text_median_rank`` (1-based rank of the best positive; see the module's tie rule).
    """
    if max_scores_in_memory < 1:
        raise ValueError(f"max_scores_in_memory must be >= 1, got {max_scores_in_memory}")
    _validate(image_embeddings, text_embeddings, text_to_image, ks)
    device = image_embeddings.device
    images = image_embeddings.float()
    texts = text_embeddings.to(device=device, dtype=torch.float32)
    text_to_image = text_to_image.to(device=device, dtype=torch.long)

    t2i_ranks = _text_to_image_ranks(images, texts, text_to_image, max_scores_in_memory)
    i2t_ranks = _image_to_text_ranks(images, texts, text_to_image, max_scores_in_memory)

    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{int(k)}"] = (t2i_ranks <= k).double().mean().item()
        metrics[f"text_retrieval_recall@{int(k)}"] = (i2t_ranks <= k).double().mean().item()
    metrics["text_to_image_mean_rank"] = t2i_ranks.double().mean().item()
    metrics["text_to_image_median_rank"] = _median(t2i_ranks)
    metrics["image_to_text_mean_rank"] = i2t_ranks.double().mean().item()
    metrics["image_to_text_median_rank"] = _median(i2t_ranks)
    return metrics

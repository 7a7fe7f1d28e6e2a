"""Retrieval metrics checked against brute-force numpy/loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmkit.eval.metrics_retrieval import retrieval_metrics


def reference_retrieval(images: np.ndarray, texts: np.ndarray, text_to_image: list[int], ks) -> dict[str, float]:
    """Full score matrix + Python loops, same tie rule (count strictly higher candidates)."""
    scores = texts.astype(np.float32) @ images.astype(np.float32).T  # [N_t, N_i]
    num_texts, num_images = scores.shape
    t2i_ranks = []
    for j in range(num_texts):
        positive = scores[j, text_to_image[j]]
        t2i_ranks.append(1 + sum(1 for i in range(num_images) if scores[j, i] > positive))
    i2t_ranks = []
    for i in range(num_images):
        captions = [j for j in range(num_texts) if text_to_image[j] == i]
        best = max(scores[j, i] for j in captions)
        i2t_ranks.append(1 + sum(1 for j in range(num_texts) if scores[j, i] > best))
    result = {}
    for k in ks:
        result[f"image_retrieval_recall@{k}"] = float(np.mean([r <= k for r in t2i_ranks]))
        result[f"text_retrieval_recall@{k}"] = float(np.mean([r <= k for r in i2t_ranks]))
    result["text_to_image_mean_rank"] = float(np.mean(t2i_ranks))
    result["text_to_image_median_rank"] = float(np.median(t2i_ranks))
    result["image_to_text_mean_rank"] = float(np.mean(i2t_ranks))
    result["image_to_text_median_rank"] = float(np.median(i2t_ranks))
    return result


def random_problem(seed: int, num_images: int, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    # 1 to 5 captions per image, shuffled so captions of one image aren't contiguous.
    counts = torch.randint(1, 6, (num_images,), generator=generator)
    text_to_image = torch.repeat_interleave(torch.arange(num_images), counts)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=generator)]
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    # Captions near their image so recalls are neither all 0 nor all 1.
    texts = images[text_to_image] + 0.9 * torch.randn(len(text_to_image), dim, generator=generator)
    texts = torch.nn.functional.normalize(texts, dim=1)
    return images, texts, text_to_image


@pytest.mark.parametrize("seed,num_images", [(0, 7), (1, 30), (2, 64)])
def test_matches_brute_force(seed: int, num_images: int) -> None:
    images, texts, text_to_image = random_problem(seed, num_images)
    ks = (1, 3, 5, 10)
    ours = retrieval_metrics(images, texts, text_to_image, ks=ks)
    expected = reference_retrieval(images.numpy(), texts.numpy(), text_to_image.tolist(), ks)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < ours["image_retrieval_recall@1"] < 1  # the problem is not degenerate


@pytest.mark.parametrize("max_scores", [1, 7, 100, 513])
def test_chunked_equals_unchunked(max_scores: int) -> None:
    images, texts, text_to_image = random_problem(3, 50)
    unchunked = retrieval_metrics(images, texts, text_to_image, max_scores_in_memory=10**9)
    chunked = retrieval_metrics(images, texts, text_to_image, max_scores_in_memory=max_scores)
    assert chunked == unchunked


def test_hand_made_example() -> None:
    # 3 images on the axes; 4 captions: image 0 has two captions, one good and one pointing at image 1.
    images = torch.eye(3)
    texts = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # caption of image 0, best match image 0 -> t2i rank 1
            [0.1, 0.9, 0.0],  # caption of image 0, best match image 1 -> t2i rank 2
            [0.0, 0.2, 0.8],  # caption of image 1, ranks image 2 first -> t2i rank 2
            [0.0, 0.0, 1.0],  # caption of image 2 -> t2i rank 1
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 2])
    metrics = retrieval_metrics(images, texts, text_to_image, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 4)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(1.0)
    assert metrics["text_to_image_mean_rank"] == pytest.approx(1.5)
    assert metrics["text_to_image_median_rank"] == pytest.approx(1.5)
    # Image->text: image 0 column scores [1, .1, 0, 0]: best positive caption 0 first -> rank 1.
    # Image 1 column [0, .9, .2, 0]: its caption (.2) is beaten by caption 1 (.9) -> rank 2.
    # Image 2 column [0, 0, .8, 1]: its caption (1.0) first -> rank 1.
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert metrics["image_to_text_mean_rank"] == pytest.approx(4 / 3)
    assert metrics["image_to_text_median_rank"] == 1.0


def test_ties_count_as_optimistic() -> None:
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical images: every score ties
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    metrics = retrieval_metrics(images, texts, torch.tensor([0, 1]), ks=(1,))
    assert metrics["image_retrieval_recall@1"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 1.0


def test_half_precision_input_is_computed_in_float32() -> None:
    images, texts, text_to_image = random_problem(4, 20)
    full = retrieval_metrics(images, texts, text_to_image)
    half = retrieval_metrics(images.bfloat16(), texts.bfloat16(), text_to_image)
    assert set(half) == set(full)
    assert abs(half["image_retrieval_recall@5"] - full["image_retrieval_recall@5"]) < 0.1


def test_image_without_caption_raises() -> None:
    images, texts = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(images, texts, torch.tensor([0, 0, 2]))


@pytest.mark.parametrize(
    "text_to_image",
    [torch.tensor([0, 1, 3]), torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1, 1, 2])],
)
def test_bad_mapping_raises(text_to_image: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        retrieval_metrics(torch.randn(3, 4), torch.randn(3, 4), text_to_image)


def test_non_finite_embeddings_raise() -> None:
    images = torch.randn(3, 4)
    images[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(images, torch.randn(3, 4), torch.arange(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    images, texts, text_to_image = random_problem(5, 40)
    cpu = retrieval_metrics(images, texts, text_to_image, max_scores_in_memory=300)
    gpu = retrieval_metrics(images.cuda(), texts.cuda(), text_to_image.cuda(), max_scores_in_memory=300)
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=0.05), key

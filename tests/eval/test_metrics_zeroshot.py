"""Zero-shot metrics checked against brute-force loop references."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkit.eval.metrics_zeroshot import (
    DEFAULT_TEMPLATES,
    build_classifier,
    confusion_matrix,
    zeroshot_logits,
    zeroshot_metrics,
)


def reference_metrics(logits: list[list[float]], targets: list[int]) -> dict[str, float]:
    """Plain-Python acc1 / acc5 / balanced accuracy (assumes no tied logits)."""
    num_classes = len(logits[0])
    hits1 = hits5 = 0
    correct_per_class = [0] * num_classes
    count_per_class = [0] * num_classes
    for row, target in zip(logits, targets):
        order = sorted(range(num_classes), key=lambda c: -row[c])
        hits1 += order[0] == target
        hits5 += target in order[:5]
        count_per_class[target] += 1
        correct_per_class[target] += order[0] == target
    recalls = [correct_per_class[c] / count_per_class[c] for c in range(num_classes) if count_per_class[c]]
    result = {"acc1": hits1 / len(targets), "mean_per_class_recall": sum(recalls) / len(recalls)}
    if num_classes >= 5:
        result["acc5"] = hits5 / len(targets)
    return result


def test_default_templates_have_a_slot() -> None:
    assert 6 <= len(DEFAULT_TEMPLATES) <= 8
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


@pytest.mark.parametrize("num_classes", [2, 4, 5, 13])
def test_metrics_match_reference_on_random_logits(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    for trial in range(5):
        num_samples = 40 + trial
        logits = torch.randn(num_samples, num_classes, generator=generator)  # continuous: no ties
        # Leave out the last class from the targets so absent classes are exercised.
        high = num_classes - 1 if num_classes > 2 else num_classes
        targets = torch.randint(0, high, (num_samples,), generator=generator)
        ours = zeroshot_metrics(logits, targets)
        expected = reference_metrics(logits.tolist(), targets.tolist())
        assert ours.keys() == expected.keys()
        for key, value in expected.items():
            assert math.isclose(ours[key], value, abs_tol=1e-9), key


def test_hand_made_case() -> None:
    # 3 classes; class 2 never appears as a target.
    logits = torch.tensor(
        [
            [3.0, 1.0, 0.0],  # true 0, predicted 0
            [0.0, 2.0, 1.0],  # true 0, predicted 1
            [0.0, 1.0, 5.0],  # true 0, predicted 2
            [0.0, 4.0, 1.0],  # true 1, predicted 1
        ]
    )
    targets = torch.tensor([0, 0, 0, 1])
    metrics = zeroshot_metrics(logits, targets)
    assert "acc5" not in metrics  # fewer than 5 classes
    assert metrics["acc1"] == pytest.approx(2 / 4)
    # recall class 0 = 1/3, class 1 = 1/1, class 2 absent -> mean of (1/3, 1).
    assert metrics["mean_per_class_recall"] == pytest.approx((1 / 3 + 1) / 2)
    expected_matrix = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0]])
    assert torch.equal(confusion_matrix(logits.argmax(1), targets, 3), expected_matrix)


def test_acc5_hand_made() -> None:
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    metrics = zeroshot_metrics(logits, torch.tensor([4, 5]))  # 5th best: hit; 6th best: miss
    assert metrics["acc1"] == 0.0
    assert metrics["acc5"] == pytest.approx(0.5)
    assert metrics["mean_per_class_recall"] == 0.0


def test_confusion_matrix_matches_loops() -> None:
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 7, (200,), generator=generator)
    targets = torch.randint(0, 7, (200,), generator=generator)
    expected = torch.zeros(7, 7, dtype=torch.long)
    for p, t in zip(predictions.tolist(), targets.tolist()):
        expected[t, p] += 1
    matrix = confusion_matrix(predictions, targets, 7)
    assert matrix.dtype == torch.long and torch.equal(matrix, expected)


def test_bad_targets_raise() -> None:
    with pytest.raises(ValueError):
        zeroshot_metrics(torch.randn(3, 4), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError):
        zeroshot_metrics(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, -1]), torch.tensor([0, 1]), 2)


def test_build_classifier_matches_per_class_loop() -> None:
    torch.manual_seed(0)
    vocabulary: dict[str, torch.Tensor] = {}
    calls: list[int] = []

    def encode_text(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        # Deterministic, unnormalised embedding per string, scaled differently to test normalisation.
        return torch.stack([vocabulary.setdefault(t, torch.randn(8) * (1 + len(t))) for t in texts])

    classnames = ["cat", "dog", "car", "tree", "boat"]
    templates = ["a photo of a {}.", "a {}.", "art of the {c}"]
    classifier = build_classifier(encode_text, classnames, templates, batch_size=4)
    assert classifier.shape == (5, 8)
    assert calls == [4, 4, 4, 3]  # 15 prompts, batches cross class boundaries

    for index, name in enumerate(classnames):
        prompts = [t.replace("{c}", "{}").format(name) for t in templates]
        embeddings = torch.stack([vocabulary[p] for p in prompts])
        mean = (embeddings / embeddings.norm(dim=1, keepdim=True)).mean(0)
        assert torch.allclose(classifier[index], mean / mean.norm(), atol=1e-6)


def test_zeroshot_logits_scale() -> None:
    images = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    classifier = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    logits = zeroshot_logits(images.half(), classifier)
    assert logits.shape == (6, 3) and logits.dtype == torch.float32
    assert torch.allclose(logits, 100 * images @ classifier.T, atol=0.2)  # fp16 inputs
    assert logits.abs().max() <= 100.5

"""Captioning metrics as pycocoevalcap computes them: BLEU-1..4, ROUGE-L and CIDEr-D, in plain Python.

Every function takes already tokenised text (pycocoevalcap's PTB tokenisation, see ``coco_java``) as
``{image_id: [caption, ...]}`` for the references and ``{image_id: caption}`` for the predictions (one each), and
returns ``(corpus_score, {image_id: per_image_score})``. The arithmetic follows pycocoevalcap 1.2 step by step
(same smoothing constants, same order), so the numbers agree with it to ~1e-12:

- BLEU: corpus level from summed clipped n-gram matches and summed guesses; the brevity penalty uses the sum over
  images of the reference length closest to the prediction's (ties go to the shorter reference); n-grams of
  whitespace-split words. Per-image BLEU uses the same formula on one image.
- ROUGE-L: LCS-based F-measure with beta 1.2, taking the best precision and best recall over the references; the
  words are split on single spaces, as pycocoevalcap does. Corpus score: the mean over images.
- CIDEr-D (pycocoevalcap's ``Cider``): tf-idf vectors of 1..4-grams, idf = log(#images) - log(max(1, df)) with
  df counted over the *evaluated* references (so scores depend on the test set), similarity with the prediction's
  weights clipped at the reference's, a Gaussian penalty exp(-delta^2 / (2 sigma^2)) with sigma 6 on the
  difference of the two sentences' *bigram* counts, averaged over n and references, times 10. Corpus score: mean.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Mapping, Sequence

References = Mapping[Hashable, Sequence[str]]
Predictions = Mapping[Hashable, str]

# pycocoevalcap's smoothing: "small" in the denominators, "tiny" in the numerators so that 0 matches give ~0.
_SMALL, _TINY = 1e-9, 1e-15


def _check(references: References, predictions: Predictions) -> list[Hashable]:
    if set(references) != set(predictions):
        missing = [key for key in references if key not in predictions][:5]
        extra = [key for key in predictions if key not in references][:5]
        raise ValueError(f"predictions and references name different images (missing predictions for {missing}, "
                         f"no references for {extra})")
    if not references:
        raise ValueError("nothing to score: no image with a prediction")
    for key, refs in references.items():
        if len(refs) == 0:
            raise ValueError(f"image {key!r} has no reference caption")
    return list(references)


def _ngram_counts(sentence: str, n: int) -> dict[tuple[str, ...], int]:
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for start in range(len(words) - k + 1):
            counts[tuple(words[start:start + k])] += 1
    return counts


def bleu_scores(references: References, predictions: Predictions, n: int = 4
                ) -> tuple[list[float], dict[Hashable, list[float]]]:
    """BLEU-1..n, corpus level (the numbers pycocoevalcap reports) and per image.

    Returns ``([bleu_1, ..., bleu_n], {image_id: [bleu_1, ..., bleu_n]})``.
    """
    keys = _check(references, predictions)
    total_test = total_ref = 0
    total_guess, total_correct = [0] * n, [0] * n
    per_image: dict[Hashable, list[float]] = {}
    for key in keys:
        reference_lengths, max_counts = [], {}
        for reference in references[key]:
            reference_lengths.append(len(reference.split()))
            for ngram, count in _ngram_counts(reference, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        test_counts = _ngram_counts(predictions[key], n)
        test_length = len(predictions[key].split())
        reference_length = min((abs(length - test_length), length) for length in reference_lengths)[1]
        guess = [max(0, test_length - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for ngram, count in test_counts.items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
        per_image[key] = _bleu_from_counts(correct, guess, test_length, reference_length)
        total_test += test_length
        total_ref += reference_length
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
    return _bleu_from_counts(total_correct, total_guess, total_test, total_ref), per_image


def _bleu_from_counts(correct: list[int], guess: list[int], test_length: int, reference_length: int
                      ) -> list[float]:
    scores, product = [], 1.0
    for k in range(len(correct)):
        product *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_length + _TINY) / (reference_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l_scores(references: References, predictions: Predictions, beta: float = 1.2
                   ) -> tuple[float, dict[Hashable, float]]:
    """ROUGE-L: mean over images of the LCS F-measure (best precision and best recall over the references)."""
    keys = _check(references, predictions)
    per_image: dict[Hashable, float] = {}
    for key in keys:
        candidate = predictions[key].split(" ")
        precisions, recalls = [], []
        for reference in references[key]:
            words = reference.split(" ")
            lcs = _lcs_length(words, candidate)
            precisions.append(lcs / float(len(candidate)))
            recalls.append(lcs / float(len(words)))
        precision, recall = max(precisions), max(recalls)
        if precision != 0 and recall != 0:
            per_image[key] = ((1 + beta ** 2) * precision * recall) / float(recall + beta ** 2 * precision)
        else:
            per_image[key] = 0.0
    return _mean(per_image.values()), per_image


def cider_d_scores(references: References, predictions: Predictions, n: int = 4, sigma: float = 6.0
                   ) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D as pycocoevalcap's ``Cider`` computes it (idf from the evaluated references, sigma 6, x10)."""
    keys = _check(references, predictions)
    reference_counts = {key: [_ngram_counts(reference, n) for reference in references[key]] for key in keys}
    document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
    for key in keys:
        for ngram in {ngram for counts in reference_counts[key] for ngram in counts}:
            document_frequency[ngram] += 1
    log_num_images = math.log(float(len(keys)))

    def vectorise(counts: Mapping[tuple[str, ...], int]) -> tuple[list[dict], list[float], int]:
        vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norms = [0.0] * n
        bigrams = 0  # pycocoevalcap's "length": the number of bigrams, not of words
        for ngram, term_frequency in counts.items():
            order = len(ngram) - 1
            weight = float(term_frequency) * (log_num_images - math.log(max(1.0, document_frequency.get(ngram, 0.0))))
            vectors[order][ngram] = weight
            norms[order] += weight ** 2
            if order == 1:
                bigrams += term_frequency
        return vectors, [math.sqrt(value) for value in norms], bigrams

    per_image: dict[Hashable, float] = {}
    for key in keys:
        vectors, norms, length = vectorise(_ngram_counts(predictions[key], n))
        totals = [0.0] * n
        for counts in reference_counts[key]:
            reference_vectors, reference_norms, reference_length = vectorise(counts)
            penalty = math.exp(-(float(length - reference_length) ** 2) / (2 * sigma ** 2))
            for order in range(n):
                value = 0.0
                for ngram, weight in vectors[order].items():
                    reference_weight = reference_vectors[order].get(ngram, 0.0)
                    value += min(weight, reference_weight) * reference_weight
                if norms[order] != 0 and reference_norms[order] != 0:
                    value /= norms[order] * reference_norms[order]
                totals[order] += value * penalty
        per_image[key] = sum(totals) / n / len(reference_counts[key]) * 10.0
    return _mean(per_image.values()), per_image


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))

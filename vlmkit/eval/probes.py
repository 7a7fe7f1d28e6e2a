"""Score compositional probes (ARO, SugarCrepe, counting, word order, Winoground) with any model that can
``score``, by the published rules: a multiple-choice item is right when the true caption scores strictly highest;
a Winoground group's text, image and group scores are those of Thrush et al. (2022).

Contrastive models (``encode_image`` + ``encode_text``) embed each distinct image once and each distinct caption
once, in batches; other models (fusion encoders) get one ``score(image, captions)`` call per image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmkit.capabilities import capabilities_of, require
from vlmkit.data.probes import PROBE_TYPES, ProbeSuite

ImageRef = tuple[str, tuple[float, float, float, float] | None]  # (path, crop)


def choice_correct(scores: torch.Tensor, answer: int) -> bool:
    """Right when the true candidate's score is strictly above every other (a tie is wrong, as in ARO)."""
    others = torch.cat([scores[:answer], scores[answer + 1:]])
    return bool((scores[answer] > others).all())


def winoground_correct(scores: torch.Tensor) -> dict[str, bool]:
    """``scores[c, i]`` = s(caption c, image i), shape [2, 2]. Text: each image prefers its own caption;
    image: each caption prefers its own image; group: both."""
    text = bool(scores[0, 0] > scores[1, 0]) and bool(scores[1, 1] > scores[0, 1])
    image = bool(scores[0, 0] > scores[0, 1]) and bool(scores[1, 1] > scores[1, 0])
    return {"text": text, "image": image, "group": text and image}


@dataclass
class ProbeResult:
    metrics: dict[str, float]  # "{type}_accuracy", "{kind}_text_score" / _image_score / _group_score, mean
    per_type: dict[str, dict[str, Any]]  # type -> {family, negative, num, candidates, accuracy, chance}
    failures: list[dict[str, Any]] = field(default_factory=list)  # {kind, key, image, crop, true, preferred}
    num_items: int = 0
    num_groups: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # images that could not be read: reason -> count


def _load_image(ref: ImageRef) -> Any:
    from vlmkit.data.decode import decode_image

    path, crop = ref
    image, _ = decode_image(Path(path).read_bytes())
    return image.crop(tuple(round(v) for v in crop)) if crop else image


def _read_images(refs: Sequence[ImageRef], skipped: dict[str, int]) -> dict[ImageRef, Any]:
    from vlmkit.data.decode import BadSample

    images = {}
    for ref in refs:
        try:
            images[ref] = _load_image(ref)
        except FileNotFoundError:
            skipped["missing_file"] = skipped.get("missing_file", 0) + 1
        except BadSample as bad:
            skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
    return images


class _Scorer:
    """s(image, caption) for many pairs with as few model calls as possible."""

    def __init__(self, model: Any, batch_size: int) -> None:
        require(model, "score", "score image-caption pairs")
        self.model, self.batch_size = model, batch_size
        have = capabilities_of(model)
        self.embeds = "encode_image" in have and "encode_text" in have
        self.image_embeddings: dict[ImageRef, torch.Tensor] = {}
        self.text_embeddings: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def prepare(self, images: dict[ImageRef, Any], texts: Sequence[str]) -> None:
        if not self.embeds:
            return
        refs = list(images)
        for start in range(0, len(refs), self.batch_size):
            chunk = refs[start:start + self.batch_size]
            embeddings = self.model.encode_image([images[ref] for ref in chunk]).float().cpu()
            self.image_embeddings.update(zip(chunk, embeddings))
        unique = list(dict.fromkeys(texts))
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start:start + self.batch_size]
            self.text_embeddings.update(zip(chunk, self.model.encode_text(chunk).float().cpu()))

    @torch.no_grad()
    def scores(self, ref: ImageRef, image: Any, captions: Sequence[str]) -> torch.Tensor:
        """[len(captions)] scores of ``captions`` for one image."""
        if self.embeds:
            return torch.stack([self.text_embeddings[c] for c in captions]) @ self.image_embeddings[ref]
        return torch.as_tensor(self.model.score([image], list(captions))).float().cpu().reshape(-1)


def evaluate_probes(model: Any, suite: ProbeSuite, *, batch_size: int = 256, max_failures: int = 12,
                    progress: bool = False) -> ProbeResult:
    """Score every item and group of ``suite``. Items whose image cannot be read are skipped and counted."""
    if not len(suite):
        raise ValueError(f"probe suite {suite.name} is empty")
    scorer = _Scorer(model, batch_size)
    refs: list[ImageRef] = list(dict.fromkeys([(item.image, item.crop) for item in suite.items] +
                                              [(path, None) for group in suite.groups for path in group.images]))
    skipped: dict[str, int] = {}
    images = _read_images(refs, skipped)
    if not images:
        raise ValueError(f"none of the {len(refs)} probe images could be read (e.g. {refs[0][0]}): check --images")
    texts = [c for item in suite.items for c in item.captions] + [c for g in suite.groups for c in g.captions]
    scorer.prepare(images, texts)

    outcomes: dict[str, list[bool]] = {}
    candidates: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    iterator: Any = suite.items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(suite.items, desc="probes", leave=False)
    for item in iterator:
        ref = (item.image, item.crop)
        if ref not in images:
            continue
        scores = scorer.scores(ref, images[ref], item.captions)
        right = choice_correct(scores, item.answer)
        outcomes.setdefault(item.kind, []).append(right)
        candidates[item.kind] = max(candidates.get(item.kind, 0), len(item.captions))
        if not right:
            failures.append({"kind": item.kind, "key": item.key, "image": item.image, "crop": item.crop,
                             "true": item.captions[item.answer],
                             "preferred": item.captions[int(scores.argmax())]})
    groups: dict[str, list[dict[str, bool]]] = {}
    for group in suite.groups:
        pair = [(path, None) for path in group.images]
        if any(ref not in images for ref in pair):
            continue
        by_image = [scorer.scores(ref, images[ref], group.captions) for ref in pair]  # [image][caption]
        groups.setdefault(group.kind, []).append(winoground_correct(torch.stack(by_image, dim=1)))
    return _summarise(outcomes, candidates, groups, _spread(failures, max_failures), skipped)


def _spread(failures: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` failures taken in turn from each probe type, so the picture shows every kind of error."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for failure in failures:
        by_kind.setdefault(failure["kind"], []).append(failure)
    chosen: list[dict[str, Any]] = []
    for position in range(max((len(v) for v in by_kind.values()), default=0)):
        chosen += [v[position] for v in by_kind.values() if position < len(v)]
    return chosen[:limit]


def _summarise(outcomes: dict[str, list[bool]], candidates: dict[str, int], groups: dict[str, list[dict[str, bool]]],
               failures: list[dict[str, Any]], skipped: dict[str, int]) -> ProbeResult:
    order: Callable[[str], tuple[int, str]] = lambda kind: (list(PROBE_TYPES).index(kind)
                                                            if kind in PROBE_TYPES else len(PROBE_TYPES), kind)
    metrics: dict[str, float] = {}
    per_type: dict[str, dict[str, Any]] = {}
    for kind in sorted(outcomes, key=order):
        values = outcomes[kind]
        family, negative = PROBE_TYPES.get(kind, (kind.split("_")[0], ""))
        accuracy = sum(values) / len(values)
        metrics[f"{kind}_accuracy"] = accuracy
        per_type[kind] = {"family": family, "negative": negative, "num": len(values),
                          "candidates": candidates[kind], "accuracy": accuracy, "chance": 1 / candidates[kind]}
    if outcomes:
        metrics["mean_accuracy"] = sum(per_type[k]["accuracy"] for k in per_type) / len(per_type)
    for kind, results in sorted(groups.items()):
        entry: dict[str, Any] = {"family": "Winoground", "negative": "same words, other order; other image",
                                 "num": len(results), "candidates": 2}
        for score, chance in (("text", 0.25), ("image", 0.25), ("group", 1 / 6)):
            value = sum(r[score] for r in results) / len(results)
            metrics[f"{kind}_{score}_score"] = value
            entry[f"{score}_score"], entry[f"{score}_chance"] = value, chance
        per_type[kind] = entry
    return ProbeResult(metrics, per_type, failures, sum(len(v) for v in outcomes.values()),
                       sum(len(v) for v in groups.values()), skipped)


def probe_table(result: ProbeResult) -> str:
    """A fixed-width table, one row per probe type (Winoground rows give text / image / group)."""
    lines = [f"{'probe':<27}{'family':<12}{'n':>6}{'way':>5}{'accuracy':>10}{'chance':>8}  negative"]
    for kind, entry in result.per_type.items():
        if "accuracy" in entry:
            lines.append(f"{kind:<27}{entry['family']:<12}{entry['num']:>6}{entry['candidates']:>5}"
                         f"{entry['accuracy']:>10.3f}{entry['chance']:>8.3f}  {entry['negative']}")
        else:
            for score in ("text", "image", "group"):
                lines.append(f"{kind + ' ' + score:<27}{entry['family']:<12}{entry['num']:>6}{'2x2':>5}"
                             f"{entry[score + '_score']:>10.3f}{entry[score + '_chance']:>8.3f}  "
                             f"{entry['negative'] if score == 'text' else ''}".rstrip())
    if "mean_accuracy" in result.metrics:
        lines.append(f"{'mean of choice probes':<27}{'':<12}{result.num_items:>6}{'':>5}"
                     f"{result.metrics['mean_accuracy']:>10.3f}")
    if result.skipped:
        lines.append("skipped unreadable images: " + ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())))
    return "\n".join(lines)


def plot_probe_failures(failures: Sequence[dict[str, Any]], path: str | Path, *, columns: int = 4) -> str:
    """A grid of failed items: the image, its true caption and the caption the model preferred."""
    import textwrap

    from matplotlib.figure import Figure

    from vlmkit.plots import _save_atomic

    count = max(1, len(failures))
    rows = (count + columns - 1) // columns
    figure = Figure(figsize=(3.2 * min(columns, count), 3.6 * rows), layout="constrained")
    for position in range(count):
        axes = figure.add_subplot(rows, min(columns, count), position + 1)
        axes.set_axis_off()
        if not failures:
            axes.text(0.5, 0.5, "no failures", ha="center", va="center", fontsize=12)
            continue
        failure = failures[position]
        try:
            axes.imshow(_load_image((failure["image"], failure.get("crop"))))
        except Exception:  # noqa: BLE001 - a picture of the failures must not fail on one bad image
            axes.text(0.5, 0.5, "image unreadable", ha="center", va="center")
        wrap = lambda text: "\n".join(textwrap.wrap(text, 34))
        axes.set_title(f"[{failure['kind']}]\ntrue: {wrap(failure['true'])}\nchose: {wrap(failure['preferred'])}",
                       fontsize=7.5, loc="left")
    return _save_atomic(figure, path, dpi=100)

"""Image-text dataset and collation.

Each item is decoded safely: a bad sample becomes a small ``{"index", "key", "bad"}`` dict that
the collator drops and reports, so one broken file never stops a run. Randomness (caption
choice, crop) comes from a per-sample RNG derived from (seed, epoch, index) only, so an item is
the same whichever worker loads it and a resumed run sees the same data.
"""
from __future__ import annotations

import hashlib
import random

import torch
from torch.utils.data import Dataset

from .decode import DEFAULT_MAX_PIXELS, BadSample, decode_caption, decode_image
from .sources import Sample
from .tokenizer import Tokenizer
from .transforms import ImageTransform

ON_BAD_SAMPLE = ("skip", "error")
SKIP_HINT = "use --on-bad-sample skip to skip such samples"


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A ``random.Random`` seeded from a hash of (seed, epoch, index).

    blake2b instead of arithmetic mixing so that nearby triples (epoch 1, index 0 vs. epoch 0,
    index N) never collide, and instead of ``hash()`` which is salted per process.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


class ImageTextDataset(Dataset):
    """Samples -> dicts ready for :func:`collate_image_text`.

    Args:
        samples: from :func:`vlmkit.data.load_samples`.
        transform: an ImageTransform; in train mode a random caption and crop are drawn per
            sample, in eval mode the first valid caption and the centre crop are used.
        seed: base seed of the per-sample RNG.
        on_bad_sample: ``"skip"`` returns a bad-item dict, ``"error"`` raises BadSample.
        max_pixels: images with more pixels are bad (``too_large``) before being decoded.
        hard_negatives: this many rewritten captions per item (``negatives``; NegCLIP-style, see
            :mod:`vlmkit.data.hard_negatives`), drawn from the item's own RNG.
        phrase_vocabulary: phrase labels (:mod:`vlmkit.data.phrases`); when given, each item has multi-hot
            ``phrase_targets`` (the labels of all the sample's captions and of its ``meta["statements"]``: what its
            image shows) and
            ``caption_phrase_targets`` (those of the chosen caption), float32 [len(phrase_vocabulary)]; with hard
            negatives and ``phrase_negatives``, also ``negative_phrase_targets`` [len(negatives), K], each
            negative's own labels.
        relation_captions: in train mode, the probability that a sample whose ``meta["statements"]`` (a built-in
            scene's metadata, :func:`vlmkit.data.phrases.attach_scene_statements`) state a spatial relation is
            captioned by one of those statements instead of one of its captions (a true caption too, drawn from
            what the metadata says).
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: ImageTransform,
        *,
        seed: int = 0,
        on_bad_sample: str = "skip",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        hard_negatives: int = 0,
        phrase_vocabulary: list[str] | None = None,
        phrase_negatives: bool = False,
        relation_captions: float = 0.0,
    ) -> None:
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.max_pixels = max_pixels
        self.hard_negatives = int(hard_negatives)
        self.phrase_index = {label: i for i, label in enumerate(phrase_vocabulary or [])}
        self.phrase_negatives = bool(phrase_negatives)
        if not 0.0 <= float(relation_captions) <= 1.0:
            raise ValueError(f"data.relation_captions is a probability in [0, 1], not {relation_captions!r}")
        self.relation_captions = float(relation_captions)
        self._relations: dict[int, list[str]] = {}  # each sample's relation statements, found once per worker
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch so train-mode crops and caption choices change between epochs.

        Workers hold copies of the dataset: call it before an epoch's iterator starts, or wrap
        the dataset in ``vlmkit.data.sampler.EpochIndexed`` so the epoch travels in the index.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _valid_captions(self, sample: Sample) -> list[tuple[str, list[str]]]:
        if not sample.captions:
            raise BadSample("missing_caption", sample.key)
        valid: list[tuple[str, list[str]]] = []
        first_error: BadSample | None = None
        for raw in sample.captions:
            try:
                valid.append(decode_caption(raw, sample.key))
            except BadSample as error:
                first_error = first_error or error
        if not valid:
            assert first_error is not None
            raise first_error
        return valid

    def _phrase_targets(self, captions: list[str]) -> torch.Tensor:
        from .phrases import phrase_labels

        targets = torch.zeros(len(self.phrase_index))
        for caption in captions:
            for label in phrase_labels(caption):
                if label in self.phrase_index:
                    targets[self.phrase_index[label]] = 1.0
        return targets

    def _relation_statements(self, index: int) -> list[str]:
        if index not in self._relations:
            from .phrases import ROLE_MARK, phrase_labels

            statements = (self.samples[index].meta or {}).get("statements", [])
            self._relations[index] = [text for text in statements
                                      if any(ROLE_MARK in label for label in phrase_labels(text))]
        return self._relations[index]

    def load(self, index: int) -> dict:
        """Like ``__getitem__`` but raises BadSample whatever ``on_bad_sample`` says."""
        sample = self.samples[index]
        rng = sample_rng(self.seed, self.epoch, index)
        # A separate crop stream: the crop must not depend on how many captions there are.
        crop_rng = random.Random(rng.getrandbits(64))
        try:
            valid = self._valid_captions(sample)
            caption, caption_notes = valid[rng.randrange(len(valid)) if self.transform.train else 0]
            if self.relation_captions and self.transform.train and rng.random() < self.relation_captions:
                relations = self._relation_statements(index)
                if relations:
                    caption, caption_notes = relations[rng.randrange(len(relations))], []
            data = sample.image.read()
            image, image_notes = decode_image(data, max_pixels=self.max_pixels)
        except BadSample as error:
            error.key = sample.key
            raise
        item = {
            "index": index,
            "key": sample.key,
            "image": self.transform(image, crop_rng),
            "caption": caption,
            "question": sample.meta.get("question") if sample.meta else None,
            "label": sample.label,
            "converted": image_notes + caption_notes,
        }
        if self.hard_negatives:
            from .hard_negatives import hard_negatives

            item["negatives"] = hard_negatives(caption, self.hard_negatives, random.Random(rng.getrandbits(64)))
        if self.phrase_index:
            statements = sample.meta.get("statements", []) if sample.meta else []  # a built-in scene's metadata
            item["phrase_targets"] = self._phrase_targets([text for text, _ in valid] + list(statements))
            item["caption_phrase_targets"] = self._phrase_targets([caption])
            if self.phrase_negatives and "negatives" in item:  # minimal pairs: same words, other labels
                rows = [self._phrase_targets([text]) for text in item["negatives"]]
                item["negative_phrase_targets"] = torch.stack(rows) if rows else torch.zeros(0, len(self.phrase_index))
        return item

    def __getitem__(self, index: int) -> dict:
        """Returns ``{"index", "key", "image": float32 [3, S, S], "caption", "question" (VQA samples;
        else None), "label", "converted": [note, ...]}``, or ``{"index", "key", "bad": reason}`` for a skipped
        bad sample."""
        try:
            return self.load(index)
        except BadSample as error:
            if self.on_bad_sample == "error":
                error.hint = SKIP_HINT
                raise
            return {"index": index, "key": error.key, "bad": error.reason}


def collate_image_text(
    items: list[dict], tokenizer: Tokenizer | None = None, context_length: int = 77
) -> dict:
    """Stack good items and list bad ones.

    Returns:
        ``images`` float32 [B, 3, S, S], ``input_ids`` int64 [B, L] and ``attention_mask``
        bool [B, L] (only with a tokenizer), ``captions``, ``labels``, ``keys`` (lists of B),
        ``indices`` int64 [B], ``bad`` [(key, reason)], ``converted`` [(key, note)]; with phrase targets in the
        items, ``phrase_targets`` and ``caption_phrase_targets`` float32 [B, K] (and ``negative_phrase_targets``
        [N, K], one row per hard negative).
        When every item is bad, ``images`` is None (B = 0, S unknown): the caller skips the
        batch, after recording ``bad`` in its BadSampleReport.
    """
    good = [item for item in items if "bad" not in item]
    batch: dict = {
        "images": torch.stack([item["image"] for item in good]) if good else None,
        "captions": [item["caption"] for item in good],
        "labels": [item["label"] for item in good],
        "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "keys": [item["key"] for item in good],
        "bad": [(item["key"], item["bad"]) for item in items if "bad" in item],
        "converted": [(item["key"], note) for item in good for note in item["converted"]],
    }
    if any(item.get("question") is not None for item in good):  # VQA: the captions are the answers
        batch["questions"] = [item.get("question") or "" for item in good]
        batch["answers"] = batch["captions"]
    if good and "phrase_targets" in good[0]:
        batch["phrase_targets"] = torch.stack([item["phrase_targets"] for item in good])
        batch["caption_phrase_targets"] = torch.stack([item["caption_phrase_targets"] for item in good])
        if any("negative_phrase_targets" in item for item in good):  # in the order of negative_ids
            width = batch["phrase_targets"].shape[1]
            batch["negative_phrase_targets"] = torch.cat([item.get("negative_phrase_targets", torch.zeros(0, width))
                                                          for item in good])
    if tokenizer is not None:
        batch["input_ids"], batch["attention_mask"] = tokenizer.encode(
            batch["captions"], context_length
        )
        if any("negatives" in item for item in good):
            negatives = [text for item in good for text in item.get("negatives", [])]
            batch["negative_counts"] = torch.tensor([len(item.get("negatives", [])) for item in good])
            batch["negative_ids"], batch["negative_mask"] = tokenizer.encode(negatives, context_length)
    return batch


class Collator:
    """Picklable ``collate_fn`` for DataLoader workers: holds the tokenizer and context length."""

    def __init__(self, tokenizer: Tokenizer | None = None, context_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, items: list[dict]) -> dict:
        return collate_image_text(items, self.tokenizer, self.context_length)

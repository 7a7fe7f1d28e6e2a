"""Pass 1 of curation as a batch job (``vlmkit.batch``): every sample's features, on either executor.

:class:`SampleFeatures` decodes each image with vlmkit's safe decoder on a worker (an undecodable one becomes a
bad record with its reason), computes the text and image features of :mod:`vlmkit.curate.features`, and, when a
contrastive model is given, the L2-normalised image embedding (column ``embedding``) and the CLIP score: the
cosine of the image and caption embeddings, as DataComp computes it (NaN for a sample without a caption).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlmkit.batch.jobs import load_job_model
from vlmkit.batch.units import Record
from vlmkit.curate.features import clean_caption, image_features, language_features, text_features
from vlmkit.data.decode import DEFAULT_MAX_PIXELS, decode_image

FEATURES_VERSION = 1  # bump when a feature's definition changes: old work folders are then refused, not mixed


class FeaturePreparer:
    """(record, bytes) -> (model input or None, feature columns); raises BadSample for an undecodable image."""

    def __init__(self, transform: Any, max_pixels: int, language: bool) -> None:
        self.transform, self.max_pixels, self.language = transform, max_pixels, language

    def __call__(self, record: Record, data: bytes) -> tuple[Any, dict[str, Any]]:
        image, _ = decode_image(data, max_pixels=self.max_pixels)
        features = {**image_features(image, data), **text_features(record.caption)}
        if self.language:
            features.update(language_features(record.caption))
        if self.transform is None:
            return None, features
        return (self.transform(image), clean_caption(record.caption) or None), features


class SampleFeatures:
    """Curation features of every sample; with ``model`` also ``embedding`` [B, D] and ``clip_score`` [B].

    ``model`` is anything ``vlmkit.load`` reads (a native run folder, a Hugging Face folder, ``hf:ID``,
    ``open_clip:...``) and must be a spec, not a loaded object, so the Ray executor's actors can load it.
    ``score_captions=False`` embeds images only (reference and evaluation sets).
    """

    def __init__(self, model: str | os.PathLike | None = None, *, batch_size: int = 64, device: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS, language: bool = True, score_captions: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise ValueError("give the curation model as a folder or spec (e.g. runs/clip or "
                             "hf:openai/clip-vit-base-patch32), not a loaded object")
        self.model_spec = None if model is None else (
            str(Path(model).resolve()) if Path(model).exists() else str(model))
        self.batch_size, self.device, self.max_pixels = batch_size, device, max_pixels
        self.language, self.score_captions = language, score_captions
        self._model: Any = None

    def spec(self) -> dict[str, Any]:
        return {"job": "curation_features", "version": FEATURES_VERSION, "model": self.model_spec,
                "max_pixels": self.max_pixels, "language": self.language,
                "score_captions": self.score_captions and self.model_spec is not None}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def setup(self) -> None:
        if self.model_spec is None or self._model is not None:
            return
        needs = {"encode_image": "embed images for curation"}
        if self.score_captions:
            needs["encode_text"] = "compute CLIP scores"
        self._model = load_job_model(self.model_spec, self.device, needs)

    def preparer(self) -> FeaturePreparer:
        self.setup()
        transform = None if self._model is None else self._model.image_transform
        return FeaturePreparer(transform, self.max_pixels, self.language)

    def run(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Image embeddings [B, D] (float32, L2-normalised) and CLIP scores [B] of a batch of prepared items."""
        if self._model is None:
            return {}
        import torch

        images = torch.stack([image for image, _ in items])
        with torch.no_grad():
            image_embeddings = torch.nn.functional.normalize(self._model.encode_image(images).float(), dim=-1)
        outputs = {"embedding": image_embeddings.cpu().numpy().astype(np.float32)}
        if self.score_captions:
            scores = np.full(len(items), np.nan, np.float32)
            captioned = [position for position, (_, caption) in enumerate(items) if caption]
            if captioned:
                with torch.no_grad():
                    text_embeddings = self._model.encode_text([items[position][1] for position in captioned])
                    text_embeddings = torch.nn.functional.normalize(text_embeddings.float(), dim=-1).cpu()
                cosines = (image_embeddings.cpu()[captioned] * text_embeddings).sum(dim=-1)
                scores[captioned] = cosines.numpy()
            outputs["clip_score"] = scores
        return outputs

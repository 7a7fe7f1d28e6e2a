"""Small helpers shared by the adapters of external checkpoints."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from vlmkit.models.scoring import ContrastiveScoring


def as_image_list(images: Any) -> list[Any]:
    """One PIL image or a sequence of them -> a list of RGB PIL images."""
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        raise TypeError("this model takes PIL images here (it applies its own preprocessing); "
                        "a tensor is accepted only by encode_image")
    out = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected PIL images, got {type(image).__name__}")
        out.append(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    """One string or a sequence of strings -> a list of strings."""
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"expected strings, got {type(text).__name__}")
    return texts


def broadcast_texts(texts: str | Sequence[str], count: int, what: str = "questions") -> list[str]:
    """One text for every image, or exactly one text per image."""
    texts = as_text_list(texts)
    if len(texts) == 1:
        return texts * count
    if len(texts) != count:
        raise ValueError(f"got {len(texts)} {what} for {count} images: give one for all, or one per image")
    return texts


def require_transformers() -> Any:
    """Import transformers or say how to install it."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Hugging Face checkpoints need transformers: pip install 'vlmkit[hf]'") from error
    return transformers


class EvalImageTransform:
    """A checkpoint's own PIL -> [3, S, S] preprocessing, shaped like vlmkit's ``ImageTransform`` in eval mode
    (``train`` is False and the crop ``rng`` is ignored) so vlmkit's datasets and loaders can use it."""

    train = False

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Any, rng: Any = None) -> torch.Tensor:
        return self.preprocess(image)


class ExternalModel:
    """What every adapter of an external checkpoint shares: it is always in inference mode (``eval``/``train``
    are accepted so code written for native ``nn.Module`` models runs unchanged)."""

    training = False
    name = ""

    def eval(self) -> "ExternalModel":
        return self

    def train(self, mode: bool = True) -> "ExternalModel":
        if mode:
            raise ValueError(f"{self.name or type(self).__name__} is an external checkpoint used for inference; "
                             "convert it to a native model (vlmkit convert) to train it")
        return self


class ContrastiveAdapter(ContrastiveScoring, ExternalModel):
    """Shared by contrastive adapters: subclasses give ``encode_image``, ``encode_text``, ``logit_parameters``."""

    capabilities = ("encode_image", "encode_text", "score")
    architecture = "clip"  # or "siglip": how scores become probabilities (softmax or sigmoid)

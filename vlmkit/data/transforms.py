"""Image preprocessing for CLIP-style models, without torchvision.

Eval mode reproduces torchvision's ``Resize(S, bicubic) + CenterCrop(S) + ToTensor +
Normalize`` on RGB PIL images (same PIL resize call, same crop offsets, same float32 ops).
Train mode is torchvision's ``RandomResizedCrop`` algorithm driven only by a caller-given
``random.Random`` so each sample's crop is reproducible. There is no horizontal flip: captions
say "left of" / "right of".
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_RESIZE_MODES = ("shortest", "squash")


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, with ``rng`` instead of torch's global RNG.

    Returns:
        (top, left, crop_height, crop_width) in pixels.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = rng.randint(0, height - crop_height)
            left = rng.randint(0, width - crop_width)
            return top, left, crop_height, crop_width
    # Fallback, as torchvision: the largest centred crop whose ratio is within bounds.
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width = width
        crop_height = int(round(crop_width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_height = height
        crop_width = int(round(crop_height * max(ratio)))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) output size: shorter side -> ``size``, longer side truncated.

    Returns:
        (new_width, new_height).
    """
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


CROP_OFFSETS = ("round", "floor")


def center_crop_offsets(width: int, height: int, size: int, mode: str = "round") -> tuple[int, int]:
    """Centre-crop offsets: ``round`` as torchvision's CenterCrop (half-to-even, like Python's round; open_clip),
    ``floor`` as Hugging Face image processors (``(side - size) // 2``). They differ by one pixel when the
    margin is odd.

    Returns:
        (top, left).
    """
    if mode == "floor":
        return (height - size) // 2, (width - size) // 2
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


@dataclass
class ImageTransform:
    """PIL RGB image -> normalised float32 tensor [3, image_size, image_size].

    ``resize_mode`` applies in eval mode: ``shortest`` resizes the shorter side to
    ``image_size`` then centre-crops (CLIP's eval transform); ``squash`` resizes straight to
    ``image_size`` x ``image_size``. In train mode the random crop is always resized to a square,
    like torchvision's RandomResizedCrop.
    """

    image_size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    train: bool = False
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_offset: str = "round"  # round (torchvision, open_clip) | floor (Hugging Face processors)

    def __post_init__(self) -> None:
        # Lists come back from JSON; tuples keep the dataclass hashable-looking and comparable.
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)  # type: ignore[assignment]
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        if any(value <= 0 for value in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"interpolation {self.interpolation!r} unknown; use one of {sorted(_RESAMPLE)}"
            )
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"resize_mode {self.resize_mode!r} unknown; use one of {list(_RESIZE_MODES)}"
            )
        if self.crop_offset not in CROP_OFFSETS:
            raise ValueError(f"crop_offset {self.crop_offset!r} unknown; use one of {list(CROP_OFFSETS)}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        self._mean_tensor = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_tensor = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def resize(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        """Geometry only: the S x S RGB PIL image that :meth:`__call__` normalises."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        size = self.image_size
        resample = _RESAMPLE[self.interpolation]
        if self.train:
            # Unseeded fallback never touches the global `random` state; pass rng to reproduce.
            rng = rng if rng is not None else random.Random()
            top, left, crop_height, crop_width = random_resized_crop_box(
                image.width, image.height, self.crop_scale, self.crop_ratio, rng
            )
            # One PIL call crops and resamples, like torchvision's resized_crop.
            box = (left, top, left + crop_width, top + crop_height)
            return image.resize((size, size), resample, box=box)
        if self.resize_mode == "squash":
            return image.resize((size, size), resample)
        new_width, new_height = shortest_side_size(image.width, image.height, size)
        if (new_width, new_height) != image.size:
            image = image.resize((new_width, new_height), resample)
        top, left = center_crop_offsets(new_width, new_height, size, self.crop_offset)
        return image.crop((left, top, left + size, top + size))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image [H, W] -> float32 [3, H, W], ToTensor then Normalize."""
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        tensor = pixels.permute(2, 0, 1).to(torch.float32).div(255)
        return tensor.sub_(self._mean_tensor).div_(self._std_tensor)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """Returns float32 [3, image_size, image_size]."""
        return self.to_tensor(self.resize(image, rng))

    def eval(self) -> "ImageTransform":
        """A copy in eval mode (centre crop, no randomness)."""
        return dataclasses.replace(self, train=False)

    def to_dict(self) -> dict:
        """JSON-able dict, e.g. for a model's config.json."""
        return {
            field.name: (
                list(getattr(self, field.name))
                if isinstance(getattr(self, field.name), tuple)
                else getattr(self, field.name)
            )
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ImageTransform":
        """Inverse of :meth:`to_dict`; unknown keys are an error so typos are not ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ImageTransform keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def images_to_tensor(
    images: list[Image.Image], transform: ImageTransform, rng: random.Random | None = None
) -> torch.Tensor:
    """Transform and stack PIL images: returns float32 [B, 3, S, S] (B may be 0)."""
    if not images:
        size = transform.image_size
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    return torch.stack([transform(image, rng) for image in images])

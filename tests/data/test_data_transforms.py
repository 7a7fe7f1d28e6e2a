"""ImageTransform: torchvision-equivalent eval geometry, normalisation, reproducible train crops."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from data_helpers import noise_image
from PIL import Image

from vlmkit.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, images_to_tensor
from vlmkit.data.transforms import (center_crop_offsets, random_resized_crop_box,
                                    shortest_side_size)


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """What ToTensor + Normalize(OPENAI) do, written out by hand. pixels: uint8 [H, W, 3]."""
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std


def test_resize_and_crop_geometry_like_torchvision():
    # Resize(30) of 100x60 (W x H): short side 60 -> 30, long side int(30 * 100 / 60) = 50.
    assert shortest_side_size(100, 60, 30) == (50, 30)
    assert shortest_side_size(60, 100, 30) == (30, 50)
    assert shortest_side_size(47, 31, 30) == (45, 30)  # int(30 * 47 / 31) = int(45.48)
    # CenterCrop offsets: int(round((h - s) / 2.0)), Python rounds halves to even.
    assert center_crop_offsets(50, 30, 30) == (0, 10)
    assert center_crop_offsets(33, 31, 30) == (0, 2)  # (33-30)/2 = 1.5 -> 2, (31-30)/2 = 0.5 -> 0


def test_eval_transform_matches_hand_computed_pipeline():
    image = noise_image(100, 60)
    output = ImageTransform(30)(image)
    expected_pixels = np.asarray(
        image.resize((50, 30), Image.Resampling.BICUBIC).crop((10, 0, 40, 30)))
    assert output.shape == (3, 30, 30) and output.dtype == torch.float32
    assert torch.allclose(output, normalise(expected_pixels), atol=1e-6)


def test_normalisation_of_a_flat_image():
    color = (200, 100, 50)
    output = ImageTransform(8)(Image.new("RGB", (20, 10), color))
    for channel in range(3):
        expected = (color[channel] / 255 - OPENAI_CLIP_MEAN[channel]) / OPENAI_CLIP_STD[channel]
        assert torch.allclose(output[channel], torch.full((8, 8), expected), atol=1e-5)


def test_squash_mode_and_small_images_are_upscaled():
    image = noise_image(20, 10)
    squash = ImageTransform(16, resize_mode="squash")(image)
    expected = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC))
    assert torch.allclose(squash, normalise(expected), atol=1e-6)
    assert ImageTransform(16)(image).shape == (3, 16, 16)


def test_non_rgb_input_is_converted():
    assert ImageTransform(8)(Image.new("L", (10, 10), 128)).shape == (3, 8, 8)


def test_train_crop_is_reproducible_with_the_same_rng():
    image = noise_image(80, 60)
    transform = ImageTransform(32, train=True, crop_scale=(0.3, 1.0))
    first = transform(image, random.Random(7))
    assert torch.equal(first, transform(image, random.Random(7)))
    assert not torch.equal(first, transform(image, random.Random(8)))
    state = random.getstate()
    transform(image, random.Random(1))
    assert random.getstate() == state  # the global RNG is never used


def test_train_full_crop_never_flips():
    image = noise_image(40, 40)
    full = ImageTransform(16, train=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    squash = ImageTransform(16, resize_mode="squash")
    for seed in range(5):
        assert torch.equal(full(image, random.Random(seed)), squash(image))


def test_random_resized_crop_box_stays_inside_and_respects_scale():
    rng = random.Random(0)
    for _ in range(200):
        top, left, height, width = random_resized_crop_box(90, 70, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + height <= 70 and 0 <= left and left + width <= 90
        assert 0.4 * 90 * 70 <= height * width <= 90 * 70


def test_random_resized_crop_falls_back_to_center_crop():
    # A 1000 x 10 strip cannot hold a ~97 px square crop: torchvision's fallback is the
    # largest centred crop of ratio 4/3 -> height 10, width round(13.33) = 13.
    box = random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0))
    assert box == (0, (1000 - 13) // 2, 10, 13)


def test_eval_copy_and_dict_round_trip():
    transform = ImageTransform(48, train=True, crop_scale=(0.8, 1.0), interpolation="bilinear")
    evaluation = transform.eval()
    assert transform.train and not evaluation.train and evaluation.image_size == 48
    data = json.loads(json.dumps(transform.to_dict()))
    assert data["mean"] == list(OPENAI_CLIP_MEAN)
    assert ImageTransform.from_dict(data) == transform


@pytest.mark.parametrize("bad", [{"interpolation": "cubic"}, {"resize_mode": "fit"},
                                 {"crop_scale": (0.5, 1.5)}, {"std": (1.0, 0.0, 1.0)}])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        ImageTransform(32, **bad)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="imgsize"):
        ImageTransform.from_dict({"image_size": 32, "imgsize": 3})


def test_images_to_tensor():
    images = [noise_image(30, 20, seed) for seed in range(3)]
    batch = images_to_tensor(images, ImageTransform(16))
    assert batch.shape == (3, 3, 16, 16)
    assert torch.equal(batch[1], ImageTransform(16)(images[1]))
    assert images_to_tensor([], ImageTransform(16)).shape == (0, 3, 16, 16)

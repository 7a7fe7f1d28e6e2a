"""Fuyu-style decoder-only VLM (Adept, 2023): no vision encoder.

Each image is cut into patches (patch_size x patch_size x 3, flattened) and a linear layer projects every patch
straight into the decoder's input sequence, in raster order, with an image-newline token after each row of patches
(so the decoder can tell the rows apart). Then come the prompt and the target text:

    [bos]  p(0,0) ... p(0,G-1) <image_newline>  ...  p(G-1,0) ... p(G-1,G-1) <image_newline>  prompt  target [eos]

The patch slots are ``<image>`` placeholders whose embeddings the projected patches replace; ``<image_newline>`` is
an ordinary (learned) token. Rotary positions run over the whole sequence, image included. The loss covers only the
target tokens and the end-of-text token. Sequences, loss and decoding are PrefixLM's (``LanguageModelVLM``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from vlmkit.models.clip import PreprocessConfig
from vlmkit.models.prefix_lm import IMAGE_TOKEN, LanguageModelVLM
from vlmkit.models.pretrained import config_from_dict
from vlmkit.models.pretrained import PretrainedMixin
from vlmkit.modules.language import CausalLM, LanguageConfig

IMAGE_NEWLINE_TOKEN = "<image_newline>"


@dataclass
class PatchConfig:
    """How images become patches (named ``vision`` in the model config, as the trainer reads ``vision.image_size``)."""

    image_size: int = 64
    patch_size: int = 8

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


@dataclass
class FuyuConfig:
    vision: PatchConfig = field(default_factory=PatchConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    caption_prompt: str = ""
    question_template: str = "question: {} answer:"
    max_text_length: int = 48  # prompt + target tokens kept per sample
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.language.pretrained:
            raise ValueError("Fuyu trains its own decoder: model.language.pretrained is not supported")
        if self.language.cross_attention:
            raise ValueError("Fuyu is decoder-only: model.language.cross_attention must be false")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FuyuConfig":
        return config_from_dict(cls, data, {"vision": PatchConfig, "language": LanguageConfig,
                                            "preprocess": PreprocessConfig})


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images [B, 3, S, S] -> patches [B, G * G, patch_size * patch_size * 3] in raster order, each flattened as
    (row, column, channel)."""
    batch, channels, height, width = images.shape
    rows, columns = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * columns, patch_size * patch_size * channels)


class Fuyu(LanguageModelVLM, nn.Module, PretrainedMixin):
    """Capabilities: ``generate`` (captions), ``answer`` (VQA), ``loss``."""

    architecture = "fuyu"
    capabilities = ("generate", "answer", "loss")
    special_tokens = (IMAGE_TOKEN, IMAGE_NEWLINE_TOKEN)  # the trainer adds these to the tokenizer it trains
    vocabulary_section = "language"

    def __init__(self, config: FuyuConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.patch_projection = nn.Linear(config.vision.patch_dim, config.language.width)
        self.language = CausalLM(config.language)
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, config: dict[str, Any] | FuyuConfig, tokenizer: Any = None) -> "Fuyu":
        if isinstance(config, dict):
            config = FuyuConfig.from_dict(config)
        return cls(config, tokenizer=tokenizer)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @property
    def num_image_tokens(self) -> int:
        """Positions the image takes in the sequence: its patches and one newline per row."""
        grid = self.config.vision.grid
        return grid * (grid + 1)

    def image_slot_ids(self, tokenizer: Any) -> list[int]:
        backend = tokenizer.backend
        row = [backend.token_to_id(IMAGE_TOKEN)] * self.config.vision.grid + [backend.token_to_id(IMAGE_NEWLINE_TOKEN)]
        return row * self.config.vision.grid

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, W] with the projected patches in the ``<image>`` positions (raster order)."""
        images = images.to(self.device, self.dtype)
        if images.shape[-1] != self.config.vision.image_size or images.shape[-2] != self.config.vision.image_size:
            raise ValueError(f"images must be {self.config.vision.image_size} px square, got {tuple(images.shape)}")
        patch_embeddings = self.patch_projection(patchify(images, self.config.vision.patch_size))
        embeddings = self.language.embed_tokens(input_ids)
        slots = (input_ids == self.tokenizer.backend.token_to_id(IMAGE_TOKEN)).unsqueeze(-1)
        return embeddings.masked_scatter(slots, patch_embeddings.to(embeddings.dtype))

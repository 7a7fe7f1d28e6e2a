"""Hugging Face checkpoints: local folders and ``hf:REPO_ID`` resolved offline from the Hugging Face cache.

Contrastive models (``CLIPModel``, ``SiglipModel``) get :class:`HFContrastive`; generative ones (BLIP, ViLT,
LLaVA-style image-text-to-text) get the adapters of :mod:`vlmkit.backends.hf_generative`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlmkit.backends.common import ContrastiveAdapter, EvalImageTransform, as_image_list, as_text_list, require_transformers

CONTRASTIVE_TYPES = ("clip", "siglip", "siglip2")


def resolve_repo(repo_id: str) -> Path:
    """The cached snapshot folder of a Hugging Face repo, without touching the network."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - every failure here means "not in the cache"
        raise FileNotFoundError(
            f"hf:{repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}); where you have internet run "
            f"`hf download {repo_id}` and copy the cache here (or set HF_HOME), or give the model's local folder "
            f"instead") from error


def is_hf_folder(directory: Path) -> bool:
    """A folder with a transformers config.json (a ``model_type``) rather than a vlmkit one."""
    path = directory / "config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    return "model_type" in config and "vlmkit_version" not in config


def load_folder(directory: str | Path, *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> Any:
    """The right adapter for a Hugging Face model folder."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise FileNotFoundError(f"{directory} has a config.json but no weights (*.safetensors or *.bin): download "
                                f"the whole model folder (e.g. `hf download REPO_ID --local-dir {directory}`)")
    if config.get("model_type") in CONTRASTIVE_TYPES:
        return HFContrastive.from_folder(directory, device=device, dtype=dtype)
    from vlmkit.backends.hf_generative import load_generative

    return load_generative(directory, config, device=device, dtype=dtype)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object from ``get_*_features``; 4.x returned the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFPixels:
    """PIL image -> [3, S, S] through a Hugging Face image processor (picklable for DataLoader workers)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.image_processor(as_image_list(image), return_tensors="pt")["pixel_values"][0]


class HFContrastive(ContrastiveAdapter):
    """A transformers CLIP or SigLIP with its own processor. Capabilities: ``encode_image``, ``encode_text``,
    ``score`` (cosine similarities) and ``logits`` (the model's own scaled logits)."""

    def __init__(self, model: Any, processor: Any, name: str = "") -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.model_type = model.config.model_type
        self.architecture = "clip" if self.model_type == "clip" else "siglip"
        # SigLIP was trained on text padded to its full length: its processor pads to max_length, and so do we.
        self.pad_to_max = self.model_type != "clip"
        self.context_length = model.config.text_config.max_position_embeddings

    @classmethod
    def from_folder(cls, directory: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> "HFContrastive":
        transformers = require_transformers()
        model = transformers.AutoModel.from_pretrained(directory, dtype=dtype or torch.float32, local_files_only=True)
        processor = transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)
        if device is not None:
            model.to(device)
        return cls(model, processor, str(directory))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_transform(self) -> EvalImageTransform:
        return EvalImageTransform(HFPixels(self.processor.image_processor))

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def preprocess(self, images: Any) -> torch.Tensor:
        """PIL images -> pixel values [B, 3, S, S] exactly as the checkpoint's image processor makes them."""
        return self.processor.image_processor(as_image_list(images), return_tensors="pt")["pixel_values"]

    def tokenize(self, texts: Any) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.pad_to_max else True
        return dict(self.processor.tokenizer(as_text_list(texts), padding=padding, truncation=True,
                                             max_length=self.context_length, return_tensors="pt"))

    @torch.no_grad()
    def encode_image(self, images: Any) -> torch.Tensor:
        """PIL image(s) or pixel values [B, 3, S, S] -> L2-normalised float32 [B, D]."""
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(0)
        features = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """String(s) or token ids [B, L] (+ mask) -> L2-normalised float32 [B, D]."""
        if isinstance(texts, torch.Tensor):
            inputs = {"input_ids": texts}
            if attention_mask is not None:
                inputs["attention_mask"] = attention_mask
        else:
            inputs = self.tokenize(texts)
        inputs = {key: value.to(self.device) for key, value in inputs.items()
                  if key in ("input_ids", "attention_mask")}
        features = _features(self.model.get_text_features(**inputs))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def logit_parameters(self) -> tuple[float, float | None]:
        bias = getattr(self.model, "logit_bias", None)
        return float(self.model.logit_scale.exp()), (float(bias) if bias is not None else None)

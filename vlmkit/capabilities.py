"""What a model can do. Applications ask for capabilities, never for model classes, so native models and
external checkpoints are interchangeable everywhere."""
from __future__ import annotations

from typing import Any

CAPABILITIES = ("encode_image", "encode_text", "score", "generate", "answer", "loss")
SUGGESTIONS = {
    "encode_image": "a contrastive model (a native CLIP/SigLIP run, or a Hugging Face CLIP/SigLIP folder)",
    "encode_text": "a contrastive model (a native CLIP/SigLIP run, or a Hugging Face CLIP/SigLIP folder)",
    "score": "a contrastive model (a native CLIP/SigLIP run, or a Hugging Face CLIP/SigLIP folder)",
    "generate": "a captioning model, e.g. a Hugging Face BLIP folder or a LLaVA-style image-text-to-text model",
    "answer": "a VQA model, e.g. a Hugging Face ViLT-VQA folder or a LLaVA-style image-text-to-text model",
    "loss": "a native vlmkit model",
}


class CapabilityError(ValueError):
    """The model lacks a capability a task needs."""


def capabilities_of(model: Any) -> tuple[str, ...]:
    """The capability names ``model`` implements (its own ``capabilities`` list when it declares one)."""
    declared = getattr(model, "capabilities", None)
    if declared is not None:
        return tuple(declared)
    return tuple(name for name in CAPABILITIES if callable(getattr(model, name, None)))


def require(model: Any, capability: str, task: str) -> None:
    """Raise a :class:`CapabilityError` that says what to use instead when ``model`` cannot do ``task``."""
    have = capabilities_of(model)
    if capability in have:
        return
    name = getattr(model, "name", None) or type(model).__name__
    raise CapabilityError(f"{name} cannot {task}: it has {', '.join(have) or 'no capabilities'}, not {capability}; "
                          f"use {SUGGESTIONS.get(capability, 'another model')}")


"""Captions and answers from any model with the ``generate`` / ``answer`` capability."""
from __future__ import annotations

from typing import Any

from vlmkit.capabilities import require


def caption(model: Any, images: Any, *, prompt: str | None = None, **decoding: Any) -> list[str]:
    """One caption per image. ``decoding``: max_new_tokens, num_beams, do_sample, top_k, top_p, temperature."""
    require(model, "generate", "caption images")
    return model.generate(images, prompt=prompt, **decoding)


def ask(model: Any, images: Any, questions: str | list[str], **options: Any) -> list[str]:
    """One answer per image: one question for all images, or one per image."""
    require(model, "answer", "answer questions about images")
    return model.answer(images, questions, **options)

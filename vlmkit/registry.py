"""Model families by name. Each entry is ``"module:Class"``, imported only when used.

Adding a family: its own file in ``vlmkit/models``, its tests, one recipe, and one line here. The class provides
``from_config(dict)`` and ``from_pretrained(directory)``; model code never calls the registry.
"""
from __future__ import annotations

import importlib
from typing import Any

MODELS: dict[str, str] = {
    "clip": "vlmkit.models.clip:ContrastiveModel",
    "siglip": "vlmkit.models.clip:ContrastiveModel",
    "prefix_lm": "vlmkit.models.prefix_lm:PrefixLM",
    "coca": "vlmkit.models.coca:CoCa",
    "fuyu": "vlmkit.models.fuyu:Fuyu",
}


def model_class(architecture: str) -> Any:
    """The class that implements ``architecture`` (a key of ``MODELS``)."""
    if architecture not in MODELS:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {', '.join(sorted(MODELS))}")
    module_name, _, class_name = MODELS[architecture].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(model_config: dict, **kwargs: Any) -> Any:
    """Build a fresh model from a recipe's ``model:`` section, which names its ``architecture``."""
    if "architecture" not in model_config:
        raise ValueError("the model section of the recipe needs an 'architecture' key, e.g. architecture: clip")
    return model_class(model_config["architecture"]).from_config(model_config, **kwargs)

"""vlmkit: train, evaluate and use vision-language models.

The public face is small: :func:`load` restores any saved model (a native model folder or a training run),
and the rest lives in submodules (``vlmkit.data``, ``vlmkit.train``, ``vlmkit.eval``) and in the ``vlmkit``
command. Imports are lazy so that ``import vlmkit`` stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "build_model", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load(spec: str, *, device: "str | torch.device | None" = None) -> Any:
    """Load a model from a native model folder or a training run folder (its final or latest checkpoint)."""
    from vlmkit.models.hub import load as _load

    return _load(spec, device=device)


def build_model(model_config: dict, **kwargs: Any) -> Any:
    """Build a fresh model from the ``model:`` section of a recipe (see ``vlmkit.registry``)."""
    from vlmkit.registry import build_model as _build

    return _build(model_config, **kwargs)

"""The HTTP service (``vlmkit serve``): a FastAPI app over one model and an optional search index, and its page.

Needs the ``serve`` extra: ``pip install 'vlmkit[serve]'`` (fastapi, uvicorn, python-multipart).
"""
from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI app; see :func:`vlmkit.serve.app.create_app`."""
    from vlmkit.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]

"""Image search: a FAISS + SQLite index of image embeddings, built through the batch-job layer.

``SearchIndex.open(path).search(vectors, k, where=[...])`` searches by vector; :func:`build_index`,
:func:`add_to_index` and :func:`remove_from_index` maintain an index from images, and :func:`search_text` /
:func:`search_image` embed a query with the index's model first. Build helpers import lazily (they need torch).
"""
from __future__ import annotations

from typing import Any

from vlmkit.search.index import Hit, SearchIndex

__all__ = ["Hit", "SearchIndex", "build_index", "add_to_index", "remove_from_index", "search_text", "search_image",
           "create_index", "add_vectors", "remove_items"]
_LAZY = {"build_index": "build", "add_to_index": "build", "remove_from_index": "build", "search_text": "build",
         "search_image": "build", "create_index": "writer", "add_vectors": "writer", "remove_items": "writer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"vlmkit.search.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vlmkit.search' has no attribute {name!r}")

"""Everyday uses of any model with the right capability: embed, classify, caption, ask.

Each is a Python function here and a ``vlmkit`` subcommand.
"""
from vlmkit.apps.classify import classify
from vlmkit.apps.embed import embed_image_files, embed_texts, write_embeddings
from vlmkit.apps.generate import ask, caption

__all__ = ["ask", "caption", "classify", "embed_image_files", "embed_texts", "write_embeddings"]

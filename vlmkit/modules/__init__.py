"""Building blocks with no task logic: attention, transformer blocks, towers, heads."""
from vlmkit.modules.heads import AttentionPool, ProjectionHead
from vlmkit.modules.text import TextConfig, TextTransformer
from vlmkit.modules.transformer import Transformer, TransformerBlock
from vlmkit.modules.vision import VisionConfig, VisionTransformer

__all__ = [
    "AttentionPool",
    "ProjectionHead",
    "TextConfig",
    "TextTransformer",
    "Transformer",
    "TransformerBlock",
    "VisionConfig",
    "VisionTransformer",
]

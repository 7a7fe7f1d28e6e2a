"""External checkpoints: Hugging Face transformers and open_clip models behind vlmkit's capability interface,
and the weight maps that convert CLIP checkpoints to native vlmkit models and back.

transformers and open_clip are imported only here (and only when used), never by the native model code.
"""

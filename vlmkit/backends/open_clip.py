"""open_clip checkpoints: ``open_clip:ARCH:/path/to/checkpoint``.

With open_clip installed (``pip install 'vlmkit[open_clip]'``) the checkpoint runs through open_clip's own model,
preprocessing and tokenizer (:class:`OpenClipContrastive`). ViT CLIP checkpoints also convert to native vlmkit
models (:func:`vlmkit.backends.clip_convert.native_from_open_clip`), which needs only open_clip's files for the
CLIP BPE vocabulary.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from vlmkit.backends.common import ContrastiveAdapter, EvalImageTransform, as_image_list, as_text_list

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_INSTALL = "pip install 'vlmkit[open_clip]' (open_clip_torch, with a torchvision that matches your torch)"


def importable() -> bool:
    """True when ``import open_clip`` works (it needs torchvision)."""
    if importlib.util.find_spec("open_clip") is None:
        return False
    try:
        import open_clip  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        return False
    return True


def parse_spec(spec: str) -> tuple[str, Path]:
    """``open_clip:ARCH:PATH`` -> (ARCH, PATH)."""
    _, _, rest = spec.partition(":")
    architecture, _, checkpoint = rest.partition(":")
    if not architecture or not checkpoint:
        raise ValueError(f"{spec!r}: write open_clip:ARCH:/path/to/checkpoint, e.g. "
                         "open_clip:ViT-B-32-quickgelu:~/weights/open_clip_pytorch_model.bin")
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"open_clip checkpoint {path} is not on disk: download it where you have internet (e.g. "
            f"`huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model.bin`) "
            f"and give its path")
    return architecture, path


def architecture_settings(architecture: str) -> dict[str, Any]:
    """What a state dict does not say about an architecture: activation, heads, preprocessing."""
    settings: dict[str, Any] = {"activation": "quick_gelu" if "quickgelu" in architecture.lower() else "gelu"}
    if importable():
        import open_clip

        config = open_clip.get_model_config(architecture)
        if config is None:
            raise ValueError(f"open_clip knows no architecture {architecture!r}; see open_clip.list_models()")
        vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
        if config.get("quick_gelu"):
            settings["activation"] = "quick_gelu"
        if "width" in vision:
            settings["vision_heads"] = vision["width"] // vision.get("head_width", 64)
        if "heads" in text:
            settings["text_heads"] = text["heads"]
        pre = config.get("preprocess_cfg") or {}
        if "mean" in pre and "std" in pre:
            settings["preprocess"] = {"mean": list(pre["mean"]), "std": list(pre["std"])}
    return settings


def vocabulary_path() -> Path:
    """open_clip's CLIP BPE merges file, found without importing open_clip (which needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / VOCAB_FILE
            if candidate.exists():
                return candidate
    raise ImportError(f"the CLIP BPE vocabulary ships with open_clip: {_INSTALL}")


def clip_bpe_tokenizer(path: str | Path | None = None) -> Any:
    """vlmkit Tokenizer equal to CLIP's (lower-cased byte-level BPE, <|startoftext|> ... <|endoftext|>),
    built from a CLIP merges file (``bpe_simple_vocab_16e6.txt.gz``) through transformers' CLIPTokenizer."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from vlmkit.data.tokenizer import Tokenizer

    path = Path(path) if path is not None else vocabulary_path()
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    # The first line is a version header; CLIP uses 49152 - 256 - 2 merges (fewer in small test vocabularies).
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1] if line.strip()]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [token + "</w>" for token in alphabet] + ["".join(merge) for merge in merges] + [BOS, EOS]
    # Files rather than in-memory lists: CLIPTokenizer's arguments differ between transformers 4 and 5.
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(merge) for merge in merges) + "\n")
        hf = CLIPTokenizer(str(vocab_file), str(merges_file))
    return Tokenizer(hf.backend_tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS)


class OpenClipContrastive(ContrastiveAdapter):
    """An open_clip CLIP through open_clip itself. Capabilities: ``encode_image``, ``encode_text``, ``score``."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, name: str) -> None:
        self.model, self.image_preprocess, self.tokenizer, self.name = model.eval(), preprocess, tokenizer, name
        self.image_transform = EvalImageTransform(preprocess)
        self.architecture = "siglip" if getattr(model, "logit_bias", None) is not None else "clip"

    @classmethod
    def from_spec(cls, spec: str, *, device: str | torch.device | None = None) -> "OpenClipContrastive":
        architecture, checkpoint = parse_spec(spec)
        if not importable():
            raise ImportError(f"{spec} needs open_clip: {_INSTALL}; or convert it to a native model with "
                              f"`vlmkit convert {spec} --to native --out DIR`")
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=str(checkpoint),
                                                                     device=device or "cpu")
        return cls(model, preprocess, open_clip.get_tokenizer(architecture), spec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self.image_preprocess(image) for image in as_image_list(images)])

    @torch.no_grad()
    def encode_image(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(images)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return self.model.encode_image(images.to(self.device, self.dtype), normalize=True).float()

    @torch.no_grad()
    def encode_text(self, texts: Any) -> torch.Tensor:
        if not isinstance(texts, torch.Tensor):
            texts = self.tokenizer(as_text_list(texts))
        return self.model.encode_text(texts.to(self.device), normalize=True).float()

    def logit_parameters(self) -> tuple[float, float | None]:
        bias = getattr(self.model, "logit_bias", None)
        return float(self.model.logit_scale.exp()), (float(bias) if bias is not None else None)

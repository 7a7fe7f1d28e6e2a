"""Tiny random checkpoints in the layouts of transformers and open_clip, made offline for the backend tests."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image

# A few merges over CLIP's byte alphabet: enough for "a red circle"-style captions to use merged tokens.
MERGES = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("l", "e</w>"), ("b", "l"), ("bl", "u"),
          ("blu", "e</w>"), ("s", "q"), ("t", "h"), ("th", "e</w>")]
TEXTS = ["a red circle", "the blue square left of a red circle", "Circle!!  RED", "ok"]


def write_clip_vocabulary(folder: Path) -> dict[str, Path]:
    """CLIP's vocabulary files, tiny: vocab.json + merges.txt (transformers) and the .txt.gz (open_clip)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m) for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = "#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n"
    (folder / "merges.txt").write_text(lines)
    with gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(lines)
    return {"vocab": folder / "vocab.json", "merges": folder / "merges.txt",
            "gz": folder / "bpe_simple_vocab_16e6.txt.gz"}


def make_hf_clip(folder: Path, *, activation: str = "quick_gelu", image_size: int = 32, seed: int = 0) -> Path:
    """A random transformers CLIPModel with its CLIPProcessor, saved in ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    files = write_clip_vocabulary(folder / "vocab")
    tokenizer = CLIPTokenizer(str(files["vocab"]), str(files["merges"]))
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "hidden_act": activation}
    config = CLIPConfig(
        text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                     "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**common, "image_size": image_size, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    _randomize_norms(model)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_hf_siglip(folder: Path, *, seed: int = 0) -> Path:
    """A random transformers SiglipModel with a SigLIP image processor and a byte-level BPE tokenizer."""
    import torch
    from transformers import (PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel,
                              SiglipProcessor)

    from vlmkit.data import train_bpe

    bpe = train_bpe(TEXTS * 20, vocab_size=300, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe.backend, eos_token="<|endoftext|>",
                                        pad_token="<|pad|>", bos_token="<|startoftext|>")
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = SiglipConfig(text_config={**common, "vocab_size": len(tokenizer), "max_position_embeddings": 12},
                          vision_config={**common, "image_size": 32, "patch_size": 8})
    torch.manual_seed(seed)
    model = SiglipModel(config)
    _randomize_norms(model)
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _randomize_norms(model) -> None:
    """Fresh layer norms are the identity, which would hide a swapped norm in a conversion map."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))


def random_images(count: int = 3, seed: int = 0) -> list[Image.Image]:
    """RGB images of different, odd sizes (so that centre-crop rounding matters)."""
    rng = np.random.default_rng(seed)
    sizes = [(50, 37), (37, 51), (64, 64), (101, 45)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:count]]

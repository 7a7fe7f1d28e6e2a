"""Convert CLIP checkpoints to native vlmkit models and back.

- Hugging Face ``CLIPModel`` folder -> native (:func:`native_from_hf`), native -> Hugging Face folder that
  ``transformers.CLIPModel.from_pretrained`` loads (:func:`export_hf`).
- open_clip ``CLIP`` checkpoint file -> native (:func:`native_from_open_clip`), native -> open_clip state dict file
  (:func:`export_open_clip`).

The weight maps are in :mod:`vlmkit.backends.clip_maps`; the native towers need nothing special for these
checkpoints (class-token pooling, pre/post layer norms, quick_gelu, bias-free linear projections).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from vlmkit.backends import clip_maps
from vlmkit.backends.common import require_transformers
from vlmkit.backends.checkpoint_files import read_state_dict

# PIL resampling filters by the integer Hugging Face processors store.
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PIL_IDS = {name: number for number, name in _PIL_FILTERS.items()}
OPEN_CLIP_HEAD_WIDTH = 64  # open_clip's default: heads = width // 64


def _mlp_ratio(width: int, hidden: int) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ValueError(f"MLP width {hidden} is not expressible as a ratio of width {width}")
    return ratio


# ---- Hugging Face ----------------------------------------------------------------------------------------
def native_config_from_hf(hf_config: Any, image_processor: Any = None) -> dict[str, Any]:
    """A native ContrastiveConfig dict from a ``transformers.CLIPConfig`` (+ its image processor)."""
    vision, text = hf_config.vision_config, hf_config.text_config
    config: dict[str, Any] = {
        "architecture": "clip",
        "embed_dim": hf_config.projection_dim,
        "projection": "linear",
        "init_logit_scale": float(hf_config.logit_scale_init_value),
        "vision": {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.hidden_size,
                   "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads,
                   "mlp_ratio": _mlp_ratio(vision.hidden_size, vision.intermediate_size),
                   "activation": _activation(vision.hidden_act), "pool": "cls", "norm_pre": True,
                   "norm_eps": vision.layer_norm_eps},
        "text": {"vocab_size": text.vocab_size, "context_length": text.max_position_embeddings,
                 "width": text.hidden_size, "layers": text.num_hidden_layers, "heads": text.num_attention_heads,
                 "mlp_ratio": _mlp_ratio(text.hidden_size, text.intermediate_size),
                 "activation": _activation(text.hidden_act), "causal": True, "pool": "eot",
                 "norm_eps": text.layer_norm_eps},
    }
    if image_processor is not None:
        config["preprocess"] = preprocess_from_hf(image_processor, vision.image_size)
    return config


def _activation(name: str) -> str:
    known = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
             "relu": "relu", "silu": "silu"}
    if name not in known:
        raise ValueError(f"activation {name!r} of this checkpoint has no native equivalent ({sorted(known)})")
    return known[name]


def preprocess_from_hf(processor: Any, image_size: int) -> dict[str, Any]:
    """Native PreprocessConfig dict reproducing a Hugging Face CLIP image processor."""
    size = dict(getattr(processor, "size", None) or {})
    crop = getattr(processor, "crop_size", None) or {}
    if getattr(processor, "do_center_crop", False) and "shortest_edge" in size:
        mode = "shortest"
        if size["shortest_edge"] != image_size or crop.get("height", image_size) != image_size:
            raise ValueError(f"the processor resizes to {size['shortest_edge']} and crops to {crop}, but the model "
                             f"takes {image_size} px images; vlmkit's preprocessing resizes and crops to one size")
    else:
        mode = "squash"
    resample = getattr(processor, "resample", 3)
    resample = _PIL_FILTERS.get(int(getattr(resample, "value", resample)), "bicubic")
    return {"mean": list(processor.image_mean), "std": list(processor.image_std), "resize_mode": mode,
            "interpolation": resample, "crop_offset": "floor"}


def native_from_hf(directory: str | Path) -> Any:
    """A Hugging Face CLIP folder -> native ``ContrastiveModel`` with the same weights, preprocessing, tokenizer."""
    transformers = require_transformers()
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.models.clip import ContrastiveModel

    directory = Path(directory)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type != "clip":
        raise ValueError(f"{directory} holds a {model_type!r} model; only CLIP converts to native (load other "
                         f"checkpoints as they are: --model {directory})")
    hf_config = transformers.CLIPConfig.from_pretrained(directory)
    processor = _image_processor(directory)
    model = ContrastiveModel.from_config(native_config_from_hf(hf_config, processor))
    state = clip_maps.to_native(read_state_dict(directory), clip_maps.HF_RULES)
    _load_exactly(model, state, directory)
    if (directory / "tokenizer.json").exists():
        model.tokenizer = Tokenizer.load(directory)
    return model.eval()


def _image_processor(directory: Path) -> Any:
    transformers = require_transformers()
    try:
        return transformers.AutoImageProcessor.from_pretrained(directory)
    except (OSError, ValueError):
        return None  # no preprocessor_config.json: the native defaults (OpenAI CLIP's) apply


def export_hf(model: Any, directory: str | Path) -> Path:
    """Write a native CLIP as a Hugging Face ``CLIPModel`` folder (weights, config, processor, tokenizer)."""
    transformers = require_transformers()
    config = model.config
    _require_exportable(config, "a Hugging Face CLIPModel")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}
    tokenizer = model.tokenizer
    special = {}
    if tokenizer is not None:
        tokenizer_json, state, special = _tokenizer_for_hf(tokenizer, state)
    hf_config = transformers.CLIPConfig(
        projection_dim=config.embed_dim, logit_scale_init_value=float(config.init_logit_scale),
        text_config={"vocab_size": config.text.vocab_size, "hidden_size": config.text.width,
                     "intermediate_size": int(config.text.width * config.text.mlp_ratio),
                     "num_hidden_layers": config.text.layers, "num_attention_heads": config.text.heads,
                     "max_position_embeddings": config.text.context_length, "hidden_act": config.text.activation,
                     "layer_norm_eps": config.text.norm_eps, "projection_dim": config.embed_dim, **special},
        vision_config={"image_size": config.vision.image_size, "patch_size": config.vision.patch_size,
                       "hidden_size": config.vision.width,
                       "intermediate_size": int(config.vision.width * config.vision.mlp_ratio),
                       "num_hidden_layers": config.vision.layers, "num_attention_heads": config.vision.heads,
                       "hidden_act": config.vision.activation, "layer_norm_eps": config.vision.norm_eps,
                       "projection_dim": config.embed_dim})
    hf_model = transformers.CLIPModel(hf_config)
    hf_model.load_state_dict(clip_maps.from_native(state, clip_maps.HF_RULES), strict=True)
    hf_model.save_pretrained(directory)
    pre, size = config.preprocess, config.vision.image_size
    resize = ({"size": {"shortest_edge": size}, "do_center_crop": True, "crop_size": {"height": size, "width": size}}
              if pre.resize_mode == "shortest" else {"size": {"height": size, "width": size}, "do_center_crop": False})
    image_processor = transformers.CLIPImageProcessor(image_mean=list(pre.mean), image_std=list(pre.std),
                                                      resample=_PIL_IDS[pre.interpolation], **resize)
    image_processor.save_pretrained(directory)
    if tokenizer is not None:
        (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json))
        (directory / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
            "model_max_length": config.text.context_length}, indent=2))
    return directory


def _require_exportable(config: Any, target: str) -> None:
    problems = []
    if config.architecture != "clip":
        problems.append(f"architecture is {config.architecture} (only clip)")
    if config.vision.pool != "cls":
        problems.append(f"vision pool is {config.vision.pool} (needs cls)")
    if not config.vision.norm_pre:
        problems.append("vision tower has no pre-norm")
    if config.projection != "linear":
        problems.append(f"projection is {config.projection} (needs linear)")
    if not config.text.causal or config.text.pool != "eot":
        problems.append("text tower is not causal with end-of-text pooling")
    for tower in (config.vision, config.text):
        if tower.activation not in ("gelu", "quick_gelu"):
            problems.append(f"activation {tower.activation} (needs gelu or quick_gelu)")
    if problems:
        raise ValueError(f"this model cannot be written as {target}: " + "; ".join(problems))


def _tokenizer_for_hf(tokenizer: Any, state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """The tokenizer JSON and token ids for transformers' CLIP text tower.

    transformers treats a CLIP whose ``eos_token_id`` is 2 as a legacy checkpoint and pools at the largest token
    id instead of the end-of-text token. vlmkit's own BPE puts end-of-text at id 2, so the export swaps it with
    the last id (in the tokenizer and in the embedding rows): both of transformers' pooling rules then agree.
    """
    data = json.loads(tokenizer.backend.to_str())
    eos, last = tokenizer.eos_id, tokenizer.vocab_size - 1
    if eos == 2 and last != eos:
        _swap_token_ids(data, eos, last)
        embedding = state["text.token_embedding.weight"].clone()
        embedding[[eos, last]] = embedding[[last, eos]]
        state = {**state, "text.token_embedding.weight": embedding}
        remap = {eos: last, last: eos}
    else:
        remap = {}
    special = {name: remap.get(value, value) for name, value in
               (("bos_token_id", tokenizer.bos_id), ("eos_token_id", eos), ("pad_token_id", tokenizer.pad_id))}
    return data, state, special


def _swap_token_ids(data: Any, first: int, second: int) -> None:
    """Swap two ids everywhere a tokenizers JSON stores token ids (vocabulary, added tokens, post-processor)."""
    swap = {first: second, second: first}
    vocab = data["model"]["vocab"]
    for token, token_id in list(vocab.items()):
        vocab[token] = swap.get(token_id, token_id)
    for added in data.get("added_tokens") or []:
        added["id"] = swap.get(added["id"], added["id"])

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "ids" and isinstance(value, list):
                    node[key] = [swap.get(v, v) for v in value]
                elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                    node[key] = [value[0], swap.get(value[1], value[1])]
                else:
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(data.get("post_processor"))


# ---- open_clip -------------------------------------------------------------------------------------------
def native_config_from_open_clip(state: dict[str, torch.Tensor], *, activation: str = "gelu",
                                 vision_heads: int | None = None, text_heads: int | None = None,
                                 preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """Infer a native config from an open_clip CLIP state dict (as open_clip does for OpenAI's weights)."""
    if "visual.conv1.weight" not in state or "visual.proj" not in state:
        raise ValueError("not an open_clip ViT CLIP checkpoint (no visual.conv1.weight / visual.proj); "
                         "only ViT CLIP models with the standard text tower convert to native")
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    positions = state["visual.positional_embedding"].shape[0]
    grid = int(math.isqrt(positions - 1))
    if grid * grid != positions - 1:
        raise ValueError(f"visual.positional_embedding has {positions} rows: not a class token plus a square grid")
    text_width = state["ln_final.weight"].shape[0]

    def layers(prefix: str) -> int:
        return len({key.split(".")[len(prefix.split("."))] for key in state if key.startswith(prefix + ".")})

    def hidden(prefix: str) -> int:
        return state[f"{prefix}.0.mlp.c_fc.weight"].shape[0]

    return {
        "architecture": "clip",
        "embed_dim": state["visual.proj"].shape[1],
        "projection": "linear",
        "vision": {"image_size": patch * grid, "patch_size": patch, "width": vision_width,
                   "layers": layers("visual.transformer.resblocks"),
                   "heads": vision_heads or vision_width // OPEN_CLIP_HEAD_WIDTH,
                   "mlp_ratio": _mlp_ratio(vision_width, hidden("visual.transformer.resblocks")),
                   "activation": activation, "pool": "cls", "norm_pre": True},
        "text": {"vocab_size": state["token_embedding.weight"].shape[0],
                 "context_length": state["positional_embedding"].shape[0], "width": text_width,
                 "layers": layers("transformer.resblocks"),
                 "heads": text_heads or text_width // OPEN_CLIP_HEAD_WIDTH,
                 "mlp_ratio": _mlp_ratio(text_width, hidden("transformer.resblocks")),
                 "activation": activation, "causal": True, "pool": "eot"},
        **({"preprocess": preprocess} if preprocess else {}),
    }


def native_from_open_clip(architecture: str, checkpoint: str | Path) -> Any:
    """An open_clip checkpoint file (ViT CLIP) -> native ``ContrastiveModel`` with the CLIP BPE tokenizer."""
    from vlmkit.backends.open_clip import architecture_settings, clip_bpe_tokenizer
    from vlmkit.models.clip import ContrastiveModel

    state = read_state_dict(checkpoint)
    settings = architecture_settings(architecture)
    config = native_config_from_open_clip(state, **settings)
    model = ContrastiveModel.from_config(config)
    _load_exactly(model, clip_maps.to_native(state, clip_maps.OPEN_CLIP_RULES), Path(checkpoint))
    model.tokenizer = clip_bpe_tokenizer()
    return model.eval()


def export_open_clip(model: Any, path: str | Path) -> Path:
    """Write a native CLIP's weights as an open_clip state dict (safetensors), loadable with
    ``open_clip.create_model(ARCH, pretrained=path)`` for the matching architecture."""
    from vlmkit.models.pretrained import save_state_dict

    _require_exportable(model.config, "an open_clip CLIP")
    state = clip_maps.from_native({k: v.float() for k, v in model.state_dict().items()}, clip_maps.OPEN_CLIP_RULES)
    save_state_dict(state, path)
    return Path(path)


def _load_exactly(model: Any, state: dict[str, torch.Tensor], source: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the inferred native CLIP: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")

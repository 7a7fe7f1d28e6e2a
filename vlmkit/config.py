"""Recipes (YAML), defaults and ``--set key=value`` overrides.

A recipe has four sections: ``model`` (the architecture and its towers), ``tokenizer``, ``data`` and ``train``.
Built-in recipes live in ``vlmkit/recipes/NAME.yaml``; a path to any YAML file works too. The merged config is
saved as ``config.yaml`` in every run folder, so a run can be repeated from that file alone.
"""
from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "tokenizer": {
        "path": None,  # a tokenizer folder (vlmkit or Hugging Face); null trains a byte-level BPE on the captions
        "vocab_size": 4096,
    },
    "data": {
        "format": "auto",  # auto | csv | tsv | jsonl | coco | wds | folder (VQA question files are recognised)
        "vqa_annotations": None,  # VQAv2 annotations JSON for a VQAv2 questions file given as --data
        "image_key": "image",
        "caption_key": "caption",
        "label_key": "label",
        "workers": "auto",  # DataLoader worker processes; auto = 1 per 2 cores, at least 1
        "on_bad_sample": "skip",  # skip (count and report) | error
        "augment": True,  # random resized crop (no flips: captions say left/right)
        "crop_scale": [0.8, 1.0],
        "hard_negatives": 0,  # rewritten captions per sample added to the contrastive loss (NegCLIP); 0 = off
        "phrase_labels": 0,  # phrase pre-training: the vocabulary's size (most frequent caption phrases); 0 = off
        "scene_phrases": True,  # with phrase_labels on built-in scenes: the image learns all its metadata states
        "relation_captions": 0.0,  # on built-in scenes: the chance a sample is captioned by a relation it states
        "phrase_negatives": False,  # with phrase_labels and hard_negatives: the text head learns each negative's too
        "max_pixels": 89_478_485,
    },
    "train": {
        "init": None,  # start from this model (native folder/run, Hugging Face CLIP, hf:ID, open_clip:ARCH:FILE)
        "init_vision": None,  # a VLM's vision tower starts from this contrastive model's (same specs as init)
        "freeze": None,  # lock these parts for this run, replacing the model's own freeze (e.g. [vision])
        "steps": 1000,
        "minutes": None,  # a time budget: with steps: null the schedule is fitted to it; otherwise a cap
        "clock": "wall",  # what train.minutes counts: wall (elapsed time) | cpu (this process's CPU time, all threads)
        "batch_size": 128,  # global batch per optimizer step (split across processes and accumulation)
        "lr": 5.0e-4,
        "lr_scales": {},  # per-module multipliers of lr, by parameter-name prefix, e.g. {visual: 0.1, connector: 1}
        "warmup": 100,  # steps of linear warmup (a number < 1 is a fraction of the steps)
        "phrase_warmup": 0,  # with data.phrase_labels: steps (< 1: a fraction) on the phrase loss alone
        "phrase_weight": 1.0,  # with data.phrase_labels: the phrase loss's weight after phrase_warmup
        "phrase_lr": None,  # with data.phrase_labels: the warm-up's peak learning rate (None: train.lr)
        "relation_text_steps": 0,  # with data.phrase_labels: first, text-only steps on the relation sentences
        "min_lr": 0.0,
        "weight_decay": 0.2,
        "betas": [0.9, 0.98],
        "eps": 1.0e-6,
        "grad_accum": 1,
        "grad_clip": 1.0,  # max gradient norm; null or 0 disables
        "precision": "auto",  # auto | fp32 | bf16-mixed | bf16 (auto measures which is faster here)
        "checkpoint_every": 200,
        "eval_every": 0,  # validation loss and retrieval every N steps (needs --val-data); 0 = at the end only
        "log_every": 10,
        "seed": 0,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "threads": "auto",  # CPU threads per process; auto = cores / processes
    },
}

SECTIONS = ("model", "tokenizer", "data", "train")


def recipe_names() -> list[str]:
    folder = resources.files("vlmkit") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A built-in recipe by name (``clip-tiny``) or any YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        text = path.read_text()
    else:
        resource = resources.files("vlmkit") / "recipes" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ValueError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(recipe_names())} "
                             "(or give a path to a YAML file)")
        text = resource.read_text()
    recipe = yaml.safe_load(text) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {name_or_path} must be a YAML mapping with sections {SECTIONS}")
    unknown = sorted(set(recipe) - set(SECTIONS) - {"description", "expect"})
    if unknown:
        raise ValueError(f"recipe {name_or_path} has unknown sections {unknown}; sections are {SECTIONS}")
    return recipe


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(recipe: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults <- recipe <- ``--set`` overrides; unknown keys in data/train/tokenizer are errors."""
    config = merge(DEFAULTS, read_recipe(recipe))
    for section in ("tokenizer", "data", "train"):
        _check_keys(config[section], DEFAULTS[section], section)
    config.setdefault("model", {})
    for item in overrides or []:
        apply_override(config, item)
    return config


def _check_keys(values: dict[str, Any], known: dict[str, Any], section: str) -> None:
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"unknown key {section}.{key}" + (f" (did you mean {section}.{hint[0]}?)" if hint else "")
                             + f"; known: {', '.join(sorted(known))}")


def parse_value(text: str) -> Any:
    """YAML scalar parsing, plus numbers YAML 1.1 leaves as strings (``1e-3``)."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def apply_override(config: dict[str, Any], item: str) -> None:
    """Apply one ``section.key[.sub]=value`` override in place."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r} (e.g. --set train.steps=500)")
    dotted, _, raw = item.partition("=")
    keys = dotted.strip().split(".")
    if keys[0] not in SECTIONS or len(keys) < 2:
        raise ValueError(f"--set key {dotted!r} must start with one of {', '.join(SECTIONS)} "
                         "(e.g. train.lr=1e-3, model.vision.layers=4)")
    node = config
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            if keys[0] == "model":
                node[key] = {}
            else:
                raise ValueError(f"--set key {dotted!r}: {'.'.join(keys[:depth + 1])} is not a section")
        node = node[key]
    leaf = keys[-1]
    free_form = keys[0] == "model" or keys[:2] == ["train", "lr_scales"]  # keys the user names (modules)
    if not free_form and leaf not in node:
        _check_keys({leaf: None}, node, ".".join(keys[:-1]))
    node[leaf] = parse_value(raw)


def dump_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)

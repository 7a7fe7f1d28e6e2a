"""Everything a run needs before its first step: device, threads, process group, data, tokenizer, model."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmkit import distributed

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
_PROBE_CACHE: dict[str, str] = {}


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    threads: int


def setup_runtime(train_config: dict[str, Any]) -> Runtime:
    """Pick the device (auto: CUDA when present), start the process group under torchrun, set CPU threads."""
    requested = str(train_config.get("device") or "auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={requested} but no CUDA device is available; use train.device=cpu")
    device = torch.device(requested)
    distributed.init_from_env(device.type)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads_setting = train_config.get("threads", "auto")
    if threads_setting in (None, "auto"):
        threads = max(1, (os.cpu_count() or 1) // local_world)
    else:
        threads = int(threads_setting)
    torch.set_num_threads(threads)
    return Runtime(device=device, rank=distributed.rank(), world_size=distributed.world_size(), threads=threads)


def data_workers(data_config: dict[str, Any]) -> int:
    """auto: one decoding worker per two cores of this process's share (at least one)."""
    workers = data_config.get("workers", "auto")
    if workers in (None, "auto"):
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, (os.cpu_count() or 1) // (2 * local_world))
    return int(workers)


def load_training_samples(path: str | Path, data_config: dict[str, Any]) -> list[Any]:
    """Samples of a manifest, COCO file, shards or folder; or, from VQA questions (VQAv2 JSON + annotations, or
    JSONL), one sample per question whose caption is the answer and whose ``meta["question"]`` is the question."""
    from vlmkit.data import load_samples
    from vlmkit.data.vqa import is_vqa_file, load_vqa, training_answer

    if is_vqa_file(path):
        from vlmkit.data.sources import Sample

        questions = load_vqa(path, data_config.get("vqa_annotations"))
        return [Sample(key=str(q.question_id), image=q.image, captions=[training_answer(q)],
                       meta={"question": q.question}) for q in questions]
    return load_samples(str(path), image_key=data_config["image_key"], caption_key=data_config["caption_key"],
                        label_key=data_config["label_key"], fmt=data_config["format"])


def pretrained_text_source(config: dict[str, Any]) -> str | None:
    """The pretrained text encoder the recipe names (``model.text.pretrained``), if any."""
    text = (config.get("model") or {}).get("text") or {}
    return text.get("pretrained") or None


def load_initial_model(config: dict[str, Any]) -> Any:
    """The model ``train.init`` names, as a native model to fine-tune; the run's ``model`` section becomes its
    config (so the saved config.yaml describes what is trained). Hugging Face and open_clip CLIPs are converted."""
    model = load_native_model(str(config["train"]["init"]))
    if model.tokenizer is None:
        raise ValueError(f"train.init {config['train']['init']} has no tokenizer files; a model to fine-tune needs "
                         "its tokenizer")
    config["model"] = {"architecture": model.architecture, **model.config_dict()}
    return model.float().train()


def prepare_phrase_vocabulary(config: dict[str, Any], model: Any, samples: list[Any],
                              data: str | Path | None = None) -> list[str]:
    """``data.phrase_labels`` = K: the phrase heads' vocabulary, the K most frequent phrase labels of the training
    captions (:mod:`vlmkit.data.phrases`), unless the model already has one (a resumed run, or ``train.init`` a
    model pre-trained on phrases: its heads and labels are kept). With ``data.scene_phrases`` and built-in scenes
    in ``data``, the samples get their scenes' statements (the image's labels) first, counted too. Returns the
    vocabulary ([] when off)."""
    wanted = int(config["data"].get("phrase_labels") or 0)
    if not wanted:
        return []
    if not hasattr(model, "set_phrase_labels"):
        raise ValueError("data.phrase_labels pre-trains a contrastive model's towers on caption phrases: use it with "
                         f"clip or siglip, not {config['model'].get('architecture')}")
    from vlmkit.data.phrases import attach_scene_statements, build_vocabulary

    if data is not None and config["data"]["scene_phrases"]:
        attach_scene_statements(samples, data)
    if not model.config.phrase_labels:
        texts = (text for sample in samples for text in [*sample.captions, *sample.meta.get("statements", [])])
        vocabulary = build_vocabulary(texts, wanted)
        if not vocabulary:
            raise ValueError("data.phrase_labels: the training captions have no phrase with a colour or size word "
                             "(\"a red circle\"), so there is nothing to pre-train on; set data.phrase_labels=0")
        model.set_phrase_labels(vocabulary)
        config["model"] = {"architecture": model.architecture, **model.config_dict()}
    return list(model.config.phrase_labels)


def prepare_relation_captions(samples: list[Any], data: str | Path) -> None:
    """``data.relation_captions``: the samples need their built-in scenes' statements (attached here unless phrase
    pre-training did it already)."""
    if not any("statements" in sample.meta for sample in samples):
        from vlmkit.data.phrases import attach_scene_statements

        if not attach_scene_statements(samples, data):
            raise ValueError(f"data.relation_captions captions samples by their built-in scene's relations, and "
                             f"{data} is not built-in scenes (no metadata.jsonl there or one folder up); set "
                             "data.relation_captions=0")


def prepare_vision_init(config: dict[str, Any]) -> Any:
    """``train.init_vision``: load that contrastive model and give the recipe its vision tower's shape and
    preprocessing, so the VLM built next can take its weights (``load_vision_from``)."""
    from dataclasses import asdict

    encoder = load_native_model(str(config["train"]["init_vision"]))
    if not hasattr(encoder, "visual") or not hasattr(encoder.config, "vision"):
        raise ValueError(f"train.init_vision {config['train']['init_vision']} has no vision tower to start from")
    config["model"]["vision"] = asdict(encoder.config.vision)
    return encoder


def load_native_model(spec: str) -> Any:
    """A native model from any spec: native folders and runs as they are; Hugging Face and open_clip CLIPs
    converted."""
    if spec.startswith("open_clip:"):
        from vlmkit.backends.clip_convert import native_from_open_clip
        from vlmkit.backends.open_clip import parse_spec

        model = native_from_open_clip(*parse_spec(spec))
    else:
        from vlmkit.backends.hf import is_hf_folder, resolve_repo
        from vlmkit.models.hub import load_native, resolve_model_dir

        directory = resolve_repo(spec[3:]) if spec.startswith("hf:") else resolve_model_dir(spec)
        if is_hf_folder(directory):
            from vlmkit.backends.clip_convert import native_from_hf

            model = native_from_hf(directory)
        else:
            model = load_native(directory)
    return model


def prepare_tokenizer(config: dict[str, Any], samples: list[Any], run_dir: Path, initial: Any = None) -> Any:
    """The run's tokenizer: ``run_dir/tokenizer`` if it exists (resume), the initial model's (``train.init``),
    a given folder, the pretrained text encoder's or language model's own tokenizer (``model.text.pretrained``,
    ``model.language.pretrained``), or BPE trained here on the captions; the model's special tokens (a VLM's
    ``<image>``) are added.

    Only rank 0 trains and saves; the others wait and load the saved files, so every rank has the same vocabulary.
    """
    from vlmkit.data import Tokenizer, train_bpe

    folder = run_dir / "tokenizer"
    if not (folder / "tokenizer.json").exists():
        if distributed.is_main_process():
            from vlmkit.registry import model_class

            source = config["tokenizer"].get("path")
            encoder = pretrained_text_source(config)
            language = ((config.get("model") or {}).get("language") or {}).get("pretrained")
            extra = getattr(model_class(config["model"].get("architecture", "clip")), "special_tokens", ())
            if initial is not None:
                tokenizer = initial.tokenizer
            elif source:
                tokenizer = Tokenizer.load(source)
            elif encoder:
                from vlmkit.backends.hf_text_tower import resolve_source

                tokenizer = Tokenizer.load(resolve_source(encoder))  # BERT's [CLS]/[SEP] become bos/eos
            elif language:
                from vlmkit.backends.hf_causal_lm import resolve_folder

                tokenizer = Tokenizer.load(resolve_folder(language))  # the language model's own tokenizer
            else:
                captions = (caption for sample in samples for caption in sample.captions)
                tokenizer = train_bpe(captions, vocab_size=int(config["tokenizer"]["vocab_size"]),
                                      special_tokens=extra)
            tokenizer.add_special_tokens(extra)  # e.g. <image> for a VLM on a pretrained language model
            tokenizer.save(folder)
        distributed.barrier()
    return Tokenizer.load(folder)


def training_collator(model: Any, tokenizer: Any) -> Any:
    """Contrastive models get their captions tokenized in the DataLoader workers; other models tokenize their own
    sequences (prompt + target) from the batch's texts."""
    from vlmkit.data import Collator

    if hasattr(model, "loss_from_features"):
        return Collator(tokenizer, model.config.text.context_length)
    return Collator(None)


def build_training_model(config: dict[str, Any], tokenizer: Any, seed: int) -> Any:
    """A fresh model from the recipe, its text vocabulary sized to the tokenizer; same weights on every rank.

    A pretrained text encoder keeps its own vocabulary (the model checks that the tokenizer's ids fit it).
    """
    from vlmkit.registry import build_model, model_class

    model_config = dict(config["model"])
    section = getattr(model_class(model_config.get("architecture", "clip")), "vocabulary_section", "text")
    text = dict(model_config.get(section, {}))
    text["vocab_size"] = tokenizer.vocab_size
    model_config[section] = text
    config["model"] = model_config  # the saved config records the real vocabulary size
    torch.manual_seed(seed)
    return build_model(model_config, tokenizer=tokenizer)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16-mixed where bfloat16 matrix multiplication is faster than fp32, else fp32.

    On CUDA that is every GPU with bf16 support; on a CPU it is measured (CPUs with AMX run bf16 several times
    faster than fp32, while CPUs with only AVX512-BF16 can be slower in bf16).
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"train.precision must be auto or one of {', '.join(PRECISIONS)}, not {precision!r}")
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
    if "cpu" not in _PROBE_CACHE:
        _PROBE_CACHE["cpu"] = "bf16-mixed" if _matmul_seconds(torch.bfloat16) < 0.8 * _matmul_seconds(
            torch.float32) else "fp32"
    return _PROBE_CACHE["cpu"]


def _matmul_seconds(dtype: torch.dtype, size: int = 1024, repeats: int = 4) -> float:
    import time

    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm up the kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def autocast(precision: str, device: torch.device) -> Any:
    """bf16-mixed: autocast to bfloat16 (weights stay fp32); fp32 and bf16: no autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    enabled = precision == "bf16-mixed"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

"""Generative Hugging Face checkpoints behind vlmkit's capability interface.

Three adapters, each driving the checkpoint's own processor (image preprocessing, tokenisation, decoding):

- ``BlipCaptioner``: ``BlipForConditionalGeneration`` (model_type ``blip``), capability ``generate``.
- ``ViltAnswerer``: ``ViltForQuestionAnswering`` (model_type ``vilt``), capability ``answer``.
- ``ImageTextToText``: any ``AutoModelForImageTextToText`` checkpoint (LLaVA and kin), capabilities ``generate``
  and ``answer``.

``load_generative`` picks the adapter for a folder from its ``config.json``. transformers is imported only when a
model is loaded or used.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlmkit.backends.common import ExternalModel, as_image_list, broadcast_texts, require_transformers

DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
               "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class UnsupportedCheckpoint(ValueError):
    """A Hugging Face folder whose model type (or head) vlmkit has no generative adapter for."""


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """``None`` keeps the checkpoint's own dtype ("auto"); names like "bf16" map to torch dtypes."""
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or one of {sorted(DTYPE_NAMES)}")


def decoding_kwargs(*, max_new_tokens: int, num_beams: int, do_sample: bool, top_k: int | None,
                    top_p: float | None, temperature: float) -> dict[str, Any]:
    """Checked keyword arguments for ``model.generate``; sampling knobs are passed only when sampling."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a positive integer, not {num_beams!r}")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": bool(do_sample)}
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, not {temperature!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer, not {top_k!r}")
        kwargs["temperature"] = float(temperature)
        if top_k is not None:
            kwargs["top_k"] = int(top_k)
        if top_p is not None:
            kwargs["top_p"] = float(top_p)
    return kwargs


class HFAdapter(ExternalModel):
    """Shared plumbing: loading from a folder, device/dtype, moving processor outputs onto the model."""

    auto_class = ""  # the transformers class that loads the weights
    capabilities: tuple[str, ...] = ()

    def __init__(self, model: Any, processor: Any) -> None:
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError(f"{type(self).__name__} needs a processor with an image processor and a tokenizer, "
                             f"got {type(processor).__name__}")
        self.model = model.eval()
        self.processor = processor
        self.name = str(getattr(model, "name_or_path", "") or type(model).__name__)

    @classmethod
    def from_folder(cls, directory: str | Path, *, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None) -> HFAdapter:
        """Load weights and processor saved by ``save_pretrained`` in ``directory`` (never downloads)."""
        transformers = require_transformers()
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} is not a Hugging Face model folder (no config.json)")
        model = getattr(transformers, cls.auto_class).from_pretrained(
            directory, dtype=resolve_dtype(dtype), local_files_only=True)
        processor = transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)
        if device is not None:
            model.to(device)
        return cls(model, processor)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to_model(self, inputs: Any) -> dict[str, Any]:
        """Processor output -> tensors on the model's device; floating ones (pixels) in the model's dtype."""
        moved = {}
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            moved[name] = value
        return moved

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, capabilities={self.capabilities}, "
                f"device={self.device}, dtype={self.dtype})")


class BlipCaptioner(HFAdapter):
    """BLIP image captioning (``BlipForConditionalGeneration``). Capability: ``generate``."""

    auto_class = "BlipForConditionalGeneration"
    capabilities = ("generate",)

    @torch.no_grad()
    def generate(self, images: Any, prompt: str | Sequence[str] | None = None, *, max_new_tokens: int = 30,
                 num_beams: int = 1, do_sample: bool = False, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0) -> list[str]:
        """One caption per image. ``prompt`` (one for all, or one per image) is BLIP's conditional prefix, e.g.
        "a picture of"; the returned caption starts with it, as the processor decodes it."""
        images = as_image_list(images)
        prompts: list[str | None] = ([None] * len(images) if prompt is None
                                     else list(broadcast_texts(prompt, len(images), "prompts")))
        kwargs = decoding_kwargs(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                                 top_k=top_k, top_p=top_p, temperature=temperature)
        # BLIP's generate drops the last prompt column (the [SEP]) for every row, which is wrong for a right-padded
        # batch of prompts of different lengths: batch images that share a prompt, one batch per distinct prompt.
        groups: dict[str | None, list[int]] = {}
        for index, text in enumerate(prompts):
            groups.setdefault(text, []).append(index)
        captions = [""] * len(images)
        for text, indices in groups.items():
            inputs = self.processor(images=[images[i] for i in indices],
                                    text=None if text is None else [text] * len(indices), return_tensors="pt")
            output_ids = self.model.generate(**self.to_model(inputs), **kwargs)
            for index, caption in zip(indices, self.processor.batch_decode(output_ids, skip_special_tokens=True)):
                captions[index] = caption.strip()
        return captions


class ViltAnswerer(HFAdapter):
    """ViLT visual question answering (``ViltForQuestionAnswering``): a classifier over ``config.id2label``.
    Capability: ``answer``."""

    auto_class = "ViltForQuestionAnswering"
    capabilities = ("answer",)

    @torch.no_grad()
    def logits(self, images: Any, questions: str | Sequence[str]) -> torch.Tensor:
        """Answer logits [N_images, num_labels] (float32, on the CPU)."""
        images = as_image_list(images)
        questions = broadcast_texts(questions, len(images))
        if not images:
            return torch.zeros(0, self.model.config.num_labels)
        # ViLT's text position table is short (40 tokens): longer questions are truncated, not an index error.
        inputs = self.processor(images=images, text=questions, padding=True, truncation=True,
                                max_length=self.model.config.max_position_embeddings, return_tensors="pt")
        return self.model(**self.to_model(inputs)).logits.float().cpu()

    def label(self, index: int) -> str:
        return str(self.model.config.id2label.get(index, f"LABEL_{index}"))

    def answer(self, images: Any, questions: str | Sequence[str], *, top_k: int = 1) -> list[str]:
        """The best answer per image (one question for all images, or one per image).

        ``top_k`` must be 1; ``answer_scores`` gives ranked answers with probabilities."""
        if top_k != 1:
            raise ValueError("answer returns the single best answer; use answer_scores(images, questions, top_k=k)")
        return [self.label(int(index)) for index in self.logits(images, questions).argmax(dim=-1)]

    def answer_scores(self, images: Any, questions: str | Sequence[str],
                      top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` answers per image with their sigmoid probabilities (ViLT is trained with BCE), best
        first."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, not {top_k!r}")
        probabilities = torch.sigmoid(self.logits(images, questions))
        values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        return [[(self.label(int(index)), float(value)) for value, index in zip(row_values, row_indices)]
                for row_values, row_indices in zip(values, indices)]


class ImageTextToText(HFAdapter):
    """Any ``AutoModelForImageTextToText`` checkpoint (LLaVA-style). Capabilities: ``generate``, ``answer``.

    The prompt goes through the processor's chat template when it has one (a user turn holding the image and the
    text), otherwise the processor's image token is put before the text. Decoder-only models are batched with
    left padding, and only the newly generated text is returned.
    """

    auto_class = "AutoModelForImageTextToText"
    capabilities = ("generate", "answer")

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        if not self.is_encoder_decoder:
            # A decoder-only model continues from the last column: padding must sit on the left.
            processor.tokenizer.padding_side = "left"
        self._processor_inserts_image_tokens: bool | None = None

    @property
    def image_token(self) -> str | None:
        """The processor's image placeholder (e.g. "<image>"), if it has one."""
        token = getattr(self.processor, "image_token", None) or getattr(self.processor.tokenizer, "image_token", None)
        return None if token is None else str(getattr(token, "content", token))  # BLIP-2 keeps an AddedToken

    @property
    def processor_inserts_image_tokens(self) -> bool:
        """Whether the processor puts the image placeholders into the text itself (BLIP-2, InstructBLIP,
        PaliGemma) instead of expecting one image token per image in the prompt (LLaVA). Found out once, by
        processing a blank image with a text that has no image token."""
        if self._processor_inserts_image_tokens is None:
            from PIL import Image

            token_id = self.processor.tokenizer.convert_tokens_to_ids(self.image_token) if self.image_token else None
            try:
                input_ids = self.processor(images=[[Image.new("RGB", (64, 64))]], text=["a"],
                                           return_tensors="pt")["input_ids"]
                inserts = token_id is not None and bool((input_ids == token_id).any())
            except (ValueError, TypeError, KeyError, IndexError):  # it wants the image token in the prompt
                inserts = False
            self._processor_inserts_image_tokens = inserts
        return self._processor_inserts_image_tokens

    def build_prompt(self, text: str | None) -> str:
        """The full prompt string for one image and one (optional) instruction."""
        if getattr(self.processor, "chat_template", None):
            content: list[dict[str, str]] = [{"type": "image"}]
            if text:
                content.append({"type": "text", "text": text})
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
        image_token = self.image_token
        if image_token is None or self.processor_inserts_image_tokens or (text and image_token in text):
            return text or ""
        return f"{image_token}\n{text}" if text else image_token

    def prepare_inputs(self, images: list[Any], texts: Sequence[str | None]) -> dict[str, Any]:
        """Model inputs for one prompt per image: ``input_ids``/``attention_mask`` [B, L] (left-padded for a
        decoder-only model), ``pixel_values`` and whatever else the processor adds, on the model's device."""
        prompts = [self.build_prompt(text) for text in texts]
        # A chat template that already writes the BOS token must not get a second one from the tokenizer
        # (the same rule as the processor's own apply_chat_template(tokenize=True)).
        bos = self.processor.tokenizer.bos_token
        add_special_tokens = not (bos and all(prompt.startswith(bos) for prompt in prompts))
        inputs = self.processor(images=[[image] for image in images], text=prompts, padding=True,
                                add_special_tokens=add_special_tokens, return_tensors="pt")
        return self.to_model(inputs)

    @torch.no_grad()
    def generate(self, images: Any, prompt: str | Sequence[str] | None = None, *, max_new_tokens: int = 30,
                 num_beams: int = 1, do_sample: bool = False, top_k: int | None = None, top_p: float | None = None,
                 temperature: float = 1.0) -> list[str]:
        """Generated text per image, without the prompt. ``prompt``: one for all images, or one per image."""
        images = as_image_list(images)
        texts = [None] * len(images) if prompt is None else broadcast_texts(prompt, len(images), "prompts")
        kwargs = decoding_kwargs(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                                 top_k=top_k, top_p=top_p, temperature=temperature)
        if not images:
            return []
        inputs = self.prepare_inputs(images, texts)
        pad_token_id = self.processor.tokenizer.pad_token_id
        if self.model.generation_config.pad_token_id is None and pad_token_id is not None:
            kwargs["pad_token_id"] = pad_token_id
        output_ids = self.model.generate(**inputs, **kwargs)
        # Decoder-only language models return prompt + continuation; encoder-decoder ones (also inside a
        # decoder-only wrapper config, e.g. BLIP-2 with T5) return the continuation alone.
        prompt_ids = inputs["input_ids"]
        if output_ids.shape[1] >= prompt_ids.shape[1] and torch.equal(output_ids[:, :prompt_ids.shape[1]], prompt_ids):
            output_ids = output_ids[:, prompt_ids.shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(output_ids, skip_special_tokens=True)]

    def answer(self, images: Any, questions: str | Sequence[str], **decoding: Any) -> list[str]:
        """``generate`` with the question as the prompt (one for all images, or one per image)."""
        images = as_image_list(images)
        return self.generate(images, broadcast_texts(questions, len(images)), **decoding)


def image_text_to_text_types() -> list[str]:
    """Model types that transformers' ``AutoModelForImageTextToText`` can load."""
    require_transformers()
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


# model_type -> (adapter, the head classes (config.json "architectures") it can load)
SPECIFIC = {"blip": (BlipCaptioner, ("BlipForConditionalGeneration",)),
            "vilt": (ViltAnswerer, ("ViltForQuestionAnswering",))}


def load_generative(directory: Path, hf_config: dict[str, Any], *, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None) -> HFAdapter:
    """The adapter for a Hugging Face folder whose parsed ``config.json`` is ``hf_config``.

    Raises ``UnsupportedCheckpoint`` when no adapter fits (the message lists what is supported).
    """
    require_transformers()
    model_type = hf_config.get("model_type")
    architectures = list(hf_config.get("architectures") or [])
    if model_type in SPECIFIC:
        adapter, heads = SPECIFIC[model_type]
        if architectures and not set(architectures) & set(heads):
            raise UnsupportedCheckpoint(
                f"{model_type} checkpoint with head {', '.join(architectures)} is not supported: vlmkit loads "
                f"{model_type} as {' or '.join(heads)}")
        return adapter.from_folder(directory, device=device, dtype=dtype)
    known = image_text_to_text_types()
    if model_type in known:
        return ImageTextToText.from_folder(directory, device=device, dtype=dtype)
    raise UnsupportedCheckpoint(
        f"no generative adapter for model_type {model_type!r} in {directory}; supported: blip (captioning), "
        f"vilt (VQA), and transformers' image-text-to-text types: {', '.join(t for t in known if t not in SPECIFIC)}")

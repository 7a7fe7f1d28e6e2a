"""VLMs on a language model: a vision encoder, a connector, and a causal language model (Frozen, MiniGPT-4, LLaVA,
BLIP-2, Qwen-VL style, by the connector's kind).

The text sequence is ``[bos] <image> x M  prompt  target [eos]``: the tokenizer has an ``<image>`` token and the
image embeddings (M of them, from the connector) replace the placeholders' embeddings. The loss covers only the
target tokens and the end-of-text token (the caption, or the answer to a question). Sequences, loss and decoding
live in ``LanguageModelVLM``, which Fuyu (patches in the sequence) and CoCa (image by cross-attention) share.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.generation import DecodingConfig, DecodingState, generate
from vlmkit.models.clip import PreprocessConfig
from vlmkit.models.pretrained import PretrainedMixin, config_from_dict
from vlmkit.modules.connectors import Connector, ConnectorConfig
from vlmkit.modules.language import CausalLM, LanguageConfig
from vlmkit.modules.vision import VisionConfig, VisionTransformer

IMAGE_TOKEN = "<image>"
LANGUAGE_MODEL_DIR = "language_model"  # a saved model's copy of its pretrained language model's config.json
IGNORE = -100
FREEZABLE = ("vision", "connector", "language")


@dataclass
class PrefixLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    freeze: list[str] = field(default_factory=list)  # any of vision, connector, language
    caption_prompt: str = ""  # the prompt of captioning samples (BLIP uses "a picture of")
    question_template: str = "question: {} answer:"  # how a VQA question becomes the prompt
    max_text_length: int = 48  # prompt + target tokens kept per sample (longer targets are cut)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            raise ValueError(f"freeze takes {', '.join(FREEZABLE)}, not {unknown}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrefixLMConfig":
        return config_from_dict(cls, data, {"vision": VisionConfig, "connector": ConnectorConfig,
                                            "language": LanguageConfig, "preprocess": PreprocessConfig})


def build_language_model(config: LanguageConfig, saved: str | Path | None = None) -> nn.Module:
    """vlmkit's own causal LM, or the pretrained Hugging Face LM ``config.pretrained`` (``saved``: a folder with its
    config.json, for a saved model whose weights fill it)."""
    if not config.pretrained:
        return CausalLM(config)
    from vlmkit.backends.hf_causal_lm import PretrainedCausalLM  # transformers enters only through backends

    return PretrainedCausalLM.build(config.pretrained, vocab_size=config.vocab_size, saved_config=saved)


class LanguageModelVLM:
    """What every VLM that writes text with a causal language model ``self.language`` shares (PrefixLM, Fuyu, CoCa):
    the token sequence ``[bos] image slots  prompt  target [eos]`` with the loss on target + eos, and decoding
    through :mod:`vlmkit.generation`.

    A model provides ``config`` (with ``caption_prompt``, ``question_template``, ``max_text_length``, ``preprocess``
    and ``vision.image_size``), ``tokenizer``, ``language``, ``architecture``, ``special_tokens``, and
    ``image_slot_ids`` (the ids of the image part of the sequence) and ``embed`` (token embeddings with the image
    embeddings in those slots); CoCa, which cross-attends to the image instead, overrides the decoding hooks.
    """

    config: Any
    tokenizer: Any
    language: nn.Module
    architecture: str
    special_tokens: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        return next(self.language.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.language.parameters()).dtype

    @property
    def image_transform(self) -> Any:
        return self.config.preprocess.image_transform(self.config.vision.image_size)

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer attached; load a saved model or train one")
        for token in self.special_tokens:
            if self.tokenizer.backend.token_to_id(token) is None:
                raise ValueError(f"the tokenizer has no {token} token; train with a {self.architecture} recipe")
        return self.tokenizer

    # sequences --------------------------------------------------------------------------------------------
    def image_slot_ids(self, tokenizer: Any) -> list[int]:
        """The ids of the image part of every sequence (placeholders that ``embed`` fills)."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, W] with the image embeddings in the image slots."""
        raise NotImplementedError

    def _ids(self, text: str) -> list[int]:
        for token in self.special_tokens:  # user text must not add image slots
            text = text.replace(token, "")
        return self.tokenizer.token_ids(text) if text.strip() else []

    def sequences(self, prompts: Sequence[str], targets: Sequence[str] | None, *, left_pad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids [B, L], attention mask [B, L] and loss labels [B, L] (IGNORE outside target + eos)."""
        tokenizer = self._require_tokenizer()
        image_ids = self.image_slot_ids(tokenizer)
        rows, label_rows = [], []
        budget = self.config.max_text_length
        for index, prompt in enumerate(prompts):
            prompt_ids = self._ids(prompt)[:budget]
            head = [tokenizer.bos_id] + image_ids + prompt_ids
            if targets is None:
                rows.append(head)
                label_rows.append([IGNORE] * len(head))
            else:
                target_ids = self._ids(" " + targets[index].strip())[: max(budget - len(prompt_ids), 1)]
                tail = target_ids + [tokenizer.eos_id]
                rows.append(head + tail)
                label_rows.append([IGNORE] * len(head) + tail)
        length = max(len(row) for row in rows)
        ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        for index, (row, label_row) in enumerate(zip(rows, label_rows)):
            span = slice(length - len(row), length) if left_pad else slice(0, len(row))
            ids[index, span] = torch.tensor(row)
            mask[index, span] = True
            labels[index, span] = torch.tensor(label_row)
        return ids, mask, labels

    def prompts_of(self, batch: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(prompts, targets) of a training batch: VQA questions and answers, or captions."""
        if batch.get("questions") is not None:
            prompts = [self.config.question_template.format(q) for q in batch["questions"]]
            return prompts, list(batch["answers"])
        captions = list(batch["captions"])
        return [self.config.caption_prompt] * len(captions), captions

    # capabilities ---------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training: ``batch`` has ``images`` [B, 3, S, S] and ``captions`` (or ``questions`` + ``answers``)."""
        prompts, targets = self.prompts_of(batch)
        ids, _, labels = self.sequences(prompts, targets, left_pad=False)
        ids, labels = ids.to(self.device), labels.to(self.device)
        logits = self.language(self.embed(batch["images"], ids))
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)
        return {"loss": loss, "target_tokens": (labels != IGNORE).sum().float()}

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self(batch)  # type: ignore[operator]

    # decoding (see vlmkit.generation) ------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language.embed_tokens(ids)

    def new_cache(self) -> Any:
        return self.language.new_cache()

    def decode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, state: DecodingState) -> torch.Tensor:
        return self.language(embeddings, attention_mask, cache=state.cache)

    def decoding_state(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> DecodingState:
        """The decoding state of images [B, 3, S, S] and their left-padded prompt sequences [B, P]."""
        return DecodingState(prefix=self.embed(pixels, ids), prefix_mask=mask)

    def preprocess(self, images: Any) -> torch.Tensor:
        from vlmkit.backends.common import as_image_list

        if isinstance(images, torch.Tensor):
            return images if images.dim() == 4 else images.unsqueeze(0)
        transform = self.image_transform
        return torch.stack([transform(image) for image in as_image_list(images)])

    @torch.no_grad()
    def generate_from_prompts(self, images: Any, prompts: Sequence[str], **decoding: Any) -> list[str]:
        pixels = self.preprocess(images)
        if len(prompts) != len(pixels):
            raise ValueError(f"got {len(prompts)} prompts for {len(pixels)} images")
        ids, mask, _ = self.sequences(prompts, None, left_pad=True)
        ids, mask = ids.to(self.device), mask.to(self.device)
        state = self.decoding_state(pixels, ids, mask)
        config = DecodingConfig(**decoding)
        tokenizer = self._require_tokenizer()
        outputs = generate(self, state, config, stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id)
        return [tokenizer.decode(row) for row in outputs]

    def generate(self, images: Any, prompt: str | Sequence[str] | None = None, **decoding: Any) -> list[str]:
        """One caption per image (the text after ``prompt``, default: the recipe's caption prompt)."""
        from vlmkit.backends.common import broadcast_texts

        pixels = self.preprocess(images)
        prompts = broadcast_texts(prompt if prompt is not None else self.config.caption_prompt, len(pixels),
                                  "prompts")
        return self.generate_from_prompts(pixels, prompts, **decoding)

    def answer(self, images: Any, questions: str | Sequence[str], **decoding: Any) -> list[str]:
        """One answer per image (one question for all, or one per image)."""
        from vlmkit.backends.common import broadcast_texts

        pixels = self.preprocess(images)
        prompts = [self.config.question_template.format(q) for q in broadcast_texts(questions, len(pixels))]
        decoding.setdefault("max_new_tokens", 8)
        return self.generate_from_prompts(pixels, prompts, **decoding)


class PrefixLM(LanguageModelVLM, nn.Module, PretrainedMixin):
    """Capabilities: ``generate`` (captions), ``answer`` (VQA), ``loss``."""

    architecture = "prefix_lm"
    capabilities = ("generate", "answer", "loss")
    special_tokens = (IMAGE_TOKEN,)  # the trainer adds these to the tokenizer it trains
    vocabulary_section = "language"  # the config section whose vocab_size the trainer sets

    def __init__(self, config: PrefixLMConfig, tokenizer: Any = None, *,
                 saved_language_model: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        grid = config.vision.image_size // config.vision.patch_size
        self.language = build_language_model(config.language, saved_language_model)
        self.connector = Connector(config.connector, config.vision.width, self.language.width, grid)
        self.tokenizer = tokenizer
        self.apply_freeze()

    def apply_freeze(self) -> None:
        for name in self.config.freeze:
            getattr(self, {"vision": "visual"}.get(name, name)).requires_grad_(False)

    def set_freeze(self, freeze: Sequence[str]) -> None:
        """Lock other parts from now on (``train.freeze``: e.g. stage 2 unlocks the language model)."""
        freeze = [freeze] if isinstance(freeze, str) else list(freeze)
        unknown = sorted(set(freeze) - set(FREEZABLE))
        if unknown:
            raise ValueError(f"train.freeze takes {', '.join(FREEZABLE)} for this model, not {unknown}")
        self.config.freeze = freeze
        self.requires_grad_(True)
        self.apply_freeze()
        self.train(self.training)

    def load_vision_from(self, encoder: Any) -> None:
        """Start from a trained contrastive model's vision tower (LLaVA on CLIP): its weights and preprocessing.
        The tower's shape must match (the trainer copies it into the config first)."""
        if asdict(encoder.config.vision) != asdict(self.config.vision):
            raise ValueError("the vision tower to start from has another shape than model.vision: "
                             f"{asdict(encoder.config.vision)} vs {asdict(self.config.vision)}")
        self.visual.load_state_dict(encoder.visual.state_dict())
        self.config.preprocess = encoder.config.preprocess

    @classmethod
    def from_config(cls, config: dict[str, Any] | PrefixLMConfig, tokenizer: Any = None) -> "PrefixLM":
        if isinstance(config, dict):
            config = PrefixLMConfig.from_dict(config)
        return cls(config, tokenizer=tokenizer)

    @classmethod
    def from_saved_config(cls, config: dict[str, Any], directory: Path) -> "PrefixLM":
        """A pretrained language model is rebuilt from the folder's copy of its config.json (weights follow)."""
        saved = Path(directory) / LANGUAGE_MODEL_DIR
        return cls(PrefixLMConfig.from_dict(config), saved_language_model=saved if saved.is_dir() else None)

    def save_pretrained(self, directory: str | Path) -> Path:
        save_config = getattr(self.language, "save_config", None)
        if save_config is not None:  # before config.json, which is written last and marks the folder complete
            save_config(Path(directory) / LANGUAGE_MODEL_DIR)
        return super().save_pretrained(directory)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def train(self, mode: bool = True) -> "PrefixLM":
        super().train(mode)
        for name in self.config.freeze:  # frozen parts keep eval-mode behaviour
            getattr(self, {"vision": "visual"}.get(name, name)).eval()
        return self

    @property
    def num_image_tokens(self) -> int:
        fixed = self.connector.num_tokens
        return fixed if fixed is not None else self.config.vision.num_patches + int(self.visual.has_class_token)

    def image_slot_ids(self, tokenizer: Any) -> list[int]:
        return [tokenizer.backend.token_to_id(IMAGE_TOKEN)] * self.num_image_tokens

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, W] with the connector's image embeddings in the ``<image>`` positions."""
        image_embeddings = self.connector(self.visual.forward_tokens(images.to(self.device, self.dtype)))
        embeddings = self.language.embed_tokens(input_ids)
        image_id = self.tokenizer.backend.token_to_id(IMAGE_TOKEN)
        slots = (input_ids == image_id).unsqueeze(-1)
        return embeddings.masked_scatter(slots, image_embeddings.to(embeddings.dtype))

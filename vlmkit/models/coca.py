"""CoCa, contrastive captioners (Yu et al., 2022): one image encoder and one text decoder trained with two losses.

- The image encoder (a ViT) gives image tokens [B, N, Wv] and, pooled (attention pooling by default) and projected,
  the image embedding of the contrastive loss.
- The unimodal text decoder (a causal LM without cross-attention, ``model.language``) reads ``[bos] text [CLS]``:
  a learned CLS embedding takes the end-of-text slot, and its final state, projected, is the text embedding.
- The multimodal decoder (``multimodal_layers`` causal blocks that also cross-attend to the image tokens) continues
  from the unimodal decoder's states and predicts the next token: the captioning loss.

loss = caption_weight x captioning cross-entropy (targets: caption tokens + eos)
     + contrastive_weight x InfoNCE with a learnable temperature (gathered across processes under torchrun).

Captions and answers are decoded by :mod:`vlmkit.generation`, the image tokens being the cross-attention context.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit import losses
from vlmkit.generation import DecodingState
from vlmkit.models.clip import PreprocessConfig
from vlmkit.models.prefix_lm import IGNORE, LanguageModelVLM
from vlmkit.models.pretrained import config_from_dict
from vlmkit.models.pretrained import PretrainedMixin
from vlmkit.models.scoring import ContrastiveScoring
from vlmkit.modules.heads import ProjectionHead
from vlmkit.modules.language import CausalLM, LanguageConfig
from vlmkit.modules.transformer import KVCache
from vlmkit.modules.vision import VisionConfig, VisionTransformer


@dataclass
class CoCaConfig:
    embed_dim: int = 256  # the shared contrastive embedding space
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(pool="attention"))
    language: LanguageConfig = field(default_factory=LanguageConfig)  # the unimodal text decoder (layers: its depth)
    multimodal_layers: int = 2  # decoder blocks with cross-attention to the image tokens, on top of the unimodal ones
    projection: str = "linear"  # linear | mlp | none, into the contrastive space
    caption_weight: float = 2.0
    contrastive_weight: float = 1.0
    init_logit_scale: float = math.log(1 / 0.07)  # log temperature of the contrastive loss
    max_logit_scale: float = math.log(100.0)
    caption_prompt: str = ""  # text every caption (and every text embedded for the contrastive side) starts from
    question_template: str = "question: {} answer:"
    max_text_length: int = 48  # prompt + target tokens kept per sample
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.multimodal_layers < 1:
            raise ValueError(f"multimodal_layers must be >= 1, not {self.multimodal_layers}")
        if self.language.pretrained:
            raise ValueError("CoCa's text decoder is native (its multimodal blocks cross-attend): "
                             "model.language.pretrained is not supported")
        if self.language.cross_attention:
            raise ValueError("model.language is CoCa's unimodal decoder (no cross-attention); "
                             "set multimodal_layers for the cross-attending blocks")
        if not self.language.tie_embeddings:
            raise ValueError("CoCa ties each decoder's output head to its embedding table (tie_embeddings: true)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoCaConfig":
        data = dict(data)
        if isinstance(data.get("vision"), dict):  # CoCa pools its image embedding by attention unless told otherwise
            data["vision"] = {"pool": "attention", **data["vision"]}
        return config_from_dict(cls, data, {"vision": VisionConfig, "language": LanguageConfig,
                                            "preprocess": PreprocessConfig})


class CoCaCache:
    """The KV caches of the unimodal and the multimodal decoder, selected together (beam search)."""

    def __init__(self, text: KVCache, multimodal: KVCache) -> None:
        self.text = text
        self.multimodal = multimodal

    def select(self, indices: torch.Tensor) -> "CoCaCache":
        return CoCaCache(self.text.select(indices), self.multimodal.select(indices))


class CoCa(LanguageModelVLM, ContrastiveScoring, nn.Module, PretrainedMixin):
    """Capabilities: ``encode_image``, ``encode_text``, ``score`` (contrastive), ``generate``, ``answer``, ``loss``."""

    architecture = "coca"
    capabilities = ("encode_image", "encode_text", "score", "generate", "answer", "loss")
    special_tokens: tuple[str, ...] = ()  # the CLS is a learned embedding, not a token
    vocabulary_section = "language"

    def __init__(self, config: CoCaConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.language = CausalLM(config.language)  # unimodal; its (tied) output head is never used
        self.multimodal = CausalLM(replace(config.language, layers=config.multimodal_layers, cross_attention=True,
                                           context_width=config.vision.width))
        width = config.language.width
        self.text_cls = nn.Parameter(torch.randn(width) * 0.02)
        self.visual_projection = ProjectionHead(config.vision.width, config.embed_dim, config.projection)
        self.text_projection = ProjectionHead(width, config.embed_dim, config.projection)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, config: dict[str, Any] | CoCaConfig, tokenizer: Any = None) -> "CoCa":
        if isinstance(config, dict):
            config = CoCaConfig.from_dict(config)
        return cls(config, tokenizer=tokenizer)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def image_slot_ids(self, tokenizer: Any) -> list[int]:
        return []  # the image enters through cross-attention, not the token sequence

    # towers ------------------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, S, S] -> (image tokens [B, N, Wv], normalised image embeddings [B, D]); differentiable."""
        tokens = self.visual.forward_tokens(images.to(self.device, self.dtype))
        return tokens, F.normalize(self.visual_projection(self.visual.pool(tokens)), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[bos] text [eos]`` ids and mask [B, L] -> (unimodal states [B, L, W], normalised text
        embeddings [B, D]). The CLS embedding replaces each row's last real token (the eos, never an input of the
        captioning loss), so one causal pass serves both losses: no earlier position sees it."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        last = attention_mask.long().sum(dim=1) - 1  # [B]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        cls_slots = (positions[None, :] == last[:, None]).unsqueeze(-1)
        embeddings = self.language.embed_tokens(input_ids)
        embeddings = torch.where(cls_slots, self.text_cls.to(embeddings.dtype), embeddings)
        states = self.language.hidden_states(embeddings)  # right padding: the fast causal path, no mask
        pooled = states[torch.arange(len(last), device=last.device), last]
        return states, F.normalize(self.text_projection(pooled), dim=-1)

    # capabilities -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: Any) -> torch.Tensor:
        """PIL image(s) or a tensor [B, 3, S, S] -> L2-normalised float32 embeddings [B, D]."""
        return self.image_features(self.preprocess(images))[1].float()

    @torch.no_grad()
    def encode_text(self, texts: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """String(s) -> L2-normalised float32 embeddings [B, D], each text embedded as in training (after the
        caption prompt). Token ids [B, L] laid out ``[bos] tokens [eos] pad...`` (``Tokenizer.encode``) with their
        mask work too."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, torch.Tensor):
            if attention_mask is None:
                attention_mask = torch.ones_like(texts, dtype=torch.bool)
            return self.text_features(texts, attention_mask)[1].float()
        texts = list(texts)
        ids, mask, _ = self.sequences([self.config.caption_prompt] * len(texts), texts, left_pad=False)
        return self.text_features(ids, mask)[1].float()

    def logit_parameters(self) -> tuple[float, float | None]:
        return float(self.logit_scale.exp()), None

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Training: ``batch`` has ``images`` [B, 3, S, S] and ``captions`` (or ``questions`` + ``answers``).

        Returns the weighted ``loss`` and its parts. With gradient accumulation each micro-batch is its own
        contrastive batch (fewer negatives than the whole step)."""
        prompts, targets = self.prompts_of(batch)
        ids, mask, labels = self.sequences(prompts, targets, left_pad=False)
        labels = labels.to(self.device)
        image_tokens, image_embeddings = self.image_features(batch["images"])
        states, text_embeddings = self.text_features(ids, mask)
        logits = self.multimodal(states, context=image_tokens)
        caption = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                  ignore_index=IGNORE)
        contrastive = losses.infonce_loss(image_embeddings, text_embeddings, self.logit_scale)
        loss = self.config.caption_weight * caption + self.config.contrastive_weight * contrastive
        return {"loss": loss, "caption_loss": caption.detach(), "contrastive_loss": contrastive.detach(),
                "logit_scale": self.logit_scale.detach().exp(), "target_tokens": (labels != IGNORE).sum().float()}

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Clamp the log temperature to [0, max_logit_scale] (as CLIP)."""
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

    # decoding (see vlmkit.generation) ------------------------------------------------------------------------
    def new_cache(self) -> CoCaCache:
        return CoCaCache(self.language.new_cache(), self.multimodal.new_cache())

    def decode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor, state: DecodingState) -> torch.Tensor:
        cache = state.cache
        states = self.language.hidden_states(embeddings, attention_mask,
                                             cache=cache.text if cache is not None else None)
        return self.multimodal(states, attention_mask, cache=cache.multimodal if cache is not None else None,
                               context=state.context, context_mask=state.context_mask)

    def decoding_state(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> DecodingState:
        """Prefix: the embeddings of ``[bos] prompt`` (left-padded); context: the image tokens."""
        image_tokens = self.visual.forward_tokens(pixels.to(self.device, self.dtype))
        return DecodingState(prefix=self.embed_tokens(ids), prefix_mask=mask, context=image_tokens)

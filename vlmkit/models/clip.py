"""Contrastive image-text models: CLIP (InfoNCE), SigLIP (sigmoid loss) and LiT (one tower locked).

A ``ContrastiveModel`` is a vision tower and a text tower, each followed by a projection into a shared
embedding space, plus a learnable log-temperature (and, for SigLIP, a bias).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit import losses
from vlmkit.models.pretrained import PretrainedMixin, config_from_dict
from vlmkit.models.scoring import ContrastiveScoring
from vlmkit.modules import ProjectionHead, TextConfig, TextTransformer, VisionConfig, VisionTransformer

LOSSES = {"clip": "infonce", "siglip": "sigmoid"}
TEXT_ENCODER_DIR = "text_encoder"  # a saved model's copy of its pretrained text encoder's config.json


def build_text_tower(config: TextConfig, saved_encoder: str | Path | None = None) -> nn.Module:
    """The text tower ``config`` names: vlmkit's own transformer, or the pretrained Hugging Face encoder
    ``config.pretrained`` (with its weights; given ``saved_encoder``, a folder holding its config.json, the same
    architecture with fresh weights for a saved state dict to fill). Both map (ids, mask) -> pooled [B, width]."""
    if not config.pretrained:
        return TextTransformer(config)
    from vlmkit.backends.hf_text_tower import PretrainedTextTower  # transformers enters only through backends

    return PretrainedTextTower.build(config.pretrained, pool=config.pool, context_length=config.context_length,
                                     saved_config=saved_encoder)


@dataclass
class PreprocessConfig:
    """How the model's own ``encode_image`` turns PIL images into tensors."""

    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    crop_offset: str = "round"  # round (torchvision, open_clip) | floor (Hugging Face processors)

    def image_transform(self, image_size: int, *, train: bool = False) -> Any:
        """The ``ImageTransform`` these settings describe."""
        from vlmkit.data.transforms import ImageTransform

        return ImageTransform(image_size=image_size, mean=tuple(self.mean), std=tuple(self.std), train=train,
                              interpolation=self.interpolation, resize_mode=self.resize_mode,
                              crop_offset=self.crop_offset)


@dataclass
class ContrastiveConfig:
    architecture: str = "clip"  # clip | siglip
    embed_dim: int = 256
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection: str = "linear"  # linear | mlp | none
    init_logit_scale: float | None = None  # log temperature; default ln(1/0.07) for clip, ln 10 for siglip
    init_logit_bias: float | None = None  # siglip only; default -10
    max_logit_scale: float = math.log(100.0)
    freeze: str = "none"  # none | vision | text  (LiT locks one tower; see ContrastiveModel.apply_freeze)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # phrase pre-training (vlmkit.data.phrases): the label vocabulary of the two towers' multi-hot heads
    phrase_labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.architecture not in LOSSES:
            raise ValueError(f"contrastive architecture must be clip or siglip, not {self.architecture!r}")
        if self.freeze not in ("none", "vision", "text"):
            raise ValueError(f"freeze must be none, vision or text, not {self.freeze!r}")
        if self.init_logit_scale is None:
            self.init_logit_scale = math.log(1 / 0.07) if self.architecture == "clip" else math.log(10.0)
        if self.init_logit_bias is None and self.architecture == "siglip":
            self.init_logit_bias = -10.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContrastiveConfig":
        return config_from_dict(cls, data, {"vision": VisionConfig, "text": TextConfig,
                                            "preprocess": PreprocessConfig})


class ContrastiveModel(ContrastiveScoring, nn.Module, PretrainedMixin):
    """CLIP / SigLIP. Capabilities: ``encode_image``, ``encode_text``, ``score``, ``loss``."""

    def __init__(self, config: ContrastiveConfig, tokenizer: Any = None, *,
                 saved_text_encoder: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.architecture = config.architecture
        self.visual = VisionTransformer(config.vision)
        self.text = build_text_tower(config.text, saved_text_encoder)
        if config.text.pretrained:
            if config.text.vocab_size > self.text.vocab_size:
                raise ValueError(f"the tokenizer's {config.text.vocab_size} ids do not fit the pretrained text "
                                 f"encoder's {self.text.vocab_size}-token vocabulary: use the encoder's tokenizer")
            for key, value in self.text.describe().items():  # the config.json says what the tower really is
                setattr(config.text, key, value)
        self.visual_projection = ProjectionHead(config.vision.width, config.embed_dim, config.projection)
        self.text_projection = ProjectionHead(self.text.width, config.embed_dim, config.projection)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.init_logit_bias)))
                           if config.architecture == "siglip" else None)
        self.tokenizer = tokenizer
        self.phrase_heads: nn.ModuleDict | None = None
        self.loss_weights = {"contrastive": 1.0, "phrase": 1.0}  # the trainer sets them per step
        self.set_phrase_labels(config.phrase_labels)
        self.apply_freeze()

    def set_phrase_labels(self, labels: Sequence[str]) -> None:
        """Phrase pre-training: a fresh linear head on each tower's pooled features, one output per label
        (none when ``labels`` is empty). The labels are saved with the model's config."""
        self.config.phrase_labels = list(labels)
        if not labels:
            self.phrase_heads = None
            return
        device = self.logit_scale.device
        self.phrase_heads = nn.ModuleDict({"image": nn.Linear(self.config.vision.width, len(labels)),
                                           "text": nn.Linear(self.text.width, len(labels))}).to(device)

    # construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any] | ContrastiveConfig, tokenizer: Any = None) -> "ContrastiveModel":
        if isinstance(config, dict):
            config = ContrastiveConfig.from_dict(config)
        return cls(config, tokenizer=tokenizer)

    @classmethod
    def from_saved_config(cls, config: dict[str, Any], directory: Path) -> "ContrastiveModel":
        """Rebuild a saved model's architecture: a pretrained text encoder from the folder's own copy of its
        config.json (the saved weights fill it), so loading needs neither the original folder nor its package."""
        saved = Path(directory) / TEXT_ENCODER_DIR
        return cls(ContrastiveConfig.from_dict(config), saved_text_encoder=saved if saved.is_dir() else None)

    def save_pretrained(self, directory: str | Path) -> Path:
        save_config = getattr(self.text, "save_config", None)
        if save_config is not None:  # before config.json, which is written last and marks the folder complete
            save_config(Path(directory) / TEXT_ENCODER_DIR)
        return super().save_pretrained(directory)

    def config_dict(self) -> dict[str, Any]:
        data = asdict(self.config)
        data.pop("architecture")
        return data

    def apply_freeze(self) -> None:
        """LiT: lock one tower so only the other learns.

        A native tower is locked with its projection; a pretrained text encoder's projection is new (randomly
        initialised), so it stays trainable and learns to map the locked encoder's space into the shared one.
        """
        locked = {"vision": (self.visual, self.visual_projection),
                  "text": (self.text,) if self.config.text.pretrained else (self.text, self.text_projection),
                  }.get(self.config.freeze, ())
        for module in locked:
            module.requires_grad_(False)

    def set_freeze(self, freeze: str) -> None:
        """Lock a different tower from now on (``train.freeze``, e.g. when fine-tuning a loaded model)."""
        if freeze not in ("none", "vision", "text"):
            raise ValueError(f"freeze must be none, vision or text for a contrastive model, not {freeze!r}")
        self.config.freeze = freeze
        self.requires_grad_(True)
        self.apply_freeze()
        self.train(self.training)

    def train(self, mode: bool = True) -> "ContrastiveModel":
        super().train(mode)
        if self.config.freeze == "vision":
            self.visual.eval()
        elif self.config.freeze == "text":
            self.text.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.positional_embedding.dtype

    @property
    def image_transform(self) -> Any:
        return self.config.preprocess.image_transform(self.config.vision.image_size)

    # capabilities ---------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images -> [B, 3, S, S] with the model's own eval transform."""
        transform = self.image_transform
        return torch.stack([transform(image.convert("RGB")) for image in images])

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Strings -> (input_ids [B, L], attention_mask [B, L]) with the model's own tokenizer."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer attached; pass token ids or load a saved model")
        return self.tokenizer.encode(list(texts), self.config.text.context_length)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> normalised [B, D] (differentiable)."""
        return F.normalize(self.visual_projection(self.visual(images)), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] -> normalised [B, D] (differentiable)."""
        if input_ids.shape[0] == 0:  # e.g. no hard negatives in this batch: still a [0, D] tensor for the loss
            return self.text_projection(torch.zeros(0, self.text.width, device=input_ids.device,
                                                    dtype=self.text_projection_dtype()))
        return F.normalize(self.text_projection(self._text_pooled(input_ids, attention_mask)), dim=-1)

    def _text_pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is not None and (self.config.text.causal or self.config.text.pretrained):
            # Columns after the longest caption are padding that no real token attends to (a causal tower, or a
            # pretrained encoder, which masks them): dropping them gives the same features for a fraction of
            # the compute (captions are short).
            longest = int(attention_mask.sum(dim=1).max())
            input_ids, attention_mask = input_ids[:, :longest], attention_mask[:, :longest]
        return self.text(input_ids, attention_mask)

    @torch.no_grad()
    def encode_image(self, images: Any) -> torch.Tensor:
        """PIL image(s) or a preprocessed tensor [B, 3, S, S] -> L2-normalised float32 embeddings [B, D]."""
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(images if isinstance(images, (list, tuple)) else [images])
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return self.image_features(images.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def encode_text(self, texts: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """String(s) or token ids [B, L] (+ mask) -> L2-normalised float32 embeddings [B, D]."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, torch.Tensor):
            texts, attention_mask = self.tokenize(texts)
        if attention_mask is None:
            attention_mask = torch.ones_like(texts, dtype=torch.bool)
        return self.text_features(texts.to(self.device), attention_mask.to(self.device)).float()

    def text_projection_dtype(self) -> torch.dtype:
        return next(self.text_projection.parameters(), self.logit_scale).dtype

    def logit_parameters(self) -> tuple[float, float | None]:
        """(exp(logit_scale), logit_bias or None): how cosine scores become the loss's logits."""
        bias = float(self.logit_bias) if self.logit_bias is not None else None
        return float(self.logit_scale.exp()), bias

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                negative_ids: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None, phrase_targets: torch.Tensor | None = None,
                caption_phrase_targets: torch.Tensor | None = None,
                negative_phrase_targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training forward: normalised ``image_embeddings`` and ``text_embeddings`` [B, D], and with hard
        negatives (``negative_ids`` [N, L]) their ``negative_text_embeddings`` [N, D]. With phrase heads and
        targets (multi-hot [B, K] of the image's and of the caption's phrase labels), the heads' logits
        ``phrase_image_logits`` / ``phrase_text_logits`` and the targets themselves, for the loss; with
        ``negative_phrase_targets`` [N, K] (each hard negative's own labels), ``phrase_negative_logits`` too.
        During a phrase warm-up (``loss_weights["contrastive"] == 0``) the hard negatives' embeddings are left out:
        nothing uses them."""
        pooled_image = self.visual(images)
        pooled_text = self._text_pooled(input_ids, attention_mask)
        features = {"image_embeddings": F.normalize(self.visual_projection(pooled_image), dim=-1),
                    "text_embeddings": F.normalize(self.text_projection(pooled_text), dim=-1)}
        if self.phrase_heads is not None and phrase_targets is not None and caption_phrase_targets is not None:
            features.update(phrase_image_logits=self.phrase_heads["image"](pooled_image),
                            phrase_text_logits=self.phrase_heads["text"](pooled_text),
                            phrase_targets=phrase_targets, caption_phrase_targets=caption_phrase_targets)
        phrases = "phrase_image_logits" in features
        warming_up = phrases and self.loss_weights["contrastive"] == 0
        if phrases and negative_phrase_targets is not None and negative_ids is not None:
            # minimal pairs: the text head also learns each hard negative's own labels
            head = self.phrase_heads["text"]
            if len(negative_ids):
                pooled_negatives = self._text_pooled(negative_ids, negative_mask)
                logits = head(pooled_negatives)
                embeddings = F.normalize(self.text_projection(pooled_negatives), dim=-1)
            else:  # none in this (micro-)batch: still [0, K] and [0, D] tensors
                logits = head(torch.zeros(0, head.in_features, device=negative_ids.device, dtype=head.weight.dtype))
                embeddings = self.text_features(negative_ids, negative_mask)
            features.update(phrase_negative_logits=logits, negative_phrase_targets=negative_phrase_targets)
            if not warming_up:
                features["negative_text_embeddings"] = embeddings
        elif negative_ids is not None and not warming_up:  # a warm-up without pairs does not encode the negatives
            features["negative_text_embeddings"] = self.text_features(negative_ids, negative_mask)
        return features

    def loss_from_features(self, features: dict[str, torch.Tensor], *,
                           temperature_grad: bool = True) -> dict[str, torch.Tensor]:
        """The contrastive loss of a batch of features (gathered across processes under torchrun).

        ``temperature_grad=False`` detaches the temperature and bias (used by gradient accumulation so that
        they receive their gradient once per step, not once per micro-batch). With phrase logits in
        ``features``, the loss is ``loss_weights["contrastive"]`` x the contrastive loss + ``loss_weights["phrase"]``
        x the phrase loss (binary cross-entropy of each tower's head against its targets, the two summed; the
        text's over the captions and their hard negatives together).
        """
        scale = self.logit_scale if temperature_grad else self.logit_scale.detach()
        image, text = features["image_embeddings"], features["text_embeddings"]
        negatives = features.get("negative_text_embeddings")
        if self.logit_bias is None:
            loss = losses.infonce_loss(image, text, scale, negatives)
        else:
            bias = self.logit_bias if temperature_grad else self.logit_bias.detach()
            loss = losses.sigmoid_loss(image, text, scale, bias, negatives)
        out = {"loss": loss, "logit_scale": self.logit_scale.detach().exp()}
        if "phrase_image_logits" in features:
            text_logits, text_targets = features["phrase_text_logits"], features["caption_phrase_targets"]
            if "phrase_negative_logits" in features:  # the captions and their negatives, one text term
                text_logits = torch.cat([text_logits, features["phrase_negative_logits"]])
                text_targets = torch.cat([text_targets, features["negative_phrase_targets"]])
            phrase = (F.binary_cross_entropy_with_logits(features["phrase_image_logits"].float(),
                                                         features["phrase_targets"].float())
                      + F.binary_cross_entropy_with_logits(text_logits.float(), text_targets.float()))
            out.update(contrastive_loss=loss.detach(), phrase_loss=phrase.detach(),
                       loss=self.loss_weights["contrastive"] * loss + self.loss_weights["phrase"] * phrase)
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.detach()
        return out

    def loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``batch`` has ``images`` [B, 3, S, S], ``input_ids`` [B, L], ``attention_mask`` [B, L], and
        optionally hard negatives ``negative_ids`` / ``negative_mask`` [N, L]."""
        def on_device(key: str) -> torch.Tensor | None:
            return batch[key].to(self.device) if batch.get(key) is not None else None

        features = self(batch["images"].to(self.device, self.dtype), on_device("input_ids"),
                        on_device("attention_mask"), on_device("negative_ids"), on_device("negative_mask"),
                        on_device("phrase_targets"), on_device("caption_phrase_targets"),
                        on_device("negative_phrase_targets"))
        return self.loss_from_features(features)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Clamp the log temperature to [0, ln 100] (open_clip semantics)."""
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

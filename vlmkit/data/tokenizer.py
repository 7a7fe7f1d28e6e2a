"""Text tokenizer: a Hugging Face ``tokenizers.Tokenizer`` plus bos/eos/pad conventions.

Every encoded caption is ``[bos] tokens [eos] [pad] ...``; when too long the tokens are cut so
that ``eos`` is still the last real token (CLIP-style text towers pool at the eos position).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..files import atomic_write_text
from .decode import repair_text

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Looked for, in order, when a Hugging Face folder names no such token in its config files.
_BOS_CANDIDATES = ("<|startoftext|>", "[CLS]", "<s>", "<bos>", "<|begin_of_text|>")
_EOS_CANDIDATES = ("<|endoftext|>", "[SEP]", "</s>", "<eos>", "<|end_of_text|>")
_PAD_CANDIDATES = ("<|pad|>", "[PAD]", "<pad>")


class Tokenizer:
    """Fast tokenizer with explicit special tokens.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``; its own padding/truncation settings are turned
            off (we pad and truncate ourselves) and its post-processor is bypassed.
        bos_token, eos_token: strings that must be in the vocabulary.
        pad_token: defaults to ``eos_token`` (GPT-2 style) when None; the attention mask, not the
            pad id, tells real tokens from padding.
    """

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        pad_token: str | None = PAD_TOKEN,
    ) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self._bos_id = self._require_id(self.bos_token, "bos")
        self._eos_id = self._require_id(self.eos_token, "eos")
        self._pad_id = self._require_id(self.pad_token, "pad")
        self._special_ids = {self._bos_id, self._eos_id, self._pad_id}

    def _require_id(self, token: str, role: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{role} token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def backend(self) -> HFTokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tokenizer

    def encode(
        self, texts: Sequence[str], context_length: int
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Tokenize a batch.

        Returns:
            input_ids: int64 [B, context_length], ``[bos] tokens [eos] pad...``.
            attention_mask: bool [B, context_length], True on real tokens (bos..eos).
        """
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (bos + eos), got {context_length}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings; wrap a single caption in a list")
        batch = len(texts)
        input_ids = torch.full((batch, context_length), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, context_length), dtype=torch.bool)
        room = context_length - 2
        # One encode per text rather than encode_batch: encode_batch starts a Rust thread pool,
        # which makes tokenizers warn (and disable itself) in forked DataLoader workers.
        for row, text in enumerate(texts):
            # Raw manifest text may hold surrogate escapes, which tokenizers (Rust) rejects.
            text, _ = repair_text(text)
            tokens = self._tokenizer.encode(text, add_special_tokens=False).ids[:room]
            ids = [self._bos_id, *tokens, self._eos_id]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = True
        return input_ids, attention_mask  # type: ignore[return-value]

    def add_special_tokens(self, tokens: Sequence[str]) -> int:
        """Add tokens the vocabulary lacks (e.g. a VLM's ``<image>``) as special tokens; returns how many were new."""
        from tokenizers import AddedToken

        new = [token for token in tokens if self._tokenizer.token_to_id(token) is None]
        if new:
            self._tokenizer.add_special_tokens([AddedToken(token, special=True) for token in new])
        return len(new)

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` alone: no bos/eos, no padding, no truncation."""
        text, _ = repair_text(text)
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids [L] -> text, without bos/eos/pad or other special tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        kept = [int(i) for i in ids if int(i) not in self._special_ids]
        return self._tokenizer.decode(kept, skip_special_tokens=True).strip()

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Token ids [B, L] -> B texts."""
        return [self.decode(row) for row in ids]

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (atomically).

        ``tokenizer_class`` is ``PreTrainedTokenizerFast`` so that transformers' AutoTokenizer can
        open the folder too.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "saved_by": "vlmkit",
        }
        atomic_write_text(folder / "tokenizer.json", self._tokenizer.to_str(pretty=True))
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Load a vlmkit-saved tokenizer or a local Hugging Face tokenizer folder.

        Special tokens come from ``tokenizer_config.json`` then ``special_tokens_map.json``:
        bos = ``bos_token`` or else ``cls_token`` (BERT's [CLS]); eos = ``eos_token`` or else
        ``sep_token`` (BERT's [SEP]); pad = ``pad_token``. A role the files do not name is filled
        from well-known tokens in the vocabulary (``<|startoftext|>``/``[CLS]``/``<s>``,
        ``<|endoftext|>``/``[SEP]``/``</s>``, ``<|pad|>``/``[PAD]``/``<pad>``); a missing pad
        falls back to eos, a missing bos to eos (GPT-2 uses one token for both).
        """
        folder = Path(directory)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise FileNotFoundError(
                f"{folder}: no tokenizer.json (found: {', '.join(present) or 'nothing'}); "
                "vlmkit needs a fast-tokenizer file, e.g. one saved by Tokenizer.save or by "
                "transformers' save_pretrained"
            )
        backend = HFTokenizer.from_file(str(tokenizer_file))
        named = _special_tokens_from_files(folder)
        vocab = backend.get_vocab(with_added_tokens=True)

        def pick(names: Iterable[str | None], candidates: Iterable[str]) -> str | None:
            for token in [*names, *candidates]:
                if token and token in vocab:
                    return token
            return None

        eos = pick([named.get("eos_token"), named.get("sep_token")], _EOS_CANDIDATES)
        if eos is None:
            raise ValueError(
                f"{folder}: cannot tell the end-of-text token; set eos_token in "
                "tokenizer_config.json"
            )
        bos = pick([named.get("bos_token"), named.get("cls_token")], _BOS_CANDIDATES) or eos
        pad = pick([named.get("pad_token")], _PAD_CANDIDATES) or eos
        return cls(backend, bos_token=bos, eos_token=eos, pad_token=pad)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, pad={self.pad_token!r})"
        )


def _token_string(value: object) -> str | None:
    """Special tokens are saved either as strings or as AddedToken dicts with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens_from_files(folder: Path) -> dict[str, str]:
    named: dict[str, str] = {}
    # tokenizer_config.json wins over special_tokens_map.json, as in transformers.
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error})") from None
        for role in ("bos_token", "eos_token", "pad_token", "cls_token", "sep_token"):
            token = _token_string(data.get(role))
            if token and role not in named:
                named[role] = token
    return named


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
              special_tokens: Sequence[str] = ()) -> Tokenizer:
    """Train a byte-level BPE tokenizer (NFC + lowercase, as CLIP) on ``texts``.

    Special tokens: ``<|pad|>`` (id 0), ``<|startoftext|>`` (1), ``<|endoftext|>`` (2), then
    ``special_tokens`` (e.g. a VLM's ``<image>``). The same texts give the same tokenizer.
    """
    backend = HFTokenizer(models.BPE())
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    # add_prefix_space: a word costs the same tokens at the start of a caption as in its middle.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((repair_text(text)[0] for text in texts), trainer=trainer)
    # Lets Hugging Face tooling add bos/eos by itself; vlmkit's encode bypasses it.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN)),
                        (EOS_TOKEN, backend.token_to_id(EOS_TOKEN))],
    )
    return Tokenizer(backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)

"""Tokenizer: BPE training, encode layout, truncation, save/load, Hugging Face folders."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from vlmkit.data import Tokenizer, train_bpe

CORPUS = [f"a {size} {color} {shape} to the left of a {other} star"
          for size in ("small", "large") for color in ("red", "green", "blue", "orange")
          for shape in ("circle", "square", "triangle") for other in ("purple", "yellow")] * 3


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=400, min_frequency=2)


def test_special_tokens_have_fixed_ids(bpe):
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
    assert 256 < bpe.vocab_size <= 400


def test_encode_layout_and_mask(bpe):
    ids, mask = bpe.encode(["A Red Circle", ""], context_length=12)
    assert ids.shape == mask.shape == (2, 12)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    length = int(mask[0].sum())
    assert ids[0, 0] == bpe.bos_id and ids[0, length - 1] == bpe.eos_id
    assert (ids[0, length:] == bpe.pad_id).all() and not mask[0, length:].any()
    assert ids[1, :2].tolist() == [bpe.bos_id, bpe.eos_id] and mask[1].sum() == 2


def test_truncation_keeps_eos_last(bpe):
    ids, mask = bpe.encode(["a large red circle to the left of a purple star " * 5], 8)
    assert mask.all()
    assert ids[0, 0] == bpe.bos_id and ids[0, -1] == bpe.eos_id
    assert bpe.eos_id not in ids[0, 1:-1].tolist()


def test_decode_lowercases_and_skips_specials(bpe):
    ids, _ = bpe.encode(["A Red Circle"], 16)
    assert bpe.decode(ids[0]) == "a red circle"
    assert bpe.decode_batch(ids) == ["a red circle"]


def test_context_length_too_small_and_single_string(bpe):
    with pytest.raises(ValueError):
        bpe.encode(["x"], 1)
    with pytest.raises(TypeError):
        bpe.encode("a red circle", 8)  # type: ignore[arg-type]


def test_surrogate_escaped_text_does_not_crash(bpe):
    raw = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    ids, mask = bpe.encode([raw], 16)
    assert bpe.decode(ids[0]) == "café"
    train_bpe([raw, "plain text"], vocab_size=300, min_frequency=1)


def test_training_is_deterministic_across_processes(bpe, tmp_path):
    script = (
        "import sys, json; from vlmkit.data.tokenizer import train_bpe; "
        "corpus = json.load(open(sys.argv[1])); "
        "print(train_bpe(corpus, vocab_size=400, min_frequency=2).backend.to_str())"
    )
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(CORPUS))
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script, str(corpus_file)], cwd=root,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == bpe.backend.to_str()
    assert train_bpe(CORPUS, 400, 2).backend.to_str() == bpe.backend.to_str()


def test_save_load_round_trip(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|startoftext|>" and config["pad_token"] == "<|pad|>"
    assert config["eos_token"] == "<|endoftext|>" and "tokenizer_class" in config
    loaded = Tokenizer.load(tmp_path / "tok")
    texts = ["a small green triangle", "orange"]
    assert all(torch.equal(a, b) for a, b in zip(bpe.encode(texts, 10), loaded.encode(texts, 10)))
    assert [p.name for p in (tmp_path / "tok").iterdir() if p.name.startswith(".")] == []


def test_pickles_for_dataloader_workers(bpe):
    copy = pickle.loads(pickle.dumps(bpe))
    assert torch.equal(copy.encode(["red"], 6)[0], bpe.encode(["red"], 6)[0])


def _wordpiece_folder(folder: Path) -> None:
    """A tiny BERT-style tokenizer folder as transformers would save it."""
    vocab = {token: i for i, token in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "##s"])}
    backend = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    backend.enable_padding(pad_id=0, pad_token="[PAD]", length=32)  # must be ignored by us
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}))


def test_load_bert_style_folder(tmp_path):
    _wordpiece_folder(tmp_path / "bert")
    tokenizer = Tokenizer.load(tmp_path / "bert")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("[CLS]", "[SEP]",
                                                                             "[PAD]")
    ids, mask = tokenizer.encode(["A red circles"], 8)
    assert ids[0].tolist() == [2, 5, 6, 7, 9, 3, 0, 0]  # no doubled [CLS]/[SEP] from BertProcessing
    assert mask[0].tolist() == [True] * 6 + [False] * 2
    assert tokenizer.decode(ids[0]) == "a red circles"


def test_load_gpt_style_folder_pads_with_eos(tmp_path, bpe):
    folder = tmp_path / "gpt"
    folder.mkdir()
    bpe.backend.save(str(folder / "tokenizer.json"))
    token = {"content": "<|endoftext|>", "lstrip": False, "rstrip": False}
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": token,
                                                                "eos_token": token}))
    tokenizer = Tokenizer.load(folder)
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    # The vocabulary's own <|pad|> is found among the well-known pad tokens.
    assert tokenizer.pad_token == "<|pad|>"
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": None}))
    vocab_without_pad = HFTokenizer(models.WordLevel({"<|endoftext|>": 0, "hi": 1}, "hi"))
    vocab_without_pad.save(str(folder / "tokenizer.json"))
    assert Tokenizer.load(folder).pad_token == "<|endoftext|>"


def test_load_without_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json.*vocab.txt"):
        Tokenizer.load(tmp_path)

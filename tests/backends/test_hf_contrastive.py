"""Hugging Face CLIP / SigLIP through vlmkit.load: parity with the library's own forward pass and processor."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402
from tiny_checkpoints import TEXTS, make_hf_clip, make_hf_siglip, random_images  # noqa: E402

import vlmkit  # noqa: E402
from vlmkit.backends.hf import HFContrastive, resolve_repo  # noqa: E402


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return make_hf_clip(tmp_path_factory.mktemp("hf_clip"))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    return make_hf_siglip(tmp_path_factory.mktemp("hf_siglip"))


def test_clip_adapter_matches_transformers_forward(clip_folder):
    model = vlmkit.load(str(clip_folder))
    assert isinstance(model, HFContrastive)
    reference = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(clip_folder)
    images = random_images()
    inputs = processor(text=TEXTS, images=images, padding=True, truncation=True, max_length=16,
                       return_tensors="pt")
    with torch.no_grad():
        output = reference(**inputs)
    torch.testing.assert_close(model.logits(images, TEXTS), output.logits_per_image, atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.normalize(output.image_embeds, dim=-1)
    torch.testing.assert_close(model.encode_image(images), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.encode_text(TEXTS), torch.nn.functional.normalize(output.text_embeds, dim=-1),
                               atol=1e-6, rtol=1e-5)
    # A preprocessed tensor and token ids are accepted too, as by native models.
    torch.testing.assert_close(model.encode_image(inputs["pixel_values"]), expected, atol=1e-6, rtol=1e-5)
    scores = model.score(images[:1], TEXTS)
    assert scores.shape == (1, len(TEXTS)) and scores.abs().max() <= 1.0 + 1e-6


def test_siglip_adapter_pads_to_max_length_as_its_processor(siglip_folder):
    model = vlmkit.load(str(siglip_folder))
    reference = transformers.SiglipModel.from_pretrained(siglip_folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(siglip_folder)
    length = reference.config.text_config.max_position_embeddings
    assert model.tokenize(["a red circle"])["input_ids"].shape == (1, length)
    images = random_images()
    inputs = processor(text=TEXTS, images=images, padding="max_length", max_length=length, return_tensors="pt")
    with torch.no_grad():
        output = reference(**inputs)
    torch.testing.assert_close(model.logits(images, TEXTS), output.logits_per_image, atol=1e-5, rtol=1e-5)


def test_hf_repo_id_resolves_offline_from_the_cache(clip_folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--someone--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for path in clip_folder.iterdir():
        if path.is_file():
            (snapshot / path.name).write_bytes(path.read_bytes())
    (tmp_path / "models--someone--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_repo("someone/tiny-clip") == snapshot
    model = vlmkit.load("hf:someone/tiny-clip")
    assert isinstance(model, HFContrastive)
    with pytest.raises(FileNotFoundError, match="hf download someone/missing"):
        vlmkit.load("hf:someone/missing")


def test_missing_weights_give_a_one_line_error_from_the_cli(tmp_path, monkeypatch):
    import subprocess
    import sys

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "vlmkit", "eval", "zeroshot", "--model", "hf:openai/clip-vit-base-patch32",
                             "--data", str(tmp_path / "x.csv"), "--classes", "a,b"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "hf download openai/clip-vit-base-patch32" in lines[0], result.stderr


def test_only_clip_converts_to_native(siglip_folder):
    from vlmkit.backends.clip_convert import native_from_hf

    with pytest.raises(ValueError, match="'siglip' model; only CLIP converts"):
        native_from_hf(siglip_folder)

"""open_clip checkpoints: the adapter and the conversion to native, against open_clip's own forward pass.

open_clip needs a torchvision that matches torch, which the CPU test environment cannot install, so these tests
skip there; run them in a venv with open_clip (see benchmarks/README.md: the peer venv)."""
from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from tiny_checkpoints import TEXTS, random_images  # noqa: E402

import vlmkit  # noqa: E402
from vlmkit.backends.clip_convert import export_open_clip, native_from_open_clip  # noqa: E402
from vlmkit.backends.open_clip import OpenClipContrastive, clip_bpe_tokenizer  # noqa: E402

ARCH = "vlmkit-tiny-test-quickgelu"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 16, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
    (folder / f"{ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    path = folder / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


def _reference(checkpoint):
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(ARCH)


def test_adapter_matches_open_clip(checkpoint):
    adapter = vlmkit.load(f"open_clip:{ARCH}:{checkpoint}")
    assert isinstance(adapter, OpenClipContrastive)
    model, preprocess, tokenizer = _reference(checkpoint)
    images = random_images(3)
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        expected_text = model.encode_text(tokenizer(TEXTS), normalize=True)
    torch.testing.assert_close(adapter.encode_image(images), expected)
    torch.testing.assert_close(adapter.encode_text(TEXTS), expected_text)


def test_conversion_to_native_gives_the_same_embeddings(checkpoint, tmp_path):
    native = native_from_open_clip(ARCH, checkpoint)
    model, preprocess, tokenizer = _reference(checkpoint)
    images = random_images(4)
    pixels = torch.stack([preprocess(i) for i in images])
    torch.testing.assert_close(native.preprocess(images), pixels, atol=0, rtol=0)  # same resize and crop
    ids, mask = native.tokenize(TEXTS)
    reference_ids = tokenizer(TEXTS)
    assert torch.equal(ids[mask], reference_ids[mask.bool()])
    with torch.no_grad():
        assert (native.encode_image(pixels) - model.encode_image(pixels, normalize=True)).abs().max() <= 1e-4
        assert (native.encode_text(TEXTS) - model.encode_text(reference_ids, normalize=True)).abs().max() <= 1e-4
    # ... and back: open_clip loads the exported weights and computes the same embeddings.
    exported = export_open_clip(native, tmp_path / "back.safetensors")
    again = open_clip.create_model(ARCH, pretrained=str(exported)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(pixels), model.encode_image(pixels))


def test_real_vocabulary_tokenizer_matches_open_clip():
    ours = clip_bpe_tokenizer()
    reference = open_clip.get_tokenizer("ViT-B-32")
    texts = TEXTS + ["A photo of a CAT, sitting on 2 mats!", "naïve café — déjà vu"]
    ids, mask = ours.encode(texts, 77)
    expected = reference(texts)
    assert torch.equal(ids[mask], expected[mask.bool()])

"""CLIP conversion: Hugging Face / open_clip weights -> native vlmkit and back, with the same embeddings."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402
from tiny_checkpoints import TEXTS, make_hf_clip, random_images, write_clip_vocabulary  # noqa: E402

import vlmkit  # noqa: E402
from vlmkit.backends import clip_maps  # noqa: E402
from vlmkit.backends.checkpoint_files import read_state_dict  # noqa: E402
from vlmkit.backends.clip_convert import (export_hf, export_open_clip, native_config_from_open_clip,  # noqa: E402
                                          native_from_hf)
from vlmkit.backends.open_clip import clip_bpe_tokenizer  # noqa: E402
from vlmkit.models.clip import ContrastiveModel  # noqa: E402

TOLERANCE = 1e-4  # the bound for fp32 (measured: 0 to a few 1e-7)


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def hf_folder(request, tmp_path_factory):
    return make_hf_clip(tmp_path_factory.mktemp(f"hf_{request.param}"), activation=request.param)


def _native_clip(tokenizer, vocab_size: int) -> ContrastiveModel:
    config = {"architecture": "clip", "embed_dim": 16,
              "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 4, "pool": "cls"},
              "text": {"vocab_size": vocab_size, "context_length": 16, "width": 32, "layers": 2, "heads": 4}}
    torch.manual_seed(0)
    model = ContrastiveModel.from_config(config, tokenizer=tokenizer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def test_hf_to_native_gives_the_same_embeddings(hf_folder):
    reference = vlmkit.load(str(hf_folder))  # the transformers model through its own processor
    native = native_from_hf(hf_folder)
    assert isinstance(native, ContrastiveModel)
    images = random_images(4)
    pixels = reference.preprocess(images)
    assert (native.encode_image(pixels) - reference.encode_image(pixels)).abs().max() <= TOLERANCE
    # Native preprocessing reproduces the checkpoint's PIL image processor pixel for pixel (odd crop margins
    # included). With torchvision installed, transformers 5 defaults to a torchvision backend whose resize
    # differs from PIL's by up to ~1 grey level; the PIL one is the reference then.
    pil_processor = getattr(transformers, "CLIPImageProcessorPil", None)
    if pil_processor is not None:
        pixels = pil_processor.from_pretrained(hf_folder)(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(native.preprocess(images), pixels, atol=0, rtol=0)
    assert (native.encode_text(TEXTS) - reference.encode_text(TEXTS)).abs().max() <= TOLERANCE
    assert torch.equal(native.tokenize(TEXTS[:1])[0][0, :6], reference.tokenize(TEXTS[:1])["input_ids"][0, :6])


def test_hf_round_trip_is_exact(hf_folder, tmp_path):
    native = native_from_hf(hf_folder)
    export_hf(native, tmp_path / "back")
    original = read_state_dict(hf_folder)
    back = read_state_dict(tmp_path / "back")
    assert set(original) == set(back)
    for key, tensor in original.items():
        assert torch.equal(tensor, back[key]), key


def test_native_model_exports_to_transformers_clip(tmp_path):
    """A natively trained CLIP (vlmkit's own BPE, end-of-text at id 2) loads in transformers' CLIPModel."""
    from vlmkit.data import train_bpe

    tokenizer = train_bpe(TEXTS * 10, vocab_size=300, min_frequency=1)
    assert tokenizer.eos_id == 2  # the case transformers treats as a legacy checkpoint
    native = _native_clip(tokenizer, tokenizer.vocab_size)
    export_hf(native, tmp_path / "hf")
    hf_model = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    images = random_images(3)
    inputs = processor(text=TEXTS, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = hf_model(**inputs)
    pixels = native.preprocess(images)
    with torch.no_grad():
        image_embeds = native.encode_image(pixels)
        text_embeds = native.encode_text(TEXTS)
    hf_image = torch.nn.functional.normalize(
        hf_model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    assert (hf_image - image_embeds).abs().max() <= TOLERANCE
    assert (torch.nn.functional.normalize(output.text_embeds, dim=-1) - text_embeds).abs().max() <= TOLERANCE
    # vlmkit.load on the exported folder gives the transformers adapter, with the same scores.
    adapter = vlmkit.load(str(tmp_path / "hf"))
    assert (adapter.encode_text(TEXTS) - text_embeds).abs().max() <= TOLERANCE


def test_models_that_transformers_cannot_express_are_refused(tmp_path):
    from vlmkit.data import train_bpe

    tokenizer = train_bpe(TEXTS * 10, vocab_size=300, min_frequency=1)
    model = ContrastiveModel.from_config({"architecture": "clip", "embed_dim": 16,
                                          "vision": {"image_size": 32, "width": 32, "layers": 1, "heads": 2,
                                                     "pool": "mean"},
                                          "text": {"vocab_size": tokenizer.vocab_size, "width": 32, "layers": 1,
                                                   "heads": 2}}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="vision pool is mean"):
        export_hf(model, tmp_path / "x")
    with pytest.raises(ValueError, match="needs cls"):
        export_open_clip(model, tmp_path / "x.safetensors")


def test_open_clip_layout_round_trip_and_shape_inference(tmp_path):
    native = _native_clip(None, 300)
    path = export_open_clip(native, tmp_path / "open_clip.safetensors")
    state = read_state_dict(path)
    assert state["visual.proj"].shape == (32, 16) and "visual.transformer.resblocks.1.attn.in_proj_weight" in state
    config = native_config_from_open_clip(state, vision_heads=4, text_heads=4)
    assert config["vision"]["image_size"] == 32 and config["vision"]["layers"] == 2
    assert config["text"]["context_length"] == 16 and config["embed_dim"] == 16
    back = clip_maps.to_native(state, clip_maps.OPEN_CLIP_RULES)
    for key, tensor in native.state_dict().items():
        assert torch.equal(tensor, back[key]), key


def test_clip_bpe_tokenizer_matches_transformers_clip_tokenizer(tmp_path):
    files = write_clip_vocabulary(tmp_path)
    ours = clip_bpe_tokenizer(files["gz"])
    reference = transformers.CLIPTokenizer(str(files["vocab"]), str(files["merges"]))
    ids, mask = ours.encode(TEXTS, 16)
    expected = reference(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(mask.long(), expected["attention_mask"])
    assert torch.equal(ids[mask], expected["input_ids"][mask.bool()])


def test_checkpoint_files_unwrap_training_checkpoints_and_refuse_torchscript(tmp_path):
    state = {"a.weight": torch.randn(2, 2)}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(read_state_dict(tmp_path / "ckpt.pt")["a.weight"], state["a.weight"])
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        read_state_dict(tmp_path / "scripted.pt")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.bin")

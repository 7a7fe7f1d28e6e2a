"""CoCa: the two losses and their weights, the CLS text embedding, score, decoding with and without the KV cache,
batched decoding, save/load, training with vlmkit train, and the caption command."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import vlmkit
from vlmkit import losses
from vlmkit.data import train_bpe
from vlmkit.generation import DecodingConfig, DecodingState, generate
from vlmkit.models.coca import CoCa

CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a circle",
            "what color is the circle?", "red", "blue", "three"]


def tiny_model(*, seed: int = 0, **overrides) -> CoCa:
    tokenizer = train_bpe(CAPTIONS * 5, vocab_size=400, min_frequency=1)
    config = {"embed_dim": 16, "multimodal_layers": 1, "max_text_length": 40,
              "vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
              "language": {"vocab_size": tokenizer.vocab_size, "context_length": 64, "width": 32, "layers": 1,
                           "heads": 2},
              **overrides}
    torch.manual_seed(seed)
    model = CoCa.from_config(config, tokenizer=tokenizer).eval()
    with torch.no_grad():  # a spread-out random model, so that outputs depend on the inputs
        for parameter in [*model.language.parameters(), *model.multimodal.parameters()]:
            parameter.mul_(4.0)
    return model


def _caption_loss_alone(model: CoCa, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Captioning cross-entropy computed row by row through the decoding path, on ``[bos] caption`` without any
    CLS or padding: targets are the caption tokens + eos, the image tokens the cross-attention context."""
    eos = model.tokenizer.eos_id
    terms = []
    for index, caption in enumerate(captions):
        target = model.tokenizer.token_ids(caption) + [eos]
        ids = torch.tensor([[model.tokenizer.bos_id] + target[:-1]])
        state = DecodingState(prefix=model.embed_tokens(ids), prefix_mask=torch.ones_like(ids, dtype=torch.bool),
                              context=model.visual.forward_tokens(images[index:index + 1]))
        logits = model.decode(state.prefix, state.prefix_mask, state)[0]
        terms.append(F.cross_entropy(logits, torch.tensor(target), reduction="none"))
    return torch.cat(terms).mean()


def test_loss_is_the_weighted_sum_of_captioning_and_infonce():
    model = tiny_model()
    images = torch.randn(3, 3, 16, 16)
    captions = ["red", "two green triangles", "a small yellow star above a circle"]
    out = model.loss({"images": images, "captions": captions})
    with torch.no_grad():
        caption = _caption_loss_alone(model, images, captions)
        contrastive = losses.infonce_loss(model.encode_image(images), model.encode_text(captions), model.logit_scale)
    torch.testing.assert_close(out["caption_loss"], caption)
    torch.testing.assert_close(out["contrastive_loss"], contrastive)
    torch.testing.assert_close(out["loss"], 2.0 * caption + 1.0 * contrastive)
    assert out["target_tokens"] == sum(len(model.tokenizer.token_ids(c)) + 1 for c in captions)
    weighted = tiny_model(caption_weight=0.5, contrastive_weight=3.0).loss({"images": images, "captions": captions})
    torch.testing.assert_close(weighted["loss"], 0.5 * caption + 3.0 * contrastive)
    vqa = model.loss({"images": images, "questions": ["what color?"] * 3, "answers": ["red", "blue", "three"]})
    assert vqa["target_tokens"] == sum(len(model.tokenizer.token_ids(a)) + 1 for a in ("red", "blue", "three"))


def test_every_parameter_learns_and_the_temperature_is_clamped():
    """No unused parameters (DDP would refuse them): both losses reach every part of the model."""
    model = tiny_model().train()
    model.loss({"images": torch.randn(4, 3, 16, 16), "captions": CAPTIONS[:4]})["loss"].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.after_optimizer_step()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(100.0))


def test_text_embedding_is_the_cls_state_after_the_text():
    model = tiny_model()
    alone = model.encode_text(["red"])
    padded = model.encode_text(["a small yellow star above a circle", "red"])[1:]  # right padding after "red"
    torch.testing.assert_close(alone, padded)
    ids, mask = model.tokenizer.encode(["red", "two green triangles"], 12)  # [bos] tokens [eos] pad...
    torch.testing.assert_close(model.encode_text(ids, mask), model.encode_text(["red", "two green triangles"]))
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1))
    with torch.no_grad():
        model.text_cls.add_(torch.randn_like(model.text_cls))
    assert not torch.allclose(model.encode_text(["red"]), alone, atol=1e-3)


def test_score_agrees_with_encode_image_and_encode_text():
    from PIL import Image

    model = tiny_model()
    images = [Image.new("RGB", (20, 20), color) for color in ("red", "blue")]
    texts = ["red", "blue", "two green triangles"]
    scores = model.score(images, texts)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores, model.encode_image(images) @ model.encode_text(texts).t())
    torch.testing.assert_close(model.logits(images, texts), model.logit_scale.exp() * scores)
    assert not torch.allclose(scores[0], scores[1])


def _state(model: CoCa, images: torch.Tensor, prompts: list[str]) -> DecodingState:
    ids, mask, _ = model.sequences(prompts, None, left_pad=True)
    return model.decoding_state(images, ids, mask)


@pytest.mark.parametrize("decoding", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 20, "top_p": 0.9,
                                                              "temperature": 0.8, "seed": 3}])
def test_generation_with_and_without_the_kv_cache_gives_the_same_tokens(decoding):
    model = tiny_model()
    state = _state(model, torch.randn(3, 3, 16, 16), ["", "question: what color? answer:", "a small"])
    assert state.context is not None and state.context.shape == (3, 4, 32)  # the image tokens, cross-attended
    outputs = {}
    for use_cache in (True, False):
        config = DecodingConfig(max_new_tokens=8, use_cache=use_cache, **decoding)
        outputs[use_cache] = generate(model, state, config, stop_ids=[model.tokenizer.eos_id],
                                      pad_id=model.tokenizer.pad_id)
    assert outputs[True] == outputs[False]
    assert any(len(row) > 0 for row in outputs[True])


def test_batched_generation_equals_one_image_at_a_time_and_depends_on_the_image():
    model = tiny_model()
    images = torch.randn(3, 3, 16, 16)
    prompts = ["", "question: what color? answer:", "a small"]
    for options in ({}, {"num_beams": 3}):
        together = model.generate_from_prompts(images, prompts, max_new_tokens=6, **options)
        alone = [model.generate_from_prompts(images[i:i + 1], [prompts[i]], max_new_tokens=6, **options)[0]
                 for i in range(3)]
        assert together == alone
    same_prompt = model.generate(images, max_new_tokens=6)
    assert len(set(same_prompt)) > 1  # only the cross-attended image differs between rows
    assert model.answer(images, "what color is the circle?") == model.generate_from_prompts(
        images, ["question: what color is the circle? answer:"] * 3, max_new_tokens=8)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(caption_weight=1.5)
    model.save_pretrained(tmp_path / "coca")
    loaded = vlmkit.load(tmp_path / "coca")
    assert isinstance(loaded, CoCa) and loaded.config == model.config
    assert loaded.config.vision.pool == "attention"
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.score(images, CAPTIONS), model.score(images, CAPTIONS))
    assert loaded.generate(images, max_new_tokens=6) == model.generate(images, max_new_tokens=6)
    batch = {"images": images, "captions": ["red", "blue"]}
    torch.testing.assert_close(loaded.loss(batch)["loss"], model.loss(batch)["loss"])


def test_train_caption_save_load_and_commands(synth_data, tmp_path):
    from vlmkit.config import load_config
    from vlmkit.train import train

    overrides = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
                 "model.vision.layers=1", "model.vision.heads=2", "model.language.width=32", "model.language.layers=1",
                 "model.language.heads=2", "model.multimodal_layers=1", "model.embed_dim=16",
                 "tokenizer.vocab_size=300", "train.steps=3", "train.batch_size=8", "train.warmup=1",
                 "train.precision=fp32", "data.workers=0", "train.threads=1", "train.grad_accum=2",
                 "train.log_every=1"]
    out = tmp_path / "run"
    result = train(load_config("coca-tiny", overrides), data=synth_data / "captions.csv", out=out, progress=False)
    assert result.steps == 3 and math.isfinite(result.final_loss)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"caption_loss", "contrastive_loss", "logit_scale"} <= set(records[-1])
    model = vlmkit.load(out)
    assert isinstance(model, CoCa) and model.tokenizer is not None
    from PIL import Image

    path = next((synth_data / "images").rglob("*.png"))
    image = Image.open(path)
    captions = model.generate([image, image], max_new_tokens=5)
    assert len(captions) == 2 and captions[0] == captions[1]
    assert model.score([image], ["a red circle", "a blue square"]).shape == (1, 2)
    command = [sys.executable, "-m", "vlmkit", "caption", str(path), "--model", str(out), "--max-new-tokens", "5"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == model.generate([image], max_new_tokens=5)[0]

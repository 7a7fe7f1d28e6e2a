"""Fuyu-style decoder-only VLM: patches projected into the sequence with image-newline tokens, loss on the target
only, decoding with and without the KV cache, batched decoding, save/load, vlmkit train, and the caption command."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import vlmkit
from vlmkit.data import train_bpe
from vlmkit.generation import DecodingConfig, DecodingState, generate
from vlmkit.models.fuyu import IMAGE_NEWLINE_TOKEN, Fuyu, patchify
from vlmkit.models.prefix_lm import IGNORE, IMAGE_TOKEN

CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a circle",
            "what color is the circle?", "red", "blue", "three"]


def tiny_model(*, seed: int = 0) -> Fuyu:
    tokenizer = train_bpe(CAPTIONS * 5, vocab_size=400, min_frequency=1,
                          special_tokens=[IMAGE_TOKEN, IMAGE_NEWLINE_TOKEN])
    config = {"vision": {"image_size": 16, "patch_size": 8},
              "language": {"vocab_size": tokenizer.vocab_size, "context_length": 64, "width": 32, "layers": 2,
                           "heads": 2},
              "max_text_length": 40}
    torch.manual_seed(seed)
    model = Fuyu.from_config(config, tokenizer=tokenizer).eval()
    with torch.no_grad():  # a spread-out random model, so that outputs depend on the inputs
        for parameter in model.parameters():
            parameter.mul_(4.0)
    return model


def test_patches_are_flattened_rows_of_pixels_in_raster_order():
    images = torch.randn(2, 3, 16, 24)
    patches = patchify(images, 8)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    for row in range(2):
        for column in range(3):
            expected = images[1, :, row * 8:(row + 1) * 8, column * 8:(column + 1) * 8].permute(1, 2, 0).flatten()
            torch.testing.assert_close(patches[1, row * 3 + column], expected)


def test_sequences_lay_out_patch_rows_with_newlines_and_mask_the_loss_to_the_target():
    model = tiny_model()
    ids, mask, labels = model.sequences(["question: what color? answer:", ""], ["red", "two green triangles"],
                                        left_pad=False)
    backend = model.tokenizer.backend
    image_id, newline_id = backend.token_to_id(IMAGE_TOKEN), backend.token_to_id(IMAGE_NEWLINE_TOKEN)
    row = [image_id, image_id, newline_id]  # a 2 x 2 grid of patches
    for index in range(2):
        assert ids[index, :7].tolist() == [model.tokenizer.bos_id] + row * 2
        assert (ids[index] == image_id).sum() == 4 and (ids[index] == newline_id).sum() == 2
        target = labels[index][labels[index] != IGNORE].tolist()
        assert target[-1] == model.tokenizer.eos_id
        assert model.tokenizer.decode(target) == ["red", "two green triangles"][index]
    assert model.num_image_tokens == 6
    # user text cannot add image slots
    assert model.sequences(["<image> <image_newline>"], None, left_pad=True)[0].tolist() == \
        model.sequences([""], None, left_pad=True)[0].tolist()


def test_patch_projections_fill_the_image_slots_in_order():
    model = tiny_model()
    images = torch.randn(2, 3, 16, 16)
    ids, _, _ = model.sequences(["", "a small"], None, left_pad=True)
    embeddings = model.embed(images, ids)
    image_id = model.tokenizer.backend.token_to_id(IMAGE_TOKEN)
    projected = model.patch_projection(patchify(images, 8))
    for index in range(2):
        slots = (ids[index] == image_id).nonzero().flatten()
        torch.testing.assert_close(embeddings[index, slots], projected[index])
        others = (ids[index] != image_id).nonzero().flatten()
        torch.testing.assert_close(embeddings[index, others], model.language.embed_tokens(ids[index, others]))


def test_loss_equals_cross_entropy_over_target_tokens_only():
    model = tiny_model()
    images = torch.randn(2, 3, 16, 16)
    batch = {"images": images, "captions": ["red", "two green triangles"]}
    out = model.loss(batch)
    ids, _, labels = model.sequences(["", ""], batch["captions"], left_pad=False)
    logits = model.language(model.embed(images, ids))
    picked = [torch.nn.functional.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
              for b in range(2) for t in range(1, ids.shape[1]) if labels[b, t] != IGNORE]
    torch.testing.assert_close(out["loss"], torch.stack(picked).mean())
    assert out["target_tokens"] == len(picked)
    vqa = {"images": images, "questions": ["what color?", "how many?"], "answers": ["red", "three"]}
    ids, _, labels = model.sequences(["question: what color? answer:", "question: how many? answer:"],
                                     vqa["answers"], left_pad=False)
    logits = model.language(model.embed(images, ids))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE)
    torch.testing.assert_close(model.loss(vqa)["loss"], expected)


def test_every_parameter_learns():
    """The patch projection, the newline embedding and the decoder all get a gradient (DDP needs no unused ones)."""
    model = tiny_model().train()
    model.loss({"images": torch.randn(2, 3, 16, 16), "captions": ["red", "blue"]})["loss"].backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    newline_id = model.tokenizer.backend.token_to_id(IMAGE_NEWLINE_TOKEN)
    assert model.language.token_embedding.weight.grad[newline_id].abs().sum() > 0


@pytest.mark.parametrize("decoding", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 20, "top_p": 0.9,
                                                              "temperature": 0.8, "seed": 3}])
def test_generation_with_and_without_the_kv_cache_gives_the_same_tokens(decoding):
    model = tiny_model()
    images = torch.randn(3, 3, 16, 16)
    ids, mask, _ = model.sequences(["", "question: what color? answer:", "a small"], None, left_pad=True)
    state = DecodingState(prefix=model.embed(images, ids), prefix_mask=mask)
    outputs = {}
    for use_cache in (True, False):
        config = DecodingConfig(max_new_tokens=8, use_cache=use_cache, **decoding)
        outputs[use_cache] = generate(model, state, config, stop_ids=[model.tokenizer.eos_id],
                                      pad_id=model.tokenizer.pad_id)
    assert outputs[True] == outputs[False]
    assert any(len(row) > 0 for row in outputs[True])


def test_batched_generation_equals_one_image_at_a_time():
    """Left padding, the causal mask and the positions make a batch decode like its rows alone."""
    model = tiny_model()
    images = torch.randn(3, 3, 16, 16)
    prompts = ["", "question: what color? answer:", "a small"]
    for options in ({}, {"num_beams": 3}):
        together = model.generate_from_prompts(images, prompts, max_new_tokens=6, **options)
        alone = [model.generate_from_prompts(images[i:i + 1], [prompts[i]], max_new_tokens=6, **options)[0]
                 for i in range(3)]
        assert together == alone
    assert len(set(model.generate(images, max_new_tokens=6))) > 1  # the patches alone tell the rows apart
    assert model.answer(images, "what color is the circle?") == model.generate_from_prompts(
        images, ["question: what color is the circle? answer:"] * 3, max_new_tokens=8)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "fuyu")
    loaded = vlmkit.load(tmp_path / "fuyu")
    assert isinstance(loaded, Fuyu) and loaded.config == model.config
    images = torch.randn(2, 3, 16, 16)
    assert loaded.generate(images, max_new_tokens=6, num_beams=2) == model.generate(images, max_new_tokens=6,
                                                                                    num_beams=2)
    batch = {"images": images, "captions": ["red", "blue"]}
    torch.testing.assert_close(loaded.loss(batch)["loss"], model.loss(batch)["loss"])


def test_train_caption_save_load_and_commands(synth_data, tmp_path):
    from vlmkit.config import load_config
    from vlmkit.train import train

    overrides = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.language.width=32",
                 "model.language.layers=1", "model.language.heads=2", "model.language.context_length=64",
                 "tokenizer.vocab_size=300", "train.steps=3", "train.batch_size=8", "train.warmup=1",
                 "train.precision=fp32", "data.workers=0", "train.threads=1", "train.grad_accum=2"]
    out = tmp_path / "run"
    result = train(load_config("fuyu-tiny", overrides), data=synth_data / "captions.csv", out=out, progress=False)
    assert result.steps == 3 and math.isfinite(result.final_loss)
    model = vlmkit.load(out)
    assert isinstance(model, Fuyu) and model.num_image_tokens == 4 * 5
    from PIL import Image

    path = next((synth_data / "images").rglob("*.png"))
    image = Image.open(path)
    captions = model.generate([image, image], max_new_tokens=5)
    assert len(captions) == 2 and captions[0] == captions[1]
    command = [sys.executable, "-m", "vlmkit", "caption", str(path), "--model", str(out), "--max-new-tokens", "5"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == model.generate([image], max_new_tokens=5)[0]

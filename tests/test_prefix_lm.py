"""VLMs on a language model (prefix LM): sequences, loss masking, connectors, decoding with and without the KV
cache, training with vlmkit train, and the caption / ask commands."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vlmkit
from vlmkit.data import train_bpe
from vlmkit.generation import DecodingConfig, DecodingState, generate
from vlmkit.models.prefix_lm import IGNORE, IMAGE_TOKEN, PrefixLM

CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a circle",
            "what color is the circle?", "red", "blue", "three"]


def tiny_model(kind: str = "mlp", *, seed: int = 0, freeze: tuple[str, ...] = ()) -> PrefixLM:
    tokenizer = train_bpe(CAPTIONS * 5, vocab_size=400, min_frequency=1, special_tokens=[IMAGE_TOKEN])
    config = {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "pool": "mean"},
              "connector": {"kind": kind, "num_queries": 3, "layers": 1, "heads": 2},
              "language": {"vocab_size": tokenizer.vocab_size, "context_length": 64, "width": 32, "layers": 2,
                           "heads": 2},
              "freeze": list(freeze), "max_text_length": 40}
    torch.manual_seed(seed)
    model = PrefixLM.from_config(config, tokenizer=tokenizer).eval()
    with torch.no_grad():  # a spread-out random model, so that outputs depend on the inputs
        for parameter in model.language.parameters():
            parameter.mul_(4.0)
    return model


def test_sequences_place_image_slots_and_mask_the_loss_to_the_target():
    model = tiny_model()
    ids, mask, labels = model.sequences(["question: what color? answer:", ""], ["red", "two green triangles"],
                                        left_pad=False)
    image_id = model.tokenizer.backend.token_to_id(IMAGE_TOKEN)
    assert (ids == image_id).sum(dim=1).tolist() == [model.num_image_tokens] * 2
    for row in range(2):
        target = labels[row][labels[row] != IGNORE].tolist()
        assert target[-1] == model.tokenizer.eos_id
        assert model.tokenizer.decode(target) == ["red", "two green triangles"][row]
    assert not mask[0, ids.shape[1] - 1] or not mask[1, ids.shape[1] - 1] or ids.shape[1] == mask.sum(1).max()


def test_loss_equals_cross_entropy_over_target_tokens_only():
    model = tiny_model()
    images = torch.randn(2, 3, 16, 16)
    batch = {"images": images, "captions": ["red", "two green triangles"]}
    loss = model.loss(batch)["loss"]
    ids, _, labels = model.sequences(["", ""], batch["captions"], left_pad=False)
    logits = model.language(model.embed(images, ids))
    picked = [torch.nn.functional.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
              for b in range(2) for t in range(1, ids.shape[1]) if labels[b, t] != IGNORE]
    torch.testing.assert_close(loss, torch.stack(picked).mean())


@pytest.mark.parametrize("kind,tokens", [("linear", 4), ("mlp", 4), ("qformer", 3), ("resampler", 3)])
def test_connectors_give_the_language_model_its_image_tokens(kind, tokens):
    model = tiny_model(kind)
    assert model.num_image_tokens == tokens
    assert model.connector(model.visual.forward_tokens(torch.randn(2, 3, 16, 16))).shape == (2, tokens, 32)


def test_frozen_parts_get_no_gradient():
    model = tiny_model(freeze=("vision", "language")).train()
    model.loss({"images": torch.randn(2, 3, 16, 16), "captions": ["red", "blue"]})["loss"].backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert all(p.grad is None for p in model.language.parameters())
    assert any(p.grad is not None for p in model.connector.parameters())
    assert not model.language.training and model.connector.training


@pytest.mark.parametrize("decoding", [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 20, "top_p": 0.9,
                                                              "temperature": 0.8, "seed": 3}])
def test_generation_with_and_without_the_kv_cache_gives_the_same_tokens(decoding):
    model = tiny_model()
    images = torch.randn(3, 3, 16, 16)
    prompts = ["", "question: what color? answer:", "a small"]
    ids, mask, _ = model.sequences(prompts, None, left_pad=True)
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
    together = model.generate_from_prompts(images, prompts, max_new_tokens=6)
    alone = [model.generate_from_prompts(images[i:i + 1], [prompts[i]], max_new_tokens=6)[0] for i in range(3)]
    assert together == alone
    beams_together = model.generate_from_prompts(images, prompts, max_new_tokens=6, num_beams=3)
    beams_alone = [model.generate_from_prompts(images[i:i + 1], [prompts[i]], max_new_tokens=6, num_beams=3)[0]
                   for i in range(3)]
    assert beams_together == beams_alone


def _sequence_logprob(model, images, prompt, tokens):
    ids, mask, _ = model.sequences([prompt], None, left_pad=True)
    full = torch.cat([ids, torch.tensor([tokens])], dim=1)
    logits = model.language(model.embed(images, full))
    logprobs = logits.log_softmax(-1)[0, ids.shape[1] - 1:-1]
    return float(logprobs.gather(1, torch.tensor(tokens)[:, None]).sum())


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy():
    model = tiny_model(seed=1)
    images = torch.randn(1, 3, 16, 16)
    ids, mask, _ = model.sequences([""], None, left_pad=True)
    state = DecodingState(prefix=model.embed(images, ids), prefix_mask=mask)
    greedy = generate(model, state, DecodingConfig(max_new_tokens=5), stop_ids=[-1], pad_id=0)[0]
    beam = generate(model, state, DecodingConfig(max_new_tokens=5, num_beams=4, length_penalty=0.0),
                    stop_ids=[-1], pad_id=0)[0]
    assert len(greedy) == len(beam) == 5
    with torch.no_grad():
        assert _sequence_logprob(model, images, "", beam) >= _sequence_logprob(model, images, "", greedy) - 1e-5


def test_train_caption_save_load_and_commands(synth_data, tmp_path):
    from vlmkit.config import load_config
    from vlmkit.train import train

    overrides = ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.width=32",
                 "model.vision.layers=1", "model.vision.heads=2", "model.language.width=32", "model.language.layers=1",
                 "model.language.heads=2", "model.language.context_length=64", "tokenizer.vocab_size=300",
                 "train.steps=3", "train.batch_size=8", "train.warmup=1", "train.precision=fp32",
                 "data.workers=0", "train.threads=1", "train.grad_accum=2"]
    out = tmp_path / "run"
    result = train(load_config("llava-tiny", overrides), data=synth_data / "captions.csv", out=out, progress=False)
    assert result.steps == 3
    model = vlmkit.load(out)
    assert isinstance(model, PrefixLM) and model.num_image_tokens == 16
    from PIL import Image

    image = Image.open(next((synth_data / "images").rglob("*.png")))
    captions = model.generate([image, image], max_new_tokens=5)
    assert len(captions) == 2 and captions[0] == captions[1]
    command = [sys.executable, "-m", "vlmkit", "caption", str(next((synth_data / "images").rglob("*.png"))),
               "--model", str(out), "--max-new-tokens", "5"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == model.generate([image], max_new_tokens=5)[0]


def test_train_on_vqa_then_answer_and_evaluate_with_the_model(synth_data, tmp_path):
    """VQAv2 files as training data (answers are the targets, questions the prompts), then `vlmkit ask` and
    `vlmkit eval vqa / captioning --model` score what the model generates."""
    import json

    from vlmkit.config import load_config
    from vlmkit.train import train
    from vlmkit.train.setup import load_training_samples

    samples = load_training_samples(synth_data / "vqa_questions.json",
                                    {"vqa_annotations": str(synth_data / "vqa_annotations.json")})
    assert samples and all(sample.meta["question"] for sample in samples)
    overrides = ["model.vision.image_size=32", "model.vision.width=32", "model.vision.layers=1",
                 "model.vision.heads=2", "model.language.width=32", "model.language.layers=1",
                 "model.language.heads=2", "tokenizer.vocab_size=300", "train.steps=2", "train.batch_size=8",
                 "train.warmup=1", "train.precision=fp32", "data.workers=0", "train.threads=1",
                 f"data.vqa_annotations={synth_data / 'vqa_annotations.json'}"]
    out = tmp_path / "vqa"
    train(load_config("llava-tiny", overrides), data=synth_data / "vqa_questions.json", out=out, progress=False)
    image = str(samples[0].image.path)
    run = subprocess.run([sys.executable, "-m", "vlmkit", "ask", image, samples[0].meta["question"], "--model",
                          str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert isinstance(json.loads(run.stdout)["answer"], str)
    run = subprocess.run([sys.executable, "-m", "vlmkit", "eval", "vqa", "--model", str(out), "--questions",
                          str(synth_data / "vqa_questions.json"), "--annotations",
                          str(synth_data / "vqa_annotations.json"), "--max-new-tokens", "3", "--batch-size", "64",
                          "--out", str(tmp_path / "eval"), "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert 0.0 <= record["metrics"]["accuracy"] <= 100.0
    answers = json.loads((tmp_path / "eval" / "answers.json").read_text())
    assert len(answers) == len(samples) and {"question_id", "answer"} <= set(answers[0])
    run = subprocess.run([sys.executable, "-m", "vlmkit", "eval", "captioning", "--model", str(out),
                          "--annotations", str(synth_data / "coco.json"), "--no-meteor", "--max-new-tokens", "4",
                          "--batch-size", "64", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "CIDEr" in json.loads(run.stdout)["metrics"]


def test_two_stage_recipes_start_from_a_clip_vision_tower(tiny_run, synth_data, tmp_path):
    """Stage 1 takes a trained CLIP's vision tower and trains only the connector; stage 2 continues the stage-1
    model on VQA with the language model unlocked and the vision tower still locked."""
    from vlmkit.config import load_config
    from vlmkit.train import train

    clip = vlmkit.load(tiny_run)
    small = ["model.language.width=32", "model.language.layers=1", "model.language.heads=2",
             "tokenizer.vocab_size=300", "train.steps=2", "train.batch_size=8", "train.warmup=1",
             "train.precision=fp32", "data.workers=0", "train.threads=1"]
    stage1 = tmp_path / "stage1"
    train(load_config("llava-tiny-stage1", small + [f"train.init_vision={tiny_run}"]),
          data=synth_data / "captions.csv", out=stage1, progress=False)
    first = vlmkit.load(stage1)
    assert first.config.vision == clip.config.vision and first.config.freeze == ["vision", "language"]
    for name, tensor in clip.visual.state_dict().items():
        assert torch.equal(first.visual.state_dict()[name], tensor), name
    stage2 = tmp_path / "stage2"
    train(load_config("llava-tiny-stage2", small + [f"train.init={stage1}",
                                                    f"data.vqa_annotations={synth_data / 'vqa_annotations.json'}"]),
          data=synth_data / "vqa_questions.json", out=stage2, progress=False)
    second = vlmkit.load(stage2)
    assert second.config.freeze == ["vision"]
    assert torch.equal(second.visual.patch_embed.weight, clip.visual.patch_embed.weight)
    assert not torch.equal(second.language.token_embedding.weight, first.language.token_embedding.weight)

"""A VLM on a pretrained Hugging Face causal language model (model.language.pretrained)."""
from __future__ import annotations

import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vlmkit  # noqa: E402
from vlmkit.data import Tokenizer, train_bpe  # noqa: E402
from vlmkit.generation import DecodingConfig, DecodingState, generate  # noqa: E402
from vlmkit.models.prefix_lm import IMAGE_TOKEN, PrefixLM  # noqa: E402

TEXTS = ["a red circle left of a blue square", "two green triangles", "a small yellow star above a circle"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer (no <image> token: vlmkit adds it)."""
    folder = tmp_path_factory.mktemp("llama")
    tokenizer = train_bpe(TEXTS * 10, vocab_size=320, min_frequency=1)
    tokenizer.save(folder)
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, initializer_range=0.3,
                                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                                      pad_token_id=tokenizer.pad_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def model_on(folder) -> PrefixLM:
    tokenizer = Tokenizer.load(folder)
    tokenizer.add_special_tokens([IMAGE_TOKEN])
    config = {"vision": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "pool": "mean"},
              "connector": {"kind": "mlp"}, "freeze": ["language"],
              "language": {"pretrained": str(folder), "vocab_size": tokenizer.vocab_size}}
    torch.manual_seed(0)
    return PrefixLM.from_config(config, tokenizer=tokenizer).eval()


@pytest.mark.parametrize("beams", [1, 3])
def test_pretrained_language_model_decodes_the_same_with_and_without_cache(llama_folder, beams):
    model = model_on(llama_folder)
    assert model.language.width == 32 and model.connector(torch.randn(1, 4, 32)).shape == (1, 4, 32)
    images = torch.randn(2, 3, 16, 16)
    ids, mask, _ = model.sequences(["", "a small"], None, left_pad=True)
    state = DecodingState(prefix=model.embed(images, ids), prefix_mask=mask)
    results = [generate(model, state, DecodingConfig(max_new_tokens=6, num_beams=beams, use_cache=cache),
                        stop_ids=[model.tokenizer.eos_id], pad_id=model.tokenizer.pad_id) for cache in (True, False)]
    assert results[0] == results[1] and any(results[0])
    together = model.generate_from_prompts(images, ["", "a small"], max_new_tokens=6)
    alone = [model.generate_from_prompts(images[i:i + 1], [p], max_new_tokens=6)[0]
             for i, p in enumerate(["", "a small"])]
    assert together == alone


def test_train_on_a_pretrained_language_model_and_load_without_its_folder(llama_folder, synth_data, tmp_path):
    from vlmkit.config import load_config
    from vlmkit.train import train

    folder = tmp_path / "llama"
    shutil.copytree(llama_folder, folder)
    overrides = ["model.vision.image_size=32", "model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2",
                 f"model.language.pretrained={folder}", "model.freeze=[language]", "train.steps=2",
                 "train.batch_size=4", "train.warmup=1", "train.precision=fp32", "data.workers=0", "train.threads=1"]
    out = tmp_path / "run"
    train(load_config("llava-tiny", overrides), data=synth_data / "captions.csv", out=out, progress=False)
    model = vlmkit.load(out)
    expected = model.generate(torch.zeros(1, 3, 32, 32), max_new_tokens=4)
    original = transformers.LlamaForCausalLM.from_pretrained(llama_folder)
    loaded_head = model.language.model.lm_head.weight[: original.config.vocab_size]
    assert torch.equal(loaded_head, original.lm_head.weight)  # frozen: the pretrained weights, kept exactly
    shutil.rmtree(folder)
    again = vlmkit.load(out)
    assert again.generate(torch.zeros(1, 3, 32, 32), max_new_tokens=4) == expected

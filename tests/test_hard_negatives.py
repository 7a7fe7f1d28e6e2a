"""NegCLIP-style hard negatives: the caption rewriter, the loss with extra wrong texts, accumulation, training."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vlmkit
from vlmkit.config import load_config
from vlmkit.data.hard_negatives import (REWRITES, change_count, flip_relation, hard_negatives, swap_attributes,
                                        swap_objects, swap_phrases)
from vlmkit.losses import infonce_loss, sigmoid_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _gradients  # noqa: E402


def test_rewrites_keep_the_words_and_change_the_meaning():
    rng = random.Random(0)
    caption = "a red circle left of a blue square"
    for rewrite in (swap_attributes, swap_objects):
        new = rewrite(caption, rng)
        assert new != caption and sorted(new.split()) == sorted(caption.split())
    assert swap_attributes(caption, rng) == "a blue circle left of a red square"
    assert swap_objects(caption, rng) == "a red square left of a blue circle"
    assert flip_relation(caption, rng) == "a red circle right of a blue square"
    assert swap_phrases(caption, rng) == "a blue square left of a red circle"  # ARO's VG-Relation negative
    assert change_count("two green stars", random.Random(1)) in ("one green star", "three green stars")
    assert swap_attributes("a red circle and a red square", rng) is None  # nothing to swap: no fake negative
    negatives = hard_negatives(caption, 3, random.Random(5))
    assert len(set(negatives)) == 3 and caption not in negatives
    assert negatives == hard_negatives(caption, 3, random.Random(5))
    assert hard_negatives("dog", 3, random.Random(0)) == []


def test_negatives_stay_grammatical_so_grammar_gives_nothing_away():
    rng = random.Random(0)
    assert swap_attributes("a yellow square left of an orange triangle", rng) == \
        "an orange square left of a yellow triangle"  # articles follow the new words
    assert swap_objects("two blue squares and a red circle", rng) is None  # "two blue circle and a red squares"
    assert swap_objects("a yellow square to the left of an orange triangle", rng) == \
        "a yellow triangle to the left of an orange square"  # "the left" is a place, not an object
    assert swap_phrases("a red circle and a blue square", rng) is None  # the same scene either way round
    assert change_count("there are two red stars", rng) in ("there is one red star", "there are three red stars")
    assert change_count("there is one red cross", rng) == "there are two red crosses"
    assert change_count("There is one fly", rng) == "There are two flies"
    for caption in ("a large red circle is above a small blue cross", "an orange star below a green square"):
        for negative in filter(None, (rewrite(caption, random.Random(3)) for rewrite in REWRITES)):
            words = negative.split()
            for article, following in zip(words, words[1:]):
                if article in ("a", "an"):
                    assert (article == "an") == (following[0] in "aeiou"), negative


def test_attribute_swaps_bind_sizes_as_well_as_colours():
    # a caption with two colours and two sizes gets either swap: size binding ("a large red circle and a small blue
    # square" vs its sizes swapped, the probes' aro_object) is trained too, not only when the colours match
    caption = "a large red circle and a small blue square"
    negatives = {swap_attributes(caption, random.Random(seed)) for seed in range(40)}
    assert negatives == {"a large blue circle and a small red square", "a small red circle and a large blue square"}
    assert swap_attributes("a large red circle and a small red square", random.Random(0)) == \
        "a small red circle and a large red square"
    assert swap_attributes("a large red circle and a large blue square", random.Random(0)) == \
        "a large blue circle and a large red square"


def test_infonce_with_negatives_adds_wrong_texts_to_image_to_text_only():
    torch.manual_seed(0)
    image, text, negatives = (F.normalize(torch.randn(n, 8), dim=-1) for n in (4, 4, 6))
    scale = torch.tensor(2.0)
    loss = infonce_loss(image, text, scale, negatives)
    logits = scale.exp() * image @ torch.cat([text, negatives]).t()
    labels = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(scale.exp() * text @ image.t(), labels))
    torch.testing.assert_close(loss, expected)
    assert loss > infonce_loss(image, text, scale)  # more wrong texts can only raise the image->text loss
    bias = torch.tensor(-1.0)
    with_negatives = sigmoid_loss(image, text, scale, bias, negatives)
    extra = -F.logsigmoid(-(scale.exp() * image @ negatives.t() + bias)).sum() / 4
    torch.testing.assert_close(with_negatives, sigmoid_loss(image, text, scale, bias) + extra)


def test_accumulation_with_hard_negatives_equals_the_whole_batch(tiny_overrides):
    config = load_config("clip-tiny", tiny_overrides)
    config["model"]["text"]["vocab_size"] = 50
    torch.manual_seed(0)
    model = vlmkit.build_model(config["model"])
    counts = torch.tensor([3, 0, 2, 3, 1, 3, 3, 2])
    batch = {"images": torch.randn(8, 3, 32, 32), "input_ids": torch.randint(1, 50, (8, 24)),
             "attention_mask": torch.ones(8, 24, dtype=torch.bool), "negative_counts": counts,
             "negative_ids": torch.randint(1, 50, (int(counts.sum()), 24)),
             "negative_mask": torch.ones(int(counts.sum()), 24, dtype=torch.bool)}
    full = _gradients(model, batch, accum=1)
    accumulated = _gradients(model, batch, accum=2)
    for name in full:
        assert torch.allclose(full[name], accumulated[name], atol=1e-6, rtol=1e-4), name
    plain = {key: batch[key] for key in ("images", "input_ids", "attention_mask")}
    assert not torch.allclose(_gradients(model, plain, 1)["logit_scale"], full["logit_scale"], rtol=1e-3)


def test_hardneg_recipe_trains_and_items_carry_negatives(synth_data, tiny_overrides, tmp_path):
    from vlmkit.data import ImageTextDataset, ImageTransform, load_samples
    from vlmkit.train import train

    dataset = ImageTextDataset(load_samples(str(synth_data / "captions.csv")), ImageTransform(32, train=True),
                               hard_negatives=2)
    item = dataset[0]
    assert 1 <= len(item["negatives"]) <= 2 and item["caption"] not in item["negatives"]
    result = train(load_config("clip-tiny-hardneg", tiny_overrides + ["train.steps=3"]),
                   data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))
    with pytest.raises(ValueError, match="contrastive"):
        train(load_config("llava-tiny", ["data.hard_negatives=2", "train.steps=1", "data.workers=0"]),
              data=synth_data / "captions.csv", out=tmp_path / "bad", progress=False)

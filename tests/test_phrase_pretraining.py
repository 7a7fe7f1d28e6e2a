"""Phrase pre-training: caption phrase labels, the towers' heads and loss, its schedule, training end to end."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import vlmkit
from vlmkit.config import load_config
from vlmkit.data.phrases import build_vocabulary, phrase_labels
from vlmkit.train.optim import phrase_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _gradients  # noqa: E402


def test_phrase_labels_bind_attributes_to_their_noun_and_give_relation_roles():
    assert phrase_labels("a small red circle to the left of a large blue square") == [
        "blue square", "blue square | right of", "large square", "red circle", "red circle | left of", "small circle"]
    # the colour swap that a bag of words cannot tell apart has other labels
    assert phrase_labels("a red circle and a blue square") == ["blue square", "red circle"]
    assert phrase_labels("a blue circle and a red square") == ["blue circle", "red square"]
    assert phrase_labels("there are two purple squares") == ["purple square"]  # plurals singular
    assert phrase_labels("a green star above a yellow cross") == [
        "green star", "green star | above", "yellow cross", "yellow cross | below"]
    assert phrase_labels("a yellow colored square") == ["yellow square"]
    assert phrase_labels("a photo of a dog") == []  # no attribute: nothing to bind
    assert phrase_labels("a red circle left of a red circle") == ["red circle"]  # no role between equals


def test_vocabulary_is_the_most_frequent_labels_in_a_fixed_order():
    captions = ["a red circle and a blue square", "a red circle", "a blue square", "a green star", "a red circle"]
    assert build_vocabulary(captions, max_labels=10) == ["red circle", "blue square"]  # green star: seen once
    assert build_vocabulary(captions, max_labels=1) == ["red circle"]
    assert build_vocabulary(captions, max_labels=10, min_count=1) == ["red circle", "blue square", "green star"]


def test_warmup_schedule_in_steps_fractions_and_while_the_budget_is_fitted():
    from vlmkit.train.optim import learning_rate

    tcfg = {"phrase_warmup": 5, "phrase_weight": 3.0, "lr": 1.0, "min_lr": 0.0}
    weights, rate = phrase_schedule(tcfg, 4, 100, 2)
    assert weights == {"contrastive": 0.0, "phrase": 1.0} and rate == learning_rate(4, 5, 1.0, 2)
    weights, rate = phrase_schedule(tcfg, 5, 100, 2)  # the contrastive phase restarts the schedule
    assert weights == {"contrastive": 1.0, "phrase": 3.0} and rate == learning_rate(0, 95, 1.0, 2) == 0.5
    assert phrase_schedule(tcfg, 100, 100, 2)[1] == learning_rate(95, 95, 1.0, 2)
    fraction = {"phrase_warmup": 0.5, "phrase_weight": 2.0, "lr": 1.0}
    assert phrase_schedule(fraction, 49, 100, 0)[0]["contrastive"] == 0.0
    assert phrase_schedule(fraction, 50, 100, 0)[0]["contrastive"] == 1.0
    weights, rate = phrase_schedule(fraction, 500, None, 0)  # schedule not fitted yet: still warming up
    assert weights["contrastive"] == 0.0 and rate == pytest.approx(1.0)
    off = {"phrase_warmup": 0, "lr": 1.0}
    assert phrase_schedule(off, 7, 10, 2) == ({"contrastive": 1.0, "phrase": 1.0}, learning_rate(7, 10, 1.0, 2))


def test_the_warmup_has_its_own_peak_rate_and_a_length_fixed_once_known():
    from vlmkit.train.optim import learning_rate, phrase_warmup_steps

    tcfg = {"phrase_warmup": 0.5, "phrase_weight": 3.0, "lr": 1.0, "phrase_lr": 0.25, "min_lr": 0.0}
    assert phrase_warmup_steps(tcfg, None) is None and phrase_warmup_steps(tcfg, 100) == 50
    assert phrase_warmup_steps({"phrase_warmup": 7}, None) == 7
    weights, rate = phrase_schedule(tcfg, 10, 100, 2)
    assert weights["contrastive"] == 0.0 and rate == learning_rate(10, 50, 0.25, 2)
    assert phrase_schedule(tcfg, 50, 100, 2)[1] == learning_rate(0, 50, 1.0, 2)  # the contrastive phase: train.lr
    # a length fixed earlier (the first fit of a time budget) holds when the schedule is fitted again
    weights, rate = phrase_schedule(tcfg, 60, 80, 2, phase_steps=50)
    assert weights["contrastive"] == 1.0 and rate == learning_rate(10, 30, 1.0, 2)
    assert phrase_schedule(tcfg, 45, 80, 2, phase_steps=50)[0]["contrastive"] == 0.0


def test_the_warmup_does_not_encode_the_hard_negatives(tiny_overrides):
    model = _model_with_heads(tiny_overrides, ["red circle", "blue square"])
    batch = _batch(2)
    negatives = {"negative_ids": batch["input_ids"][:, torch.randperm(24)], "negative_mask": batch["attention_mask"]}
    targets = {k: batch[k] for k in ("phrase_targets", "caption_phrase_targets")}
    model.loss_weights = {"contrastive": 0.0, "phrase": 1.0}
    warm = model(batch["images"], batch["input_ids"], batch["attention_mask"], **negatives, **targets)
    assert "negative_text_embeddings" not in warm
    model.loss_weights = {"contrastive": 1.0, "phrase": 2.0}
    mixed = model(batch["images"], batch["input_ids"], batch["attention_mask"], **negatives, **targets)
    assert mixed["negative_text_embeddings"].shape == (8, mixed["text_embeddings"].shape[1])
    # without phrase targets the weights do not apply: hard negatives alone are always encoded
    model.loss_weights = {"contrastive": 0.0, "phrase": 1.0}
    assert "negative_text_embeddings" in model(batch["images"], batch["input_ids"], batch["attention_mask"],
                                               **negatives)


def test_a_time_budget_is_fitted_again_when_the_warmup_ends(synth_data, tiny_overrides, tmp_path):
    from vlmkit.train import train

    overrides = tiny_overrides + ["train.steps=null", "train.minutes=0.25", "train.clock=cpu",
                                  "data.phrase_labels=64", "train.phrase_warmup=0.5", "train.phrase_lr=2e-4",
                                  "train.relation_text_steps=0"]  # its text stage would share the budget
    result = train(load_config("clip-tiny-hardneg", overrides), data=synth_data / "captions.csv",
                   out=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, second = summary["schedule_fits"]  # steps 2-13 of the warm-up timed, then 2-13 of the contrastive phase
    assert first["at_step"] == 14 and second["at_step"] == round(0.5 * first["total_steps"]) + 14
    assert result.steps <= second["total_steps"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in records if r["step"] <= round(0.5 * first["total_steps"])]
    assert warm and max(r["lr"] for r in warm) <= 2e-4 + 1e-12  # the warm-up's own peak rate


def _model_with_heads(tiny_overrides, labels):
    config = load_config("clip-tiny", tiny_overrides)
    config["model"]["text"]["vocab_size"] = 50
    torch.manual_seed(0)
    model = vlmkit.build_model(config["model"])
    model.set_phrase_labels(labels)
    return model


def _batch(labels: int, size: int = 8) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"images": torch.randn(size, 3, 32, 32, generator=generator),
            "input_ids": torch.randint(1, 50, (size, 24), generator=generator),
            "attention_mask": torch.ones(size, 24, dtype=torch.bool),
            "phrase_targets": (torch.rand(size, labels, generator=generator) < 0.3).float(),
            "caption_phrase_targets": (torch.rand(size, labels, generator=generator) < 0.2).float()}


def test_phrase_loss_is_each_towers_binary_cross_entropy_and_weights_mix_it(tiny_overrides):
    model = _model_with_heads(tiny_overrides, ["red circle", "blue square", "red circle | left of"])
    batch = _batch(3)
    features = model(batch["images"], batch["input_ids"], batch["attention_mask"],
                     phrase_targets=batch["phrase_targets"], caption_phrase_targets=batch["caption_phrase_targets"])
    image_logits = model.phrase_heads["image"](model.visual(batch["images"]))
    text_logits = model.phrase_heads["text"](model.text(batch["input_ids"], batch["attention_mask"]))
    torch.testing.assert_close(features["phrase_image_logits"], image_logits)
    torch.testing.assert_close(features["phrase_text_logits"], text_logits)

    def bce(logits, targets):  # written out, not F.binary_cross_entropy_with_logits
        p = torch.sigmoid(logits)
        return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    expected_phrase = bce(image_logits, batch["phrase_targets"]) + bce(text_logits, batch["caption_phrase_targets"])
    model.loss_weights = {"contrastive": 0.0, "phrase": 1.0}
    warm = model.loss_from_features(features)
    torch.testing.assert_close(warm["loss"], expected_phrase, rtol=1e-4, atol=1e-5)
    model.loss_weights = {"contrastive": 1.0, "phrase": 10.0}
    mixed = model.loss_from_features(features)
    torch.testing.assert_close(mixed["loss"], mixed["contrastive_loss"] + 10 * expected_phrase, rtol=1e-4, atol=1e-5)
    plain = model(batch["images"], batch["input_ids"], batch["attention_mask"])  # no targets: the plain loss
    assert "phrase_image_logits" not in plain
    torch.testing.assert_close(model.loss_from_features(plain)["loss"], mixed["contrastive_loss"])


def test_accumulation_with_phrase_targets_equals_the_whole_batch(tiny_overrides):
    model = _model_with_heads(tiny_overrides, ["red circle", "blue square", "green star", "blue square | above"])
    model.loss_weights = {"contrastive": 1.0, "phrase": 5.0}
    batch = _batch(4)
    full = _gradients(model, batch, accum=1)
    accumulated = _gradients(model, batch, accum=2)
    assert "phrase_heads.image.weight" in full and "phrase_heads.text.weight" in full
    for name in full:
        assert torch.allclose(full[name], accumulated[name], atol=1e-6, rtol=1e-4), name


def _with_negatives(batch: dict, labels: int, counts: list[int]) -> dict:
    generator = torch.Generator().manual_seed(2)
    total = sum(counts)
    return {**batch, "negative_ids": torch.randint(1, 50, (total, 24), generator=generator),
            "negative_mask": torch.ones(total, 24, dtype=torch.bool), "negative_counts": torch.tensor(counts),
            "negative_phrase_targets": (torch.rand(total, labels, generator=generator) < 0.3).float()}


def test_the_text_head_also_learns_each_hard_negatives_own_labels(tiny_overrides):
    model = _model_with_heads(tiny_overrides, ["red circle", "blue square", "red circle | left of"])
    batch = _with_negatives(_batch(3), 3, [2, 1, 0, 3, 1, 1, 2, 2])
    args = (batch["images"], batch["input_ids"], batch["attention_mask"], batch["negative_ids"],
            batch["negative_mask"], batch["phrase_targets"], batch["caption_phrase_targets"],
            batch["negative_phrase_targets"])
    model.loss_weights = {"contrastive": 1.0, "phrase": 1.0}
    features = model(*args)
    negative_logits = model.phrase_heads["text"](model.text(batch["negative_ids"], batch["negative_mask"]))
    torch.testing.assert_close(features["phrase_negative_logits"], negative_logits)
    torch.testing.assert_close(features["negative_text_embeddings"],
                               model.text_features(batch["negative_ids"], batch["negative_mask"]))
    F = torch.nn.functional
    text = F.binary_cross_entropy_with_logits(torch.cat([features["phrase_text_logits"], negative_logits]),
                                              torch.cat([batch["caption_phrase_targets"],
                                                         batch["negative_phrase_targets"]]))
    image = F.binary_cross_entropy_with_logits(features["phrase_image_logits"], batch["phrase_targets"])
    torch.testing.assert_close(model.loss_from_features(features)["phrase_loss"], image + text)
    model.loss_weights = {"contrastive": 0.0, "phrase": 1.0}  # the warm-up: the pairs, not the embeddings
    warm = model(*args)
    assert "phrase_negative_logits" in warm and "negative_text_embeddings" not in warm
    torch.testing.assert_close(model.loss_from_features(warm)["loss"], image + text)


def test_accumulation_with_negative_targets_equals_the_whole_batch(tiny_overrides):
    model = _model_with_heads(tiny_overrides, ["red circle", "blue square", "green star", "blue square | above"])
    model.loss_weights = {"contrastive": 1.0, "phrase": 5.0}
    batch = _with_negatives(_batch(4), 4, [0, 0, 2, 1, 3, 1, 0, 2])  # the first micro-batch has none
    full = _gradients(model, batch, accum=1)
    accumulated = _gradients(model, batch, accum=4)
    for name in full:  # float noise only: ~1e-6 of each gradient's scale
        scale = float(full[name].abs().max())
        assert torch.allclose(full[name], accumulated[name], atol=1e-5 * scale, rtol=1e-4), name
    without = _gradients(model, {k: v for k, v in batch.items() if k != "negative_phrase_targets"}, accum=1)
    assert not torch.allclose(without["phrase_heads.text.weight"], full["phrase_heads.text.weight"])


def test_heads_and_labels_are_saved_with_the_model(tiny_overrides, tmp_path):
    from vlmkit.models.hub import load

    model = _model_with_heads(tiny_overrides, ["red circle", "blue square"])
    model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.config.phrase_labels == ["red circle", "blue square"]
    torch.testing.assert_close(loaded.phrase_heads["image"].weight, model.phrase_heads["image"].weight)
    assert vlmkit.build_model(load_config("clip-tiny", tiny_overrides)["model"]).phrase_heads is None


def test_items_carry_the_images_and_the_captions_phrase_targets(synth_data):
    from vlmkit.data import Collator, ImageTextDataset, ImageTransform
    from vlmkit.data.sources import ImageRef, Sample

    image = str(next((synth_data / "images").iterdir()))
    captions = ["a red circle and a blue square", "a blue square to the left of a red circle"]
    sample = Sample("k", ImageRef(image), captions)
    vocabulary = ["red circle", "blue square", "blue square | left of", "green star"]
    dataset = ImageTextDataset([sample] * 4, ImageTransform(32, train=True), phrase_vocabulary=vocabulary)
    for index in range(4):
        item = dataset[index]
        assert item["phrase_targets"].tolist() == [1.0, 1.0, 1.0, 0.0]  # all its captions say
        expected = [1.0, 1.0, 1.0 if "left" in item["caption"] else 0.0, 0.0]  # only the chosen caption
        assert item["caption_phrase_targets"].tolist() == expected
    batch = Collator()([dataset[0], dataset[1]])
    assert batch["phrase_targets"].shape == (2, 4) and batch["caption_phrase_targets"].shape == (2, 4)
    assert "phrase_targets" not in ImageTextDataset([sample], ImageTransform(32))[0]
    paired = ImageTextDataset([sample] * 3, ImageTransform(32), phrase_vocabulary=vocabulary, hard_negatives=2,
                              phrase_negatives=True)
    items = [paired[index] for index in range(3)]
    for item in items:  # each negative's own labels: "a blue circle and a red square" has none of these
        expected = [[float(label in phrase_labels(text)) for label in vocabulary] for text in item["negatives"]]
        assert item["negative_phrase_targets"].tolist() == expected
    from vlmkit.data import train_bpe

    batch = Collator(train_bpe(captions * 3, vocab_size=300, min_frequency=1), 24)(items)
    assert batch["negative_phrase_targets"].shape == (len(batch["negative_ids"]), 4)
    assert batch["negative_phrase_targets"].tolist() == [row for item in items
                                                        for row in item["negative_phrase_targets"].tolist()]
    unpaired = ImageTextDataset([sample], ImageTransform(32), phrase_vocabulary=vocabulary, hard_negatives=2)[0]
    assert "negatives" in unpaired and "negative_phrase_targets" not in unpaired


def test_a_scene_states_every_object_and_relation_and_its_image_learns_them(synth_data, tmp_path):
    from vlmkit.data import ImageTextDataset, ImageTransform, load_samples
    from vlmkit.data.phrases import attach_scene_statements, scene_statements

    record = {"objects": [{"color": "red", "shape": "circle", "size": "small"},
                          {"color": "blue", "shape": "square", "size": "large"},
                          {"color": "red", "shape": "circle", "size": "large"}],
              "relations": [{"subject": 0, "relation": "left of", "object": 1},
                            {"subject": 1, "relation": "above", "object": 0},
                            {"subject": 0, "relation": "below", "object": 2}]}  # same class: says nothing
    statements = scene_statements(record)
    assert statements == ["a small red circle", "a large blue square", "a large red circle",
                          "a red circle to the left of a blue square", "a blue square above a red circle"]
    labels = {label for statement in statements for label in phrase_labels(statement)}
    assert {"red circle | left of", "blue square | right of", "blue square | above", "red circle | below",
            "small circle", "large square"} <= labels

    samples = load_samples(str(synth_data / "captions.csv"))
    assert attach_scene_statements(samples, synth_data / "captions.csv") == len(samples)
    metadata = {json.loads(line)["key"]: json.loads(line) for line in (synth_data / "metadata.jsonl").open()}
    sample = next(s for s in samples if len(metadata[Path(s.image.path).stem]["relations"]) >= 2)
    assert sample.meta["statements"] == scene_statements(metadata[Path(sample.image.path).stem])
    said = {label for caption in sample.captions for label in phrase_labels(caption)}
    stated = {label for text in sample.meta["statements"] for label in phrase_labels(text)}
    vocabulary = sorted(said | stated)
    item = ImageTextDataset([sample], ImageTransform(32), phrase_vocabulary=vocabulary)[0]
    assert {vocabulary[i] for i in item["phrase_targets"].nonzero().flatten().tolist()} == said | stated
    assert stated - said  # the metadata says more than the two captions
    shards = load_samples(str(synth_data / "shards"))  # tar members, matched by key; metadata one folder up
    assert attach_scene_statements(shards, synth_data / "shards") == len(shards)
    by_key = {s.key: s for s in shards}
    assert by_key[Path(sample.image.path).stem].meta["statements"] == sample.meta["statements"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "captions.csv").write_text(f"image,caption\n{sample.image.path},a red circle\n")
    assert attach_scene_statements(load_samples(str(elsewhere / "captions.csv")), elsewhere / "captions.csv") == 0


def test_training_warms_up_on_phrases_then_adds_the_contrastive_loss(synth_data, tiny_overrides, tmp_path):
    from vlmkit.models.hub import load
    from vlmkit.train import train

    overrides = tiny_overrides + ["train.steps=6", "data.phrase_labels=64", "train.phrase_warmup=3",
                                  "train.phrase_weight=2.0"]
    result = train(load_config("clip-tiny-hardneg", overrides), data=synth_data / "captions.csv",
                   out=tmp_path / "run", progress=False)
    assert result.steps == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("phrase_loss" in r and "contrastive_loss" in r for r in records)
    warm, after = records[:3], records[3:]
    for record in warm:  # the contrastive loss has weight 0: the temperature gets no gradient
        assert record["loss"] == pytest.approx(record["phrase_loss"], rel=1e-5)
        assert record["logit_scale"] == pytest.approx(warm[0]["logit_scale"], rel=1e-6)
    for record in after:
        assert record["loss"] == pytest.approx(record["contrastive_loss"] + 2.0 * record["phrase_loss"], rel=1e-4)
    assert after[-1]["logit_scale"] != pytest.approx(warm[0]["logit_scale"], rel=1e-6)
    from vlmkit.data import load_samples

    from vlmkit.data.phrases import attach_scene_statements

    samples = load_samples(str(synth_data / "captions.csv"))
    attach_scene_statements(samples, synth_data)
    texts = [t for sample in samples for t in sample.captions + sample.meta["statements"]]
    labels = load(tmp_path / "run" / "model").config.phrase_labels
    assert labels and labels == build_vocabulary(texts, 64)  # the most frequent of captions and scene statements
    off = train(load_config("clip-tiny-hardneg", overrides + ["train.steps=1", "data.scene_phrases=false"]),
                data=synth_data / "captions.csv", out=tmp_path / "off", progress=False)
    captions = [c for sample in samples for c in sample.captions]
    assert load(off.model_dir).config.phrase_labels == build_vocabulary(captions, 64)  # captions only


def test_phrase_labels_need_a_contrastive_model_and_captions_with_phrases(synth_data, tiny_overrides, tmp_path):
    from vlmkit.train import train

    with pytest.raises(ValueError, match="contrastive"):
        train(load_config("llava-tiny", ["data.phrase_labels=8", "train.steps=1", "data.workers=0"]),
              data=synth_data / "captions.csv", out=tmp_path / "bad", progress=False)
    plain = tmp_path / "plain.csv"
    image = next((synth_data / "images").iterdir())
    plain.write_text("image,caption\n" + "".join(f"{image},a photo of a thing number {i}\n" for i in range(20)))
    with pytest.raises(ValueError, match="no phrase with a colour or size word"):
        train(load_config("clip-tiny", tiny_overrides + ["data.phrase_labels=8", "train.steps=1"]),
              data=plain, out=tmp_path / "none", progress=False)


def test_a_resumed_run_keeps_its_vocabulary_and_heads(synth_data, tiny_overrides, tmp_path):
    from vlmkit.models.hub import load
    from vlmkit.train import train

    overrides = tiny_overrides + ["data.phrase_labels=32", "train.phrase_warmup=2", "train.checkpoint_every=2"]
    train(load_config("clip-tiny", overrides + ["train.steps=2"]), data=synth_data / "captions.csv",
          out=tmp_path / "run", progress=False)
    first = load(tmp_path / "run" / "model")
    result = train(load_config("clip-tiny", overrides + ["train.steps=4"]), data=synth_data / "captions.csv",
                   out=tmp_path / "run", resume=True, progress=False)
    assert result.steps == 4
    resumed = load(tmp_path / "run" / "model")
    assert resumed.config.phrase_labels == first.config.phrase_labels
    assert not torch.equal(resumed.phrase_heads["text"].weight, first.phrase_heads["text"].weight)  # trained on

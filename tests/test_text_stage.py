"""Relation pre-training of the text tower (train.relation_text_steps): its texts, what it trains, in the trainer,
with two processes (gloo, as under torchrun); and relation captions (data.relation_captions)."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from vlmkit.config import load_config
from vlmkit.data.phrases import phrase_labels
from vlmkit.data.sources import ImageRef, Sample
from vlmkit.train.text_stage import relation_texts, run_relation_text_stage

CAPTIONS = ["a red circle to the left of a blue square", "a blue square above a green star",
            "a red circle and a blue square", "a photo of shapes"]


def _sample(key: str, captions: list[str], statements: list[str] | None = None) -> Sample:
    meta = {"statements": statements} if statements is not None else {}
    return Sample(key=key, image=ImageRef(path=f"/nowhere/{key}.png"), captions=captions, meta=meta)


def _vocabulary(texts: list[str]) -> list[str]:
    return sorted({label for text in texts for label in phrase_labels(text)})


def _model(tiny_overrides: list[str], texts: list[str]):
    """A tiny clip with a BPE tokenizer of ``texts`` and phrase heads for their labels; and its train section."""
    from vlmkit.data import train_bpe
    from vlmkit.train.setup import build_training_model

    config = load_config("clip-tiny", tiny_overrides)
    model = build_training_model(config, train_bpe(texts * 4, vocab_size=300), seed=0)
    model.set_phrase_labels(_vocabulary(texts))
    return model, config["train"]


def test_the_texts_are_the_distinct_captions_and_statements_that_state_a_relation():
    statement = "a green star below a blue square"
    samples = [_sample("a", CAPTIONS[:3], [statement, "a small red circle"]),
               _sample("b", [CAPTIONS[0], CAPTIONS[3]])]  # a repeated caption counts once
    vocabulary = _vocabulary(CAPTIONS + [statement])
    found = relation_texts(samples, vocabulary)
    assert [text for text, _ in found] == [CAPTIONS[0], CAPTIONS[1], statement]
    for text, indices in found:
        assert sorted(vocabulary[k] for k in indices) == phrase_labels(text)  # all its labels, roles and phrases
    # a role outside the vocabulary does not make a text relational
    assert relation_texts(samples, [label for label in vocabulary if " | " not in label]) == []


def test_the_stage_trains_the_text_tower_and_its_head_only(tiny_overrides):
    model, tcfg = _model(tiny_overrides, CAPTIONS + ["a green star below a blue square"])
    samples = [_sample("a", CAPTIONS), _sample("b", ["a green star below a blue square"])]
    tcfg.update(relation_text_steps=40, lr=3e-3, batch_size=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    info = run_relation_text_stage(model, samples, tcfg, torch.device("cpu"), seed=0, progress=False)
    assert info["steps"] == 40 and info["texts"] == 3
    assert info["final_loss"] < 0.5 * info["first_loss"]  # it learns the texts' labels
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("text.") for name in changed) and "phrase_heads.text.weight" in changed
    assert all(name.startswith(("text.", "phrase_heads.text.")) for name in changed), sorted(changed)


def test_the_stage_stops_when_the_time_budget_runs_out(tiny_overrides):
    model, tcfg = _model(tiny_overrides, CAPTIONS)
    tcfg.update(relation_text_steps=50, batch_size=4)
    asked: list[int] = []

    def out_of_time() -> bool:
        asked.append(1)
        return len(asked) >= 3
    info = run_relation_text_stage(model, [_sample("a", CAPTIONS)], tcfg, torch.device("cpu"), 0, progress=False,
                                   out_of_time=out_of_time)
    assert info["steps"] == 3 and info["out_of_time"] is True
    assert "out_of_time" not in run_relation_text_stage(model, [_sample("a", CAPTIONS)], tcfg, torch.device("cpu"),
                                                        0, progress=False, out_of_time=lambda: False)


def test_the_stage_says_what_is_missing(tiny_overrides):
    model, tcfg = _model(tiny_overrides, CAPTIONS)
    tcfg.update(relation_text_steps=2)
    with pytest.raises(ValueError, match="no training text states a spatial relation"):
        run_relation_text_stage(model, [_sample("a", CAPTIONS[2:])], tcfg, torch.device("cpu"), 0, progress=False)
    model.set_phrase_labels([])
    with pytest.raises(ValueError, match="set data.phrase_labels"):
        run_relation_text_stage(model, [_sample("a", CAPTIONS)], tcfg, torch.device("cpu"), 0, progress=False)
    model.set_phrase_labels(_vocabulary(CAPTIONS))
    for parameter in model.text.parameters():
        parameter.requires_grad_(False)
    model.phrase_heads["text"].requires_grad_(False)
    with pytest.raises(ValueError, match="text tower is frozen"):
        run_relation_text_stage(model, [_sample("a", CAPTIONS)], tcfg, torch.device("cpu"), 0, progress=False)


def test_training_runs_the_stage_first_and_a_resume_does_not_repeat_it(synth_data, tiny_overrides, tmp_path):
    from vlmkit.train import train

    overrides = tiny_overrides + ["data.phrase_labels=64", "train.phrase_warmup=2", "train.relation_text_steps=5",
                                  "train.checkpoint_every=2"]
    result = train(load_config("clip-tiny-hardneg", overrides + ["train.steps=2"]), data=synth_data / "captions.csv",
                   out=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stage = summary["relation_text_stage"]
    assert result.steps == 2 and stage["steps"] == 5 and stage["texts"] > 10  # captions and scene statements
    assert stage["final_loss"] < stage["first_loss"]
    resumed = train(load_config("clip-tiny-hardneg", overrides + ["train.steps=4"]), data=synth_data / "captions.csv",
                    out=tmp_path / "run", resume=True, progress=False)
    assert resumed.steps == 4
    again = json.loads((tmp_path / "run" / "summary.json").read_text())["relation_text_stage"]
    assert again == stage  # kept from the checkpoint, not run again
    budget = train(load_config("clip-tiny-hardneg", overrides + ["train.steps=null", "train.minutes=0.02",
                                                              "train.clock=cpu", "train.relation_text_steps=10000"]),
                   data=synth_data / "captions.csv", out=tmp_path / "budget", progress=False)
    stage = json.loads((tmp_path / "budget" / "summary.json").read_text())["relation_text_stage"]
    assert stage["out_of_time"] and stage["steps"] < 10000 and budget.steps >= 1  # the budget holds the stage too
    with pytest.raises(ValueError, match="set data.phrase_labels"):
        train(load_config("clip-tiny", tiny_overrides + ["train.steps=1", "train.relation_text_steps=3"]),
              data=synth_data / "captions.csv", out=tmp_path / "off", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_stage(rank: int, port: int, folder: str, tiny_overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        texts = CAPTIONS + ["a green star below a blue square", "a yellow cross right of a red circle"]
        model, tcfg = _model(tiny_overrides, texts)
        tcfg.update(relation_text_steps=6, lr=3e-3, batch_size=2)
        run_relation_text_stage(model, [_sample("a", texts)], tcfg, torch.device("cpu"), seed=0, progress=False)
        torch.save({k: v for k, v in model.state_dict().items()}, Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_draw_their_own_texts_and_average_into_one_model(tiny_overrides, tmp_path):
    torch.multiprocessing.spawn(_rank_stage, args=(_free_port(), str(tmp_path), tiny_overrides), nprocs=2)
    first, second = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6), name  # averaged gradients, one model
    model, tcfg = _model(tiny_overrides, CAPTIONS + ["a green star below a blue square",
                                                     "a yellow cross right of a red circle"])
    alone = model.state_dict()
    assert not torch.allclose(first["phrase_heads.text.weight"], alone["phrase_heads.text.weight"])  # it trained


def test_relation_captions_caption_a_sample_by_a_relation_its_scene_states(synth_data):
    from vlmkit.data import ImageTextDataset, ImageTransform

    image = str(next((synth_data / "images").iterdir()))
    statements = ["a small red circle", "a red circle to the left of a blue square", "a blue square above a star"]
    sample = Sample("k", ImageRef(image), ["a red circle and a blue square"], meta={"statements": statements})
    always = ImageTextDataset([sample] * 40, ImageTransform(32, train=True), relation_captions=1.0, hard_negatives=1)
    captions = {always[index]["caption"] for index in range(40)}
    assert captions == {statements[1]}  # "a blue square above a star": no described object on one side, no role
    half = ImageTextDataset([sample] * 200, ImageTransform(32, train=True), relation_captions=0.5)
    drawn = [half[index]["caption"] for index in range(200)]
    assert 60 < drawn.count(statements[1]) < 140 and set(drawn) == {statements[1], sample.captions[0]}
    evaluation = ImageTextDataset([sample] * 5, ImageTransform(32), relation_captions=1.0)
    assert {evaluation[index]["caption"] for index in range(5)} == {sample.captions[0]}  # eval: the first caption
    plain = Sample("p", ImageRef(image), ["a red circle"])  # no statements: its own captions
    assert ImageTextDataset([plain], ImageTransform(32, train=True), relation_captions=1.0)[0]["caption"] == \
        "a red circle"
    off = ImageTextDataset([sample] * 20, ImageTransform(32, train=True))
    assert {off[index]["caption"] for index in range(20)} == {sample.captions[0]}
    with pytest.raises(ValueError, match="probability"):
        ImageTextDataset([sample], ImageTransform(32), relation_captions=1.5)


def test_training_with_relation_captions_attaches_the_statements_or_says_why_not(synth_data, tiny_overrides,
                                                                                  tmp_path):
    from vlmkit.train import train

    result = train(load_config("clip-tiny", tiny_overrides + ["train.steps=2", "data.relation_captions=0.5"]),
                   data=synth_data / "captions.csv", out=tmp_path / "run", progress=False)
    assert result.steps == 2
    image = next((synth_data / "images").iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "captions.csv").write_text("image,caption\n" + f"{image},a red circle\n" * 20)
    with pytest.raises(ValueError, match="not built-in scenes"):
        train(load_config("clip-tiny", tiny_overrides + ["train.steps=1", "data.relation_captions=0.5"]),
              data=elsewhere / "captions.csv", out=tmp_path / "off", progress=False)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

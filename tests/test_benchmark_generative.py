"""benchmarks/generative_quality.py --tiny: every model trains a few steps, both tasks and baselines are scored,
the JSON has every field and the tables print."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("generative_quality", ROOT / "benchmarks" / "generative_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["generative_quality"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("generative_quality", None)
    sys.modules.pop("lit_vs_scratch", None)


def check_report(bench, report: dict) -> None:
    runs = {f"{r}-captions" for r in (*bench.CAPTION_MODELS, bench.NN_MODEL)} | {f"{r}-vqa" for r in bench.VQA_MODELS}
    assert set(report["trainings"]) == runs
    for training in report["trainings"].values():
        assert training["steps"] == 3 and training["batch_size"] == 8 and training["final_loss"] > 0
    assert report["tiny"] and report["train_size"] == 100 and report["eval_size"] == 40 and report["image_size"] == 32
    machine = report["machine"]
    assert {"load_average_start", "load_average_after_training", "load_average_end", "cpu_count"} <= set(machine)

    captioning = report["captioning"]
    assert set(captioning) == {*bench.CAPTION_MODELS, f"nearest-neighbour caption ({bench.NN_MODEL})"}
    for entry in captioning.values():
        assert {"CIDEr", "Bleu_4", "ROUGE_L"} <= set(entry["metrics"]) and entry["num_images"] == 40
        assert entry["run"] in runs and isinstance(entry["example"]["prediction"], str)
    # a training image's caption describes a scene like the held-out ones: better than 3 steps of any captioner
    nearest = captioning[f"nearest-neighbour caption ({bench.NN_MODEL})"]["metrics"]
    assert nearest["CIDEr"] > 0.05 and nearest["Bleu_1"] > 0.2

    vqa = report["vqa"]
    assert set(bench.VQA_MODELS) <= set(vqa) and len(vqa) == len(bench.VQA_MODELS) + 2
    for entry in vqa.values():
        assert 0 <= entry["accuracy"] <= 100 and set(entry["per_family"]) == set(bench.FAMILIES)
        assert sum(entry["questions_per_family"].values()) == entry["num_questions"] > 40
        assert all(n >= 1 for n in entry["distinct_answers_per_family"].values())
        assert all(value is None or 0 <= value <= 100 for value in entry["per_family"].values())
    blind = vqa["blind: most frequent answer per question type"]
    assert blind["run"] is None and blind["per_family"]["existence"] == 50.0  # yes/no balanced by image id
    assert blind["accuracy"] > 20 and all(blind["distinct_answers_per_family"][family] == len(types)
                                          for family, types in bench.FAMILIES.items())  # one answer per type


def test_tiny_run_json_and_table(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    report = bench.main(["--tiny", "--sequential", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert "VQA accuracy" in capsys.readouterr().out
    check_report(bench, json.loads(out.read_text()))
    table = bench.format_tables(report)
    assert "nearest-neighbour caption (clip-tiny)" in table and "| relation |" in table and "CIDEr-D" in table

    # then LLaVA/BLIP-2 again with the CLIP run's vision tower; the six first runs are read back, not retrained
    new = [f"{recipe}-clipvision" for recipe in ("llava-tiny-captions", "llava-tiny-vqa", "blip2-tiny-vqa")]
    again = bench.main(["--tiny", "--sequential", "--workdir", str(tmp_path / "work"), "--vision-from-clip",
                        "--train-only", ",".join(new)])
    assert again["trained_now"] == new and set(again["trainings"]) == set(report["trainings"]) | set(new)
    assert again["trainings"]["coca-tiny-captions"]["steps"] == report["trainings"]["coca-tiny-captions"]["steps"]
    label = "llava-tiny (vision from clip-tiny)"
    assert label in again["captioning"] and label in again["vqa"] and "blip2-tiny (vision from clip-tiny)" in again["vqa"]
    config = (tmp_path / "work" / "runs" / "llava-tiny-vqa-clipvision" / "config.yaml").read_text()
    assert "clip-tiny-captions/model" in config  # train.init_vision
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--workdir", str(tmp_path / "work"), "--train-only", "nothing-by-that-name"])


@pytest.mark.slow
def test_tiny_side_by_side_then_eval_only(bench, tmp_path):
    """The default mode: six spawned training processes at once; then --eval-only on the same runs."""
    work = str(tmp_path / "work")
    report = bench.main(["--tiny", "--workdir", work, "--json"])
    assert report["side_by_side"]
    check_report(bench, report)
    again = bench.main(["--tiny", "--workdir", work, "--eval-only"])
    assert again["vqa"]["llava-tiny"]["accuracy"] == report["vqa"]["llava-tiny"]["accuracy"]

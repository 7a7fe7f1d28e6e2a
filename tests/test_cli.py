"""The vlmkit command: eval subcommands, JSON shape, plots, and one-line errors."""
import json
import subprocess

import pytest

from vlmkit.cli import main
from cli_helpers import vlmkit_command


def test_eval_zeroshot_json_and_confusion_plot(tiny_run, heldout_data, tmp_path, capsys):
    code = main(["eval", "zeroshot", "--model", str(tiny_run), "--data", str(heldout_data / "captions.csv"),
                 "--classes", str(heldout_data / "classes.txt"), "--json", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "zeroshot_classification" and record["model"] == str(tiny_run)
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert 0.0 <= record["metrics"]["acc1"] <= record["metrics"]["acc5"] <= 1.0
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((tmp_path / "zeroshot_classification.json").read_text())["metrics"] == record["metrics"]


def test_eval_retrieval_on_coco_json(tiny_run, heldout_data, capsys):
    assert main(["eval", "retrieval", "--model", str(tiny_run), "--data", str(heldout_data / "coco.json"),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    for k in (1, 5, 10):
        assert 0 <= metrics[f"image_retrieval_recall@{k}"] <= 1 and 0 <= metrics[f"text_retrieval_recall@{k}"] <= 1
    assert metrics["num_images"] == 80 and metrics["num_texts"] == 160


def test_classes_as_a_list_and_custom_templates(tiny_run, heldout_data, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a {} on grey\nthe {}\n")
    classes = ",".join((heldout_data / "classes.txt").read_text().split("\n")[:30]).strip(",")
    assert main(["eval", "zeroshot", "--model", str(tiny_run), "--data", str(heldout_data / "captions.csv"),
                 "--classes", classes, "--templates", str(templates)]) == 0
    assert "acc1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval", "retrieval", "--model", "/no/such/model", "--data", "x.csv"], "no model at /no/such/model"),
    (["train", "--data", "x.csv", "--out", "/tmp/x", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "--data", "x.csv", "--out", "/tmp/x", "--set", "train.stpes=3"], "did you mean train.steps"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_help_lists_commands():
    done = subprocess.run(vlmkit_command() + ["--help"], capture_output=True, text=True, check=True)
    for command in ("train", "eval", "data", "demo", "recipes"):
        assert command in done.stdout


def test_recipes_command(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "clip-tiny" in out and "siglip-tiny" in out and "clip-b32" in out

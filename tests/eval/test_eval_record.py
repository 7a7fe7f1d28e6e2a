"""Benchmark records and atomic JSON writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmkit.eval.record import benchmark_record, write_json


def test_record_shape_matches_clip_benchmark() -> None:
    record = benchmark_record(
        "zeroshot_classification",
        "clip-tiny",
        "cifar10",
        {"acc1": torch.tensor(0.5), "acc5": np.float32(0.75), "mean_per_class_recall": 0.5},
        pretrained="run-1",
        extra={"confusion_matrix_plot": Path("/tmp/cm.png")},
    )
    assert list(record)[:6] == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert record["language"] == "en"
    assert record["metrics"] == {"acc1": 0.5, "acc5": 0.75, "mean_per_class_recall": 0.5}
    assert all(type(v) is float for v in record["metrics"].values())
    assert record["confusion_matrix_plot"] == "/tmp/cm.png"
    json.dumps(record)  # JSON-ready as is


def test_extra_cannot_overwrite_standard_keys() -> None:
    with pytest.raises(ValueError, match="metrics"):
        benchmark_record("retrieval", "m", "d", {}, extra={"metrics": {}})


def test_write_json_is_atomic_and_formatted(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    record = benchmark_record("retrieval", "m", "coco", {"image_retrieval_recall@1": 0.25})
    assert write_json(target, record) == str(target)
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "dataset": "coco"' in text
    assert json.loads(text) == record
    write_json(target, {"replaced": True})  # overwriting an existing file works
    assert json.loads(target.read_text()) == {"replaced": True}
    assert os.listdir(target.parent) == ["result.json"]  # no temporary left behind


def test_write_json_failure_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["result.json"]

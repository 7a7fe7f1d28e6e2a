"""Plots: valid PNGs, sensible sizes, tolerant of missing keys."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.plots import plot_confusion_matrix, plot_training_curves


def check_png(path: str, min_side: int = 300, max_side: int = 3000) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert min_side <= min(image.size) and max(image.size) <= max_side
    assert not [n for n in os.listdir(Path(path).parent) if n.endswith(".tmp")]


@pytest.mark.parametrize("num_classes,normalize", [(3, True), (12, False), (30, True)])
def test_confusion_matrix_png(tmp_path: Path, num_classes: int, normalize: bool) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    matrix = torch.randint(0, 20, (num_classes, num_classes), generator=generator)
    matrix[0] = 0  # a class with no samples must not produce NaNs
    names = [f"class number {i} with a rather long name" for i in range(num_classes)]
    path = tmp_path / f"cm{num_classes}.png"
    assert plot_confusion_matrix(matrix, names, path, normalize=normalize, title="test") == str(path)
    check_png(str(path))


def test_confusion_matrix_accepts_numpy_and_checks_names(tmp_path: Path) -> None:
    check_png(plot_confusion_matrix(np.eye(4), list("abcd"), tmp_path / "eye.png"))
    with pytest.raises(ValueError):
        plot_confusion_matrix(np.eye(4), list("abc"), tmp_path / "bad.png")


def test_training_curves_full_and_partial(tmp_path: Path) -> None:
    records = [
        {"step": s, "loss": 3.0 / (1 + s / 20), "lr": 1e-3 * min(1, s / 10), "samples_per_s": 100.0}
        for s in range(0, 200, 5)
    ]
    records += [{"step": s, "val_loss": 2.5 / (1 + s / 25), "val/acc1": 0.1} for s in (50, 100, 150)]
    check_png(plot_training_curves(records, tmp_path / "full.png", title="run"))

    only_loss = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(10)]
    check_png(plot_training_curves(only_loss, tmp_path / "loss.png"))

    odd = [{"step": 1, "val/acc1": 0.3}, {"loss": 2.0}, {"step": 2, "loss": float("nan")}, {"step": True, "loss": 1}]
    check_png(plot_training_curves(odd, tmp_path / "odd.png"))
    check_png(plot_training_curves([], tmp_path / "empty.png"))


def test_plots_from_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            plot_confusion_matrix(np.eye(5) * index, list("abcde"), tmp_path / f"t{index}.png")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in range(4):
        check_png(str(tmp_path / f"t{index}.png"))

"""PNG plots for evaluation and training reports.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly, never ``pyplot``: no global
figure registry, no backend switch, no display needed, safe to call from several threads.
Every file is written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlmkit.files import atomic_path

_MAX_LABEL_CHARS = 24  # longer class names are shortened so they don't squeeze the matrix
_MAX_LABELLED_CLASSES = 100  # beyond this, tick labels are unreadable at any sane figure size
_ANNOTATE_UP_TO = 15  # write cell values only when cells are big enough to hold them


def _save_atomic(figure: Figure, path: str | os.PathLike, dpi: int) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    with atomic_path(target) as temporary, open(temporary, "xb") as handle:
        figure.savefig(handle, format="png", dpi=dpi)
    return str(target)


def _shorten(label: str) -> str:
    return label if len(label) <= _MAX_LABEL_CHARS else label[: _MAX_LABEL_CHARS - 1] + "…"


def plot_confusion_matrix(
    matrix: Any,
    classnames: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = True,
    title: str = "",
) -> str:
    """Draw a confusion matrix as a heat map with a colour bar.

    Args:
        matrix: ``[C, C]`` counts (tensor or array), rows = true class, columns = predicted.
        classnames: C names for the ticks (shortened when long; omitted above 100 classes).
        path: output PNG.
        normalize: divide each row by its total, so cells read as per-class recall; rows of
            classes with no samples stay 0.
        title: figure title.

    Returns:
        ``path`` as a string.
    """
    values = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
        raise ValueError(f"matrix must be square [C, C] with C >= 1, got shape {values.shape}")
    num_classes = values.shape[0]
    if len(classnames) != num_classes:
        raise ValueError(f"got {len(classnames)} class names for a {num_classes}-class matrix")
    if normalize:
        row_totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, row_totals, out=np.zeros_like(values), where=row_totals > 0)

    # Cells ~0.25 in for many classes plus room for labels; capped so 1000 classes stays a sane PNG.
    # The figure grows with C, so the tick font can stay a fixed readable size up to ~60 classes.
    labelled = num_classes <= _MAX_LABELLED_CLASSES
    side = min(24.0, max(6.5, 0.25 * num_classes + 3.5)) if labelled else 12.0
    font_size = 10.0 if num_classes <= 12 else 8.0 if num_classes <= 60 else 6.0
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, shrink=0.6, pad=0.02)
    colorbar.ax.tick_params(labelsize=9)
    colorbar.set_label("fraction of true class" if normalize else "count", fontsize=10)

    if labelled:
        labels = [_shorten(str(name)) for name in classnames]
        ticks = np.arange(num_classes)
        axes.set_xticks(ticks, labels, rotation=90, fontsize=font_size)
        axes.set_yticks(ticks, labels, fontsize=font_size)
    if num_classes <= _ANNOTATE_UP_TO:
        threshold = values.max() / 2 if values.max() > 0 else 1.0
        for row in range(num_classes):
            for column in range(num_classes):
                value = values[row, column]
                text = f"{value:.2f}" if normalize else f"{int(round(value))}"
                # White on dark cells, black on light ones, so every number stays legible.
                color = "white" if value > threshold else "black"
                axes.text(column, row, text, ha="center", va="center", fontsize=font_size - 1, color=color)
    axes.set_xlabel("predicted class", fontsize=11)
    axes.set_ylabel("true class", fontsize=11)
    if title:
        axes.set_title(title, fontsize=13)
    return _save_atomic(figure, path, dpi=110)


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for the records that carry a numeric, finite ``key`` and a ``step``."""
    steps: list[float] = []
    values: list[float] = []
    for record in records:
        step, value = record.get("step"), record.get(key)
        if isinstance(step, bool) or isinstance(value, bool):
            continue
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(float(step))
            values.append(float(value))
    return steps, values


def plot_training_curves(records: list[dict], path: str | os.PathLike, *, title: str = "") -> str:
    """Plot loss curves and the learning rate from ``metrics.jsonl`` records.

    Args:
        records: dicts with ``step`` and any of ``loss``, ``val_loss``, ``lr`` (other keys are
            ignored). Records without a numeric step, and non-finite values, are skipped.
        path: output PNG.
        title: figure title.

    Returns:
        ``path`` as a string. The top panel shows train loss (and validation loss when present);
        a small bottom panel shows the learning rate when any record has one.
    """
    ordered = sorted(
        (r for r in records if isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)),
        key=lambda r: r["step"],  # a resumed run may append out-of-order steps
    )
    loss_steps, losses = _series(ordered, "loss")
    val_steps, val_losses = _series(ordered, "val_loss")
    lr_steps, lrs = _series(ordered, "lr")

    figure = Figure(figsize=(8.0, 6.0 if lrs else 4.5), layout="constrained")
    if lrs:
        loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        loss_axes, lr_axes = figure.add_subplot(), None

    if losses:
        # Markers only when points are few, otherwise they hide the curve.
        loss_axes.plot(loss_steps, losses, label="train loss", linewidth=1.2, marker="." if len(losses) <= 50 else None)
    if val_losses:
        loss_axes.plot(val_steps, val_losses, label="val loss", linewidth=1.5, marker="o", markersize=4)
    if losses or val_losses:
        loss_axes.legend(loc="upper right")
    else:
        loss_axes.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=loss_axes.transAxes)
    loss_axes.set_ylabel("loss")
    loss_axes.grid(True, alpha=0.3)
    if title:
        loss_axes.set_title(title)

    if lr_axes is not None:
        lr_axes.plot(lr_steps, lrs, color="tab:green", linewidth=1.2)
        lr_axes.set_ylabel("lr")
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lr_axes.grid(True, alpha=0.3)
        lr_axes.set_xlabel("step")
    else:
        loss_axes.set_xlabel("step")
    return _save_atomic(figure, path, dpi=100)

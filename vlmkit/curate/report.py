"""The curation report: counts kept and dropped per stage and reason, score histograms, and grids of example drops
per reason (PNG), as one HTML page and a JSON file."""
from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from vlmkit.curate.decide import Decisions
from vlmkit.curate.features import clean_caption
from vlmkit.curate.stages import Stage
from vlmkit.curate.table import SampleTable
from vlmkit.data.decode import BadSample, decode_image
from vlmkit.data.sources import ImageRef
from vlmkit.files import atomic_write_text
from vlmkit.plots import _save_atomic

EXAMPLES_PER_REASON = 8
THUMBNAIL = 96


def _histograms(table: SampleTable, decisions: Decisions, stage: Stage, path: Path) -> str | None:
    """One panel per score the stage thresholds: every decoded sample it saw, split into kept and dropped here."""
    from matplotlib.figure import Figure

    columns = [name for name in stage.scores if name in table.columns]
    if not columns:
        return None
    figure = Figure(figsize=(4.2 * len(columns), 3.0))
    dropped_here = decisions.dropped_by == stage.name
    later = (decisions.dropped_by != stage.name) & _reached(decisions, stage.name)
    for position, name in enumerate(columns):
        axis = figure.add_subplot(1, len(columns), position + 1)
        values = table.columns[name].astype(np.float64)
        finite = np.isfinite(values)
        shown = values[finite & (later | dropped_here)]
        bins = np.histogram_bin_edges(shown, bins=40) if len(shown) else 10
        axis.hist(values[finite & later], bins=bins, alpha=0.7, label="passed", color="tab:blue")
        axis.hist(values[finite & dropped_here], bins=bins, alpha=0.7, label="dropped", color="tab:red")
        axis.set_xlabel(name)
        axis.set_ylabel("samples")
        axis.legend(fontsize=7)
    figure.suptitle(f"{stage.name}: {stage.summary}", fontsize=9)
    figure.tight_layout()
    return _save_atomic(figure, path, dpi=90)


def _reached(decisions: Decisions, stage_name: str) -> np.ndarray:
    """Samples that were still alive when ``stage_name`` ran: kept, or dropped by it or a later stage."""
    order = [entry["stage"] for entry in decisions.stages]
    later = set(order[order.index(stage_name):])
    return decisions.kept | np.isin(decisions.dropped_by.astype(str), sorted(later))


def _thumbnail(table: SampleTable, index: int) -> Image.Image:
    offset, size = int(table.columns["offset"][index]), int(table.columns["size"][index])
    try:
        data = ImageRef(str(table.columns["source"][index]), None if offset < 0 else offset,
                        None if size < 0 else size).read()
        image = decode_image(data)[0]
    except BadSample:
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (60, 60, 60))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def _grid(table: SampleTable, decisions: Decisions, indices: Sequence[int], title: str, path: Path) -> str:
    from matplotlib.figure import Figure

    columns = min(4, len(indices))
    rows = (len(indices) + columns - 1) // columns
    figure = Figure(figsize=(2.6 * columns, 2.9 * rows + 0.4))
    for position, index in enumerate(indices):
        axis = figure.add_subplot(rows, columns, position + 1)
        axis.imshow(np.asarray(_thumbnail(table, index)))
        axis.set_axis_off()
        caption = clean_caption(table.columns["caption"][index]) or "(no caption)"
        text = textwrap.shorten(caption, 60) + "\n" + textwrap.shorten(str(decisions.detail[index]), 60)
        axis.set_title("\n".join(textwrap.wrap(text, 30)[:5]), fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save_atomic(figure, path, dpi=90)


def write_report(table: SampleTable, decisions: Decisions, stages: Sequence[Stage], folder: str | Path,
                 info: dict[str, Any], *, images: bool = True) -> dict[str, Any]:
    """Write ``folder/report.json``, ``folder/report.html`` and (with ``images``) the PNGs under
    ``folder/report/``; returns the JSON's content: ``info`` (inputs, timings, ...) plus ``total``, ``kept``,
    ``dropped`` and per-stage counts with the files of their histograms and example grids."""
    folder = Path(folder)
    images = folder / "report"
    stage_entries = []
    for stage, counts in zip(stages, decisions.stages):
        entry = {**counts, "histogram": None, "examples": {}}
        if not images:
            stage_entries.append(entry)
            continue
        histogram = _histograms(table, decisions, stage, images / f"hist-{stage.name}.png")
        if histogram:
            entry["histogram"] = str(Path(histogram).relative_to(folder))
        for reason in counts["reasons"]:
            chosen = np.flatnonzero((decisions.dropped_by == stage.name) & (decisions.reason == reason))
            picked = [int(i) for i in chosen[:EXAMPLES_PER_REASON]]
            grid = _grid(table, decisions, picked, f"{stage.name} / {reason}: {len(chosen)} dropped",
                         images / f"drops-{stage.name}-{reason}.png")
            entry["examples"][reason] = str(Path(grid).relative_to(folder))
        stage_entries.append(entry)
    kept = int(decisions.kept.sum())
    report = {**info, "total": len(table), "kept": kept, "dropped": len(table) - kept, "stages": stage_entries}
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(folder / "report.html", _html(report))
    return report


def _html(report: dict[str, Any]) -> str:
    escape = html.escape
    rows = "".join(
        f"<tr><td>{escape(entry['stage'])}</td><td>{escape(entry['summary'])}</td><td>{entry['input']}</td>"
        f"<td>{entry['dropped']}</td><td>{entry['kept']}</td><td>"
        + ", ".join(f"{escape(reason)}: {count}" for reason, count in entry["reasons"].items()) + "</td></tr>"
        for entry in report["stages"])
    sections = []
    for entry in report["stages"]:
        parts = [f"<h2>{escape(entry['stage'])}</h2><p><code>{escape(json.dumps(entry['params']))}</code></p>"]
        if entry["histogram"]:
            parts.append(f"<img src='{escape(entry['histogram'])}' alt='score histogram'>")
        parts += [f"<h3>{escape(reason)}</h3><img src='{escape(path)}' alt='examples of {escape(reason)}'>"
                  for reason, path in entry["examples"].items()]
        sections.append("".join(parts))
    run = {key: value for key, value in report.items() if key != "stages"}
    summary = (f"{report['total']} samples, {report['kept']} kept ({report['kept'] / max(1, report['total']):.1%}), "
               f"{report['dropped']} dropped")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>vlmkit curation report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}</style></head><body>"
            f"<h1>Curation report</h1><p>{escape(summary)}</p>"
            "<table><tr><th>stage</th><th>what</th><th>input</th><th>dropped</th><th>kept</th><th>reasons</th></tr>"
            f"{rows}</table>{''.join(sections)}"
            f"<h2>Run</h2><pre>{escape(json.dumps(run, indent=1, default=str))}</pre>"
            "</body></html>\n")

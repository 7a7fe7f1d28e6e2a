"""Benchmark result records in CLIP_benchmark's JSON shape, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmkit.files import atomic_write_text

_STANDARD_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")


def benchmark_record(
    task: str,
    model: str,
    dataset: str,
    metrics: dict,
    *,
    pretrained: str | None = None,
    language: str = "en",
    extra: dict | None = None,
) -> dict:
    """Build one result record.

    Returns ``{"dataset", "model", "pretrained", "task", "metrics", "language"}`` as
    CLIP_benchmark writes it, plus the keys of ``extra`` (e.g. plot paths) at the top level.
    Metric values that are tensors or numpy scalars become plain Python numbers.
    """
    record: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": {str(name): _to_jsonable(value) for name, value in metrics.items()},
        "language": language,
    }
    if extra:
        clashing = sorted(set(extra) & set(_STANDARD_KEYS))
        if clashing:
            # Silently overwriting e.g. "metrics" would produce a record that lies about its results.
            raise ValueError(f"extra keys clash with standard record keys: {clashing}")
        record.update({key: _to_jsonable(value) for key, value in extra.items()})
    return record


def _to_jsonable(value: Any) -> Any:
    """Turn tensors / numpy values / paths into JSON types; leave everything else as is."""
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    # Duck-typed so this module doesn't import torch or numpy: both have .tolist() on arrays/scalars.
    if hasattr(value, "tolist") and callable(value.tolist) and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def write_json(path: str | os.PathLike, obj: Any) -> str:
    """Write ``obj`` as indented JSON with a trailing newline, atomically.

    The text goes to a uniquely named temporary file in the same folder (so ``os.replace`` is a
    same-filesystem rename), which then replaces ``path``: readers see the old file or the new
    one, never a partial write. Parent folders are created. Returns ``path`` as a string.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_to_jsonable(obj), indent=2) + "\n"
    atomic_write_text(target, text)
    return str(target)


def read_results_rows(path: str | os.PathLike, id_field: str, text_field: str) -> list[tuple[Any, str]]:
    """(id, text) of every entry of a results file, a JSON list of ``{id_field: ..., text_field: "..."}`` objects
    (COCO captioning and VQA results); malformed files and entries are one-line errors naming the entry."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as stream:
            rows = json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(rows, list):
        raise ValueError(f'{path}: a results file is a JSON list of {{"{id_field}", "{text_field}"}} objects')
    pairs = []
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or id_field not in row or not isinstance(row.get(text_field), str):
            raise ValueError(f"{path}: entry {number} needs {id_field!r} and a {text_field!r} string")
        if not isinstance(row[id_field], (int, str)):
            raise ValueError(f"{path}: entry {number}: {id_field} must be a number or a string")
        pairs.append((row[id_field], row[text_field]))
    return pairs

"""What a curation run writes: the kept samples as WebDataset shards (their original image bytes), and a parquet
table of every sample with its scores and fate."""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from vlmkit.curate.decide import Decisions
from vlmkit.curate.features import clean_caption
from vlmkit.curate.table import SampleTable
from vlmkit.data.decode import BadSample
from vlmkit.data.sources import ImageRef
from vlmkit.files import atomic_path

SHARD_NAME = "curated-{:05d}.tar"
_SHARD_PATTERN = re.compile(r"curated-\d{5}\.tar")
# feature columns copied into each kept sample's .json (scores a trainer or a later filter may want)
META_COLUMNS = ("width", "height", "sha256", "language", "language_probability", "clip_score")


def _member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed: the same run gives byte-identical shards
    archive.addfile(info, io.BytesIO(data))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and np.isnan(value) else value


def write_shards(table: SampleTable, decisions: Decisions, folder: str | Path,
                 shard_size: int) -> dict[int, tuple[str, str]]:
    """Write the kept samples in input order as ``folder/curated-%05d.tar`` (``KEY.{png|jpg|...}``, ``KEY.txt``,
    ``KEY.json`` with the original id, source and scores); each shard is written under a temporary name and
    renamed. Shards of an earlier run beyond this run's count are removed. Returns {sample index: (shard, key)}.

    Raises:
        ValueError: a kept image can no longer be read (its file changed since pass 1).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kept = np.flatnonzero(decisions.kept)
    written: dict[int, tuple[str, str]] = {}
    names = []
    for start in range(0, len(kept), shard_size):
        name = SHARD_NAME.format(len(names))
        names.append(name)
        with atomic_path(folder / name) as temporary, tarfile.open(temporary, "w", format=tarfile.GNU_FORMAT) as tar:
            for position, index in enumerate(kept[start:start + shard_size], start=start):
                key = f"{position:08d}"
                offset, size = int(table.columns["offset"][index]), int(table.columns["size"][index])
                source = str(table.columns["source"][index])
                try:
                    data = ImageRef(source, None if offset < 0 else offset, None if size < 0 else size).read()
                except BadSample as bad:
                    raise ValueError(f"cannot read kept image {table.ids[index]} again ({bad}); was it changed "
                                     "after pass 1? Delete the curation folder's pass1/ to recompute") from None
                meta = {"id": table.ids[index], "source": source,
                        **{column: _plain(table.columns[column][index]) for column in META_COLUMNS
                           if column in table.columns}}
                _member(tar, f"{key}.{table.columns['format'][index]}", data)
                _member(tar, f"{key}.txt", clean_caption(table.columns["caption"][index]).encode("utf-8"))
                _member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                written[int(index)] = (name, key)
    for stale in os.listdir(folder):
        if _SHARD_PATTERN.fullmatch(stale) and stale not in names:
            os.unlink(folder / stale)
    return written


def write_samples_table(table: SampleTable, decisions: Decisions, path: str | Path,
                        written: dict[int, tuple[str, str]]) -> None:
    """``path`` (parquet): one row per input sample in input order: id, source, offset, size, caption, kept,
    dropped_by, reason, detail, the output shard and key of kept samples, and every feature column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = len(table)
    data: dict[str, Any] = {
        "id": pa.array(table.ids, pa.string()), "source": pa.array(list(table.columns["source"]), pa.string()),
        "offset": pa.array([None if v < 0 else int(v) for v in table.columns["offset"]], pa.int64()),
        "size": pa.array([None if v < 0 else int(v) for v in table.columns["size"]], pa.int64()),
        "caption": pa.array([None if c is None else clean_caption(c) for c in table.columns["caption"]], pa.string()),
        "kept": pa.array(decisions.kept, pa.bool_()),
        "dropped_by": pa.array([value or None for value in decisions.dropped_by], pa.string()),
        "reason": pa.array([value or None for value in decisions.reason], pa.string()),
        "detail": pa.array([value or None for value in decisions.detail], pa.string()),
        "shard": pa.array([written.get(i, (None, None))[0] for i in range(total)], pa.string()),
        "key": pa.array([written.get(i, (None, None))[1] for i in range(total)], pa.string())}
    for name, values in table.columns.items():
        if name in ("source", "offset", "size", "caption", "bad_detail"):
            continue
        if values.dtype == object:
            data[name] = pa.array([str(v) if v else None for v in values], pa.string())
        else:
            data[name] = pa.array(values)
    with atomic_path(path) as temporary:
        pq.write_table(pa.table(data), str(temporary))

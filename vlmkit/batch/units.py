"""Work units: the inputs of a batch job, split into the granules it finishes, records and resumes.

A WebDataset shard is one unit; image files, folders and manifests (CSV/TSV/JSONL, COCO, parquet) are cut into
units of ``unit_size`` images in input order. Units are plain data (picklable, JSON-able), so they travel to
DataLoader workers and Ray tasks; nothing here reads an image.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from vlmkit.data.shards import IMAGE_EXTENSIONS
from vlmkit.data.sources import ImageRef, Sample, detect_format, group_by_image, load_samples

DEFAULT_UNIT_SIZE = 1000
# parquet manifests: the first of these columns that exists names the image file / the caption
PARQUET_IMAGE_COLUMNS = ("image_path", "path", "filepath", "file_name", "image")
PARQUET_CAPTION_COLUMNS = ("caption", "text", "title")


@dataclass(frozen=True)
class Record:
    """One input image: ``id`` (its path, or its key inside a shard), where its bytes are, its first caption."""

    id: str
    path: str
    offset: int | None = None
    size: int | None = None
    caption: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image(self) -> ImageRef:
        return ImageRef(self.path, self.offset, self.size)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkUnit:
    """A named list of records that a job finishes as a whole (its results are written in one part file)."""

    name: str
    records: tuple[Record, ...]

    def __len__(self) -> int:
        return len(self.records)


def plan_units(inputs: Sequence[str | os.PathLike], *, unit_size: int = DEFAULT_UNIT_SIZE) -> list[WorkUnit]:
    """The work units of ``inputs`` (image files, folders of images, manifests or WebDataset shards).

    Each image appears once, in input order (an image named twice, or with several captions, is one record).
    The plan depends only on the inputs, so a restarted job finds the same units.

    Raises:
        FileNotFoundError: an input does not exist.  ValueError: no images at all, or a bad ``unit_size``.
    """
    if unit_size < 1:
        raise ValueError(f"unit_size must be at least 1, not {unit_size}")
    units: list[WorkUnit] = []
    loose: list[Record] = []  # records outside shards, cut into units of unit_size
    seen: set[tuple[str, int | None]] = set()

    def flush_loose() -> None:
        for start in range(0, len(loose), unit_size):
            units.append(WorkUnit(f"{len(units):05d}-part", tuple(loose[start:start + unit_size])))
        loose.clear()

    for item in inputs:
        by_shard: dict[str, list[Record]] = {}
        for record in _records_of(str(item)):
            if (record.path, record.offset) in seen:
                continue
            seen.add((record.path, record.offset))
            if record.offset is not None:
                by_shard.setdefault(record.path, []).append(record)
            else:
                loose.append(record)
        if by_shard:
            flush_loose()
            for shard, records in by_shard.items():
                units.append(WorkUnit(f"{len(units):05d}-{_safe_name(shard)}", tuple(records)))
    flush_loose()
    if not units:
        raise ValueError("no images found in the inputs")
    return units


def plan_fingerprint(units: Sequence[WorkUnit]) -> str:
    """A hash of the plan (unit names and record ids): a resumed job must see the same one."""
    digest = hashlib.sha256()
    for unit in units:
        digest.update(unit.name.encode())
        for record in unit.records:
            digest.update(b"\0" + record.id.encode("utf-8", "surrogateescape"))
        digest.update(b"\1")
    return digest.hexdigest()


def _records_of(path: str) -> list[Record]:
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if os.path.isfile(path) and extension in IMAGE_EXTENSIONS:
        return [Record(path, path)]
    if extension == "parquet":
        return _parquet_records(path)
    if not os.path.exists(path) and "{" not in path and "*" not in path:
        raise FileNotFoundError(f"no such image, folder, manifest or shards: {path}")
    samples = group_by_image(load_samples(path, fmt=detect_format(path)))
    return [_record(sample) for sample in samples]


def _record(sample: Sample) -> Record:
    ref = sample.image
    identifier = ref.path if ref.offset is None else sample.key
    caption = sample.captions[0] if sample.captions else None
    return Record(identifier, ref.path, ref.offset, ref.size, caption)


def _parquet_records(path: str) -> list[Record]:
    """Records of a parquet manifest with an image-path column and optionally a caption column."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such parquet manifest: {path}")
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    image_column = next((name for name in PARQUET_IMAGE_COLUMNS if name in names), None)
    if image_column is None:
        raise ValueError(f"{path}: a parquet manifest needs an image path column, one of "
                         f"{', '.join(PARQUET_IMAGE_COLUMNS)}; it has {', '.join(names)}")
    caption_column = next((name for name in PARQUET_CAPTION_COLUMNS if name in names), None)
    table = pq.read_table(path, columns=[image_column] + ([caption_column] if caption_column else []))
    images = table.column(image_column).to_pylist()
    if images and not isinstance(next((value for value in images if value is not None), ""), str):
        raise ValueError(f"{path}: column {image_column!r} must hold image file paths (embedded image bytes are "
                         "not read; write them out as files or WebDataset shards)")
    captions = table.column(caption_column).to_pylist() if caption_column else [None] * len(images)
    base = os.path.dirname(os.path.abspath(path))
    records = []
    for image, caption in zip(images, captions):
        image = image or ""
        resolved = image if os.path.isabs(image) or not image else os.path.join(base, image)
        records.append(Record(resolved, resolved, caption=caption))
    return records


def _safe_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "shard"

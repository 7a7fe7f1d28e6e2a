"""Where samples come from: manifests (CSV/TSV/JSONL), COCO captions JSON, WebDataset tar
shards, and folders of images with caption sidecars.

Loading only reads the index (paths, captions, labels); image bytes are read later, in
DataLoader workers, through :class:`ImageRef`. Caption text is kept raw (invalid UTF-8 as
surrogate escapes) and checked at decode time so that problems are counted, not fatal.
"""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass, field

from .decode import BadSample
from .shards import IMAGE_EXTENSIONS, index_shard, resolve_shards

FORMATS = ("csv", "tsv", "jsonl", "coco", "wds", "folder")
MANIFEST_NAMES = ("captions.csv", "captions.tsv", "captions.jsonl")
KEY_COLUMN = "key"

# Manifest text is decoded leniently; decode_caption turns the escapes into a ``non_utf8`` note.
_TEXT_OPTIONS = {"encoding": "utf-8-sig", "errors": "surrogateescape"}


@dataclass
class ImageRef:
    """Where an image's encoded bytes live: a whole file, or ``size`` bytes at ``offset``
    inside a tar shard. Small and picklable, so millions can be sent to DataLoader workers."""

    path: str
    offset: int | None = None
    size: int | None = None

    def read(self) -> bytes:
        """Returns the encoded image bytes.

        Raises:
            BadSample: ``missing_file`` (absent/unreadable/URL), ``empty_file`` (0 bytes),
                ``truncated_image`` (a shard shorter than its index says).
        """
        if not self.path:
            raise BadSample("missing_file", detail="no image path")
        if self.path.startswith(("http://", "https://")):
            raise BadSample(
                "missing_file",
                detail=f"{self.path}: URLs are not downloaded; fetch images first "
                "(e.g. with img2dataset)",
            )
        try:
            with open(self.path, "rb") as stream:
                if self.offset is not None:
                    stream.seek(self.offset)
                data = stream.read(-1 if self.size is None else self.size)
        except FileNotFoundError:
            raise BadSample("missing_file", detail=f"no such file: {self.path}") from None
        except OSError as error:
            raise BadSample("missing_file", detail=f"{self.path}: {error}") from None
        if self.size is not None and len(data) < self.size:
            raise BadSample(
                "truncated_image",
                detail=f"{self.path} holds {len(data)} of {self.size} bytes at {self.offset}",
            )
        if not data:
            raise BadSample("empty_file", detail=f"{self.path} is empty")
        return data


@dataclass
class Sample:
    """One image with its captions. ``captions`` may be empty (reported as missing_caption)."""

    key: str
    image: ImageRef
    captions: list[str]
    label: str | None = None
    meta: dict = field(default_factory=dict)


def detect_format(path: str) -> str:
    """Guess the source format of ``path`` (one of :data:`FORMATS`)."""
    if "{" in path or any(char in path for char in "*?["):
        return "wds"
    if os.path.isdir(path):
        has_shards = any(name.endswith(".tar") for name in os.listdir(path))
        return "wds" if has_shards else "folder"
    suffix = os.path.splitext(path)[1].lower()
    by_suffix = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
                 ".ndjson": "jsonl", ".json": "coco", ".tar": "wds"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    raise ValueError(f"cannot tell the format of {path}; pass fmt= one of {list(FORMATS)}")


def load_samples(
    path: str,
    *,
    image_key: str = "image",
    caption_key: str = "caption",
    label_key: str = "label",
    fmt: str = "auto",
) -> list[Sample]:
    """Index a data source into Samples.

    Formats (``fmt="auto"`` guesses from the suffix/content):
      - ``csv``/``tsv``/``jsonl``: one Sample per row; ``image_key``/``caption_key``/``label_key``
        name the columns, an optional ``key`` column names the sample (else the zero-padded row
        number); relative image paths are relative to the manifest's folder. A JSONL caption
        may be a list of captions.
      - ``coco``: COCO captions JSON, one Sample per image with all its captions; images are
        looked for beside the JSON, in ``images/``, or in the official layout
        (``annotations/captions_val2017.json`` + ``val2017/``). A ``.json`` holding a list of
        objects is read like JSONL rows.
      - ``wds``: tar shards (file, folder of .tar, glob, or ``{00000..00009}`` braces); captions
        from ``{key}.txt``, or the ``captions`` list of ``{key}.json`` when it has one; label
        from the .json's ``label_key``; the whole .json goes to ``meta`` (``image_key`` and
        ``caption_key`` do not apply: images are the members with an image extension).
      - ``folder``: images found recursively plus ``name.txt`` sidecars (one caption per
        non-empty line; no label), or a ``captions.csv|tsv|jsonl`` manifest inside the folder
        (checked first).
    """
    if fmt == "auto":
        fmt = detect_format(path)
    columns = {"image_key": image_key, "caption_key": caption_key, "label_key": label_key}
    if fmt in ("csv", "tsv"):
        return _load_delimited(path, delimiter="," if fmt == "csv" else "\t", **columns)
    if fmt == "jsonl":
        return _load_rows(path, _read_jsonl(path), **columns)
    if fmt in ("coco", "json"):
        return _load_json(path, **columns)
    if fmt == "wds":
        return _load_shards(path, label_key=label_key)
    if fmt == "folder":
        return _load_folder(path, **columns)
    raise ValueError(f"unknown data format {fmt!r}; use one of {list(FORMATS)} or 'auto'")


def _base_folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _resolve(base: str, image_path: str) -> str:
    if not image_path or os.path.isabs(image_path) or "://" in image_path:
        return image_path
    return os.path.join(base, image_path)


def _load_delimited(path: str, delimiter: str, **columns: str) -> list[Sample]:
    with open(path, newline="", **_TEXT_OPTIONS) as stream:
        reader = csv.DictReader(stream, delimiter=delimiter)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    return _load_rows(path, rows, header=header, **columns)


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, **_TEXT_OPTIONS) as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: invalid JSON ({error})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object per line")
            rows.append(row)
    return rows


def _captions_from_cell(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(item) for item in value if item is not None]
    return [str(value)]


def _load_rows(
    path: str,
    rows: list[dict],
    *,
    image_key: str,
    caption_key: str,
    label_key: str,
    header: list[str] | None = None,
) -> list[Sample]:
    """Rows (dicts) of a manifest -> Samples; ``header`` defaults to the union of row keys."""
    if header is None:
        header = list(dict.fromkeys(name for row in rows for name in row))
    for role, column in (("image", image_key), ("caption", caption_key)):
        if column not in header:
            option = "image_key" if role == "image" else "caption_key"
            raise ValueError(
                f"{path}: no {role} column {column!r} (columns: {', '.join(header) or 'none'}); "
                f"use --set data.{option}=<column> to pick the {role} column"
            )
    base = _base_folder(path)
    width = max(6, len(str(max(len(rows) - 1, 0))))
    reserved = {image_key, caption_key, label_key, KEY_COLUMN}
    samples = []
    for number, row in enumerate(rows):
        key = row.get(KEY_COLUMN)
        label = row.get(label_key)
        samples.append(
            Sample(
                key=str(key) if key not in (None, "") else str(number).zfill(width),
                image=ImageRef(_resolve(base, str(row.get(image_key) or ""))),
                captions=_captions_from_cell(row.get(caption_key)),
                label=str(label) if label not in (None, "") else None,
                meta={k: v for k, v in row.items() if k not in reserved and v not in (None, "")},
            )
        )
    return samples


def _load_json(path: str, **columns: str) -> list[Sample]:
    with open(path, **_TEXT_OPTIONS) as stream:
        try:
            data = json.load(stream)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error})") from None
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data):
            raise ValueError(f"{path}: a JSON list must hold one object per sample")
        return _load_rows(path, data, **columns)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(
            f"{path}: not COCO captions JSON (needs 'images' and 'annotations' lists) "
            "nor a list of sample objects"
        )
    return _load_coco(path, data, label_key=columns["label_key"])


def _load_coco(path: str, data: dict, *, label_key: str) -> list[Sample]:
    images, annotations = data["images"], data["annotations"]
    for image in images:
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{path}: every entry of 'images' needs an 'id' and a 'file_name' "
                             f"(got {str(image)[:80]})")
    captions: dict[object, list[str]] = {image["id"]: [] for image in images}
    orphans = 0
    for annotation in annotations:
        target = captions.get(annotation.get("image_id"))
        if target is None:
            orphans += 1
        else:
            target.extend(_captions_from_cell(annotation.get("caption")))
    if orphans:
        warnings.warn(f"{path}: {orphans} annotations name an unknown image_id", stacklevel=3)
    base = _coco_image_folder(path, images[0]["file_name"] if images else "")
    samples = []
    for image in images:
        label = image.get(label_key)
        samples.append(
            Sample(
                key=str(image["id"]),
                image=ImageRef(_resolve(base, image["file_name"])),
                captions=captions[image["id"]],
                label=str(label) if label not in (None, "") else None,
                meta={k: v for k, v in image.items() if k not in ("file_name", label_key)},
            )
        )
    return samples


def _coco_image_folder(path: str, first_file: str) -> str:
    """Where a COCO JSON's file_names live, decided once from the first image.

    Tried in order: the JSON's folder, its ``images/``, and for the official layout
    (``annotations/captions_val2017.json`` + ``val2017/``) the split folder next to the JSON's
    folder, also under ``images/``. Falls back to the JSON's folder (reads then report
    missing_file).
    """
    folder = _base_folder(path)
    parent = os.path.dirname(folder)
    candidates = [folder, os.path.join(folder, "images"), parent, os.path.join(parent, "images")]
    split = re.fullmatch(r"captions_(\w+)\.json", os.path.basename(path))
    if split:
        name = split.group(1)
        candidates += [os.path.join(folder, name), os.path.join(parent, name),
                       os.path.join(parent, "images", name)]
    for candidate in candidates:
        if first_file and os.path.exists(_resolve(candidate, first_file)):
            return candidate
    return folder


def _load_shards(path: str, *, label_key: str) -> list[Sample]:
    samples = []
    for shard in resolve_shards(path):
        for entry in index_shard(shard):
            listed = entry.meta.get("captions")
            if isinstance(listed, list) and listed and all(isinstance(c, str) for c in listed):
                captions = list(listed)
            else:
                captions = [] if entry.text is None else [entry.text]
            label = entry.meta.get(label_key)
            samples.append(
                Sample(
                    key=entry.key,
                    image=ImageRef(shard, offset=entry.image_offset, size=entry.image_size),
                    captions=captions,
                    label=str(label) if label not in (None, "") else None,
                    meta=entry.meta,
                )
            )
    return samples


def _load_folder(path: str, **columns: str) -> list[Sample]:
    for name in MANIFEST_NAMES:
        manifest = os.path.join(path, name)
        if os.path.isfile(manifest):
            return load_samples(manifest, fmt=detect_format(manifest), **columns)
    root = os.path.abspath(path)
    image_paths = []
    for directory, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            extension = os.path.splitext(name)[1].lower().lstrip(".")
            if extension in IMAGE_EXTENSIONS and not name.startswith("."):
                image_paths.append(os.path.join(directory, name))
    if not image_paths:
        raise ValueError(
            f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
            f"{' / '.join(MANIFEST_NAMES)} manifest"
        )
    samples = []
    for image_path in image_paths:
        stem = os.path.splitext(image_path)[0]
        sidecar = stem + ".txt"
        captions: list[str] = []
        if os.path.isfile(sidecar):
            with open(sidecar, "rb") as stream:
                text = stream.read().decode("utf-8", errors="surrogateescape")
            # An empty sidecar stays visible as one empty caption (reported as empty_caption).
            captions = [line for line in text.splitlines() if line.strip()] or [text]
        key = os.path.relpath(stem, root).replace(os.sep, "/")
        samples.append(Sample(key=key, image=ImageRef(image_path), captions=captions))
    return samples


def group_by_image(samples: list[Sample]) -> list[Sample]:
    """Merge samples that share an image (same path and offset) into one with all captions.

    Order is first-seen; the first sample's key, label and meta are kept.
    """
    merged: dict[tuple[str, int | None], Sample] = {}
    for sample in samples:
        identity = (sample.image.path, sample.image.offset)
        existing = merged.get(identity)
        if existing is None:
            merged[identity] = Sample(
                sample.key, sample.image, list(sample.captions), sample.label, dict(sample.meta)
            )
        else:
            existing.captions.extend(sample.captions)
    return list(merged.values())


def expand_captions(samples: list[Sample]) -> list[Sample]:
    """One sample per (image, caption), keys ``{key}#{i}`` when an image has several captions.

    A sample without captions is kept as is, so it is still reported as missing_caption.
    """
    expanded = []
    for sample in samples:
        if len(sample.captions) <= 1:
            expanded.append(sample)
            continue
        for number, caption in enumerate(sample.captions):
            expanded.append(
                Sample(f"{sample.key}#{number}", sample.image, [caption], sample.label,
                       sample.meta)
            )
    return expanded

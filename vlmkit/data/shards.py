"""WebDataset tar shards (img2dataset layout): shard path expansion and member indexing.

A shard holds ``{key}.jpg|jpeg|png|webp|...`` + ``{key}.txt`` + optional ``{key}.json`` per key.
Shards are indexed with ``tarfile`` (member data offset and size), never extracted, so an
image is later read with one seek + read.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import warnings
from dataclasses import dataclass, field

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{00000..00003}`` ranges (zero padding kept) and ``{a,b}`` lists, left to right.

    ``"s/{0..1}-{a,b}.tar"`` -> ``["s/0-a.tar", "s/0-b.tar", "s/1-a.tar", "s/1-b.tar"]``.
    """
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    range_match = _RANGE.match(body)
    if range_match:
        first, last = range_match.group(1), range_match.group(2)
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def resolve_shards(path: str) -> list[str]:
    """A .tar file, a directory of .tar files, a glob, or brace notation -> sorted shard paths.

    Raises:
        FileNotFoundError: no shard found, or a brace-listed shard does not exist.
    """
    if _BRACE.search(path):
        shards = expand_braces(path)
        missing = [shard for shard in shards if not os.path.isfile(shard)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(shards)} shards in {path!r} do not exist "
                f"(e.g. {', '.join(missing[:3])})"
            )
        return [os.path.abspath(shard) for shard in shards]
    if os.path.isdir(path):
        shards = sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.endswith(".tar")
        )
    elif glob.has_magic(path):
        shards = sorted(p for p in glob.glob(path) if os.path.isfile(p))
    else:
        shards = [path] if os.path.isfile(path) else []
    if not shards:
        raise FileNotFoundError(f"no .tar shards found at {path!r}")
    return [os.path.abspath(shard) for shard in shards]


@dataclass
class ShardEntry:
    """What one key of a shard holds: the image member's location, caption text, metadata."""

    key: str
    image_offset: int | None = None
    image_size: int | None = None
    image_ext: str = ""
    text: str | None = None
    meta: dict = field(default_factory=dict)


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the basename."""
    directory, _, basename = name.rpartition("/")
    stem, dot, extension = basename.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower() if dot else ""


def index_shard(shard: str) -> list[ShardEntry]:
    """Read one shard's member table plus its small .txt/.json members.

    Returns entries (shard order) for keys that have an image; keys without an image member
    are reported with a warning, and a shard with no image at all raises ValueError.
    """
    entries: dict[str, ShardEntry] = {}
    try:
        with tarfile.open(shard, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _split_member_name(member.name)
                entry = entries.setdefault(key, ShardEntry(key))
                if extension in IMAGE_EXTENSIONS:
                    if entry.image_offset is None or _prefer(extension, entry.image_ext):
                        entry.image_offset, entry.image_size = member.offset_data, member.size
                        entry.image_ext = extension
                elif extension == "txt":
                    raw = _read_member(archive, member)
                    # Invalid UTF-8 survives as surrogates; decode_caption reports it later.
                    entry.text = raw.decode("utf-8", errors="surrogateescape")
                elif extension == "json":
                    raw = _read_member(archive, member)
                    try:
                        meta = json.loads(raw.decode("utf-8", errors="replace"))
                        entry.meta = meta if isinstance(meta, dict) else {"json": meta}
                    except json.JSONDecodeError as error:
                        entry.meta = {"json_error": str(error)}
    except tarfile.ReadError as error:
        raise ValueError(
            f"{shard}: not a readable uncompressed tar file ({error}); compressed shards "
            "(.tar.gz) cannot be indexed, decompress them first"
        ) from None
    with_image = [entry for entry in entries.values() if entry.image_offset is not None]
    if not with_image:
        raise ValueError(
            f"{shard}: no samples (no member with an image extension {IMAGE_EXTENSIONS})"
        )
    without_image = [entry.key for entry in entries.values() if entry.image_offset is None]
    if without_image:
        warnings.warn(
            f"{shard}: {len(without_image)} keys without an image member skipped "
            f"(e.g. {', '.join(without_image[:3])})",
            stacklevel=2,
        )
    return with_image


def _prefer(new_extension: str, old_extension: str) -> bool:
    return IMAGE_EXTENSIONS.index(new_extension) < IMAGE_EXTENSIONS.index(old_extension)


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    stream = archive.extractfile(member)
    return stream.read() if stream is not None else b""

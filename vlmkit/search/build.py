"""Build, grow and query a search index from images, embedding through the batch-job layer (``vlmkit.batch``).

    index = build_index("runs/clip", ["photos/", "shards/{00000..00009}.tar"], "photos.index")
    hits = search_text(index, "runs/clip", ["a red car"], k=10, where=["width>=256"])

The embedding job runs into ``INDEX/_work/`` (one work folder per build or add), so an interrupted build resumes
when run again with the same arguments: finished units are not embedded twice. The work folder is deleted once
the index is written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmkit.search.index import INFO_NAME, Hit, SearchIndex, read_info
from vlmkit.search.writer import add_vectors, create_index, remove_items, writer_lock

WORK_NAME = "_work"
# Bad-sample examples kept in index.json (all are counted).
BAD_EXAMPLES = 20


def model_spec_of(model: Any) -> str:
    """The spec an index records for ``model``: an existing path as its absolute path, another spec (``hf:ID``,
    ``open_clip:...``) as given, a loaded model by its ``vlmkit_spec`` or ``name`` attribute or its class."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        return str(path.resolve()) if path.exists() else str(model)
    return (getattr(model, "vlmkit_spec", None) or getattr(model, "name", None)
            or f"python:{type(model).__module__}.{type(model).__qualname__}")


def load_model(spec: str, device: str = "auto") -> Any:
    """Load the model a spec names, tagged with its spec so :func:`search_text` can check it against an index."""
    from vlmkit.batch.jobs import load_job_model

    model = load_job_model(spec, device, {})
    model.vlmkit_spec = model_spec_of(spec)
    return model


def _embed(model: Any, inputs: Sequence[str | os.PathLike], work_dir: Path, *, skip: set[tuple[str, int | None]],
           executor: str, batch_size: int, workers: int, ray_address: str | None, progress: bool,
           unit_size: int, device: str, on_bad_sample: str) -> tuple[Any, int]:
    """Run the embedding job over the images of ``inputs`` not in ``skip`` ((abspath, offset) pairs).

    Returns (the batch ResultTable, how many images were skipped as already indexed)."""
    from vlmkit.batch import EmbedImages, WorkUnit, plan_units, read_results, run_job

    units = plan_units([str(item) for item in inputs], unit_size=unit_size)
    skipped = 0
    if skip:
        kept_units = []
        for unit in units:
            records = tuple(r for r in unit.records if (os.path.abspath(r.path), r.offset) not in skip)
            skipped += len(unit.records) - len(records)
            if records:
                kept_units.append(WorkUnit(unit.name, records))
        units = kept_units
    if not units:
        return None, skipped
    job = EmbedImages(model, batch_size=batch_size, device=device)
    run_job(job, units, work_dir, executor=executor, workers=workers, ray_address=ray_address, progress=progress,
            on_bad_sample=on_bad_sample)
    return read_results(work_dir), skipped


def _rows(table: Any) -> list[dict]:
    """Index metadata rows from a batch ResultTable (key = the record id: a path, or a key inside a shard)."""
    columns = table.columns
    names = ("path", "offset", "size", "caption", "width", "height", "sha256", "unit")
    return [{"key": identifier, **{name: columns[name][row] for name in names if name in columns}}
            for row, identifier in enumerate(table.ids)]


def _bad_summary(bad: list[dict], previous: dict | None = None) -> dict:
    """``{"count", "reasons": {reason: n}, "examples": [...]}``, added to a previous summary."""
    summary = {"count": 0, "reasons": {}, "examples": []} if previous is None else {
        **previous, "reasons": dict(previous.get("reasons", {})), "examples": list(previous.get("examples", []))}
    summary["count"] += len(bad)
    for entry in bad:
        summary["reasons"][entry["reason"]] = summary["reasons"].get(entry["reason"], 0) + 1
    summary["examples"] = (summary["examples"] + [{k: entry.get(k) for k in ("id", "reason", "detail")}
                                                  for entry in bad])[:BAD_EXAMPLES]
    return summary


def build_index(model: Any, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, executor: str = "local",
                index_type: str = "auto", batch_size: int = 64, workers: int = 0, ray_address: str | None = None,
                progress: bool = True, unit_size: int = 1000, device: str = "auto", on_bad_sample: str = "skip",
                **index_options: Any) -> SearchIndex:
    """Embed every image of ``inputs`` (files, folders, CSV/TSV/JSONL/COCO/parquet manifests, WebDataset shards)
    with ``model`` (a spec such as ``runs/clip`` or ``hf:ID``, or a loaded model on the local executor) and write
    a new index at ``out``. Undecodable images are skipped and counted in ``index.json`` (``bad_samples``).

    Interrupted? Run the same call again: it resumes from ``out/_work``. ``index_options`` go to
    :func:`vlmkit.search.writer.create_index` (flat_threshold, max_memory_mb, nlist, nprobe, refine_factor, seed).
    """
    folder = Path(out)
    if (folder / INFO_NAME).exists():
        raise FileExistsError(f"{folder} is already a search index; add images with `vlmkit index add` or "
                              "write to another folder")
    work_dir = folder / WORK_NAME / "build"
    table, _ = _embed(model, inputs, work_dir, skip=set(), executor=executor, batch_size=batch_size,
                      workers=workers, ray_address=ray_address, progress=progress, unit_size=unit_size,
                      device=device, on_bad_sample=on_bad_sample)
    if not len(table):
        raise ValueError(f"none of the {len(table.bad)} images could be decoded "
                         f"(e.g. {table.bad[0]['id']}: {table.bad[0]['reason']}); nothing to index")
    index = create_index(folder, model_spec_of(model), table.vectors, _rows(table), index_type=index_type,
                         extra_info={"bad_samples": _bad_summary(table.bad)}, **index_options)
    shutil.rmtree(folder / WORK_NAME, ignore_errors=True)
    return index


def add_to_index(index_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], model: Any = None, *,
                 allow_other_model: bool = False, executor: str = "local", batch_size: int = 64, workers: int = 0,
                 ray_address: str | None = None, progress: bool = True, unit_size: int = 1000,
                 device: str = "auto", on_bad_sample: str = "skip") -> SearchIndex:
    """Embed and add the images of ``inputs`` that the index does not hold yet (same file, or same shard member),
    with the index's own model unless ``model`` is given (then it must match, or ``allow_other_model=True``).
    Resumable like :func:`build_index`. Returns the reopened index."""
    folder = Path(index_path)
    info = read_info(folder)
    if model is None:
        model = info["model_spec"]
        if model.startswith("python:"):
            raise ValueError(f"{folder} was built with a loaded model object ({model}); pass the same model")
    check_model(info["model_spec"], model, allow_other_model)
    with SearchIndex.open(folder) as index:
        live = index.store.matching_ids("", [])
        skip = {(os.path.abspath(row["path"]), row["offset"]) for row in index.store.rows(live).values()}
    key = hashlib.sha256("\0".join(os.path.abspath(str(item)) for item in inputs).encode()).hexdigest()[:12]
    work_dir = folder / WORK_NAME / f"add-{key}"
    table, _ = _embed(model, inputs, work_dir, skip=skip, executor=executor, batch_size=batch_size,
                      workers=workers, ray_address=ray_address, progress=progress, unit_size=unit_size,
                      device=device, on_bad_sample=on_bad_sample)
    if table is not None and len(table):
        add_vectors(folder, table.vectors, _rows(table))
    if table is not None and table.bad:
        _record_bad(folder, table.bad)
    shutil.rmtree(work_dir, ignore_errors=True)
    return SearchIndex.open(folder)


def _record_bad(folder: Path, bad: list[dict]) -> None:
    import json

    from vlmkit.files import atomic_write_text

    with writer_lock(folder):
        info = read_info(folder)
        info["bad_samples"] = _bad_summary(bad, info.get("bad_samples"))
        atomic_write_text(folder / INFO_NAME, json.dumps(info, indent=2) + "\n")


def remove_from_index(index_path: str | os.PathLike, ids: Sequence[int] | None = None,
                      paths: Sequence[str] | None = None) -> int:
    """Remove items by id and/or path (see :func:`vlmkit.search.writer.remove_items`); returns how many."""
    if not ids and not paths:
        raise ValueError("say what to remove: give ids and/or paths")
    return remove_items(index_path, ids=ids, paths=paths)


def check_model(index_spec: str, model: Any, allow_other_model: bool = False) -> None:
    """Refuse a model other than the index's (its embeddings would not be comparable) unless allowed."""
    spec = model_spec_of(model)
    if spec != index_spec and not allow_other_model:
        raise ValueError(f"the index was built with the model {index_spec}, not {spec}: embeddings of another "
                         "model are not comparable; use the index's model (or allow_other_model=True, "
                         "--model on the command line, if you know they share an embedding space)")


def _loaded(model: Any) -> Any:
    return load_model(model) if isinstance(model, (str, os.PathLike)) else model


def search_text(index: SearchIndex, model: Any, queries: Sequence[str], k: int = 10, *,
                allow_other_model: bool = False, **search_options: Any) -> list[list[Hit]]:
    """Embed ``queries`` with the model's ``encode_text`` and search: one list of hits per query.
    ``search_options``: where, collapse_duplicates, nprobe (see :meth:`SearchIndex.search`)."""
    from vlmkit.capabilities import require

    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries or any(not str(text).strip() for text in queries):
        raise ValueError("give a non-empty text to search for")
    check_model(index.model_spec, model, allow_other_model)
    model = _loaded(model)
    require(model, "encode_text", "search by text")
    import torch

    with torch.no_grad():
        vectors = model.encode_text(queries).float().cpu().numpy()
    return index.search(vectors, k, **search_options)


def search_image(index: SearchIndex, model: Any, images: Sequence[Any], k: int = 10, *,
                 allow_other_model: bool = False, **search_options: Any) -> list[list[Hit]]:
    """Embed ``images`` (PIL images, encoded bytes, or image file paths, decoded safely) with the model's
    ``encode_image`` and search: one list of hits per image."""
    from vlmkit.capabilities import require
    from vlmkit.data.decode import BadSample, decode_image

    check_model(index.model_spec, model, allow_other_model)
    model = _loaded(model)
    require(model, "encode_image", "search by image")
    decoded = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            if not Path(image).is_file():
                raise FileNotFoundError(f"no such image: {image}")
            image = Path(image).read_bytes()
        if isinstance(image, (bytes, bytearray)):
            try:
                image = decode_image(bytes(image))[0]
            except BadSample as bad:
                raise ValueError(f"cannot use this query image ({bad.reason})") from None
        decoded.append(image)
    if not decoded:
        raise ValueError("give at least one query image")
    import torch

    with torch.no_grad():
        vectors = model.encode_image(decoded).float().cpu().numpy()
    return index.search(np.asarray(vectors, dtype=np.float32), k, **search_options)

"""Built-in procedural data: coloured shapes with captions, labels and scene metadata.

``generate`` writes one data set in every format vlmkit reads, so the demo and the tests can
exercise each loader on the same images::

    out_dir/images/{key}.png        the images
    out_dir/captions.csv            image,caption,label (one row per caption)
    out_dir/coco.json               COCO captions (file_name relative to out_dir)
    out_dir/metadata.jsonl          objects, bboxes, relations, counts, label, captions
    out_dir/classes.txt             the 30 "{color} {shape}" class names
    out_dir/vqa_questions.json      VQAv2 questions about colour, shape, count, position, existence
    out_dir/vqa_annotations.json    their VQAv2 annotations (10 identical answers, types; see scene_vqa)
    out_dir/shards/{00000..}.tar    img2dataset layout: {key}.png, {key}.txt, {key}.json

Output is byte-identical for the same arguments (any worker count).
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import tarfile
from typing import Iterator

import numpy as np

from ..files import atomic_write_bytes, temporary_path
from .scene_vqa import question_rng, scene_questions, vqa_files
from .scenes import (CLASS_NAMES, choose_captions, counts, layout_multi, layout_single,
                     multi_captions, relations, render, single_captions)

# Below this many images a worker pool costs more than it saves.
_POOL_THRESHOLD = 2000


def make_scene(seed: int, index: int, single: bool, image_size: int, captions_per_image: int,
               key: str) -> tuple[bytes, dict]:
    """Render image ``index``. Returns (PNG bytes, metadata dict)."""
    rng = np.random.default_rng([seed, index])
    objects = layout_single(rng) if single else layout_multi(rng)
    image, boxes = render(objects, rng, image_size)
    found = relations(objects)
    families = single_captions(objects[0]) if single else multi_captions(objects, found)
    captions = choose_captions(families, rng, captions_per_image)
    meta = {
        "key": key,
        "objects": [
            {"color": obj.color, "shape": obj.shape, "size": obj.size, "bbox": box,
             "center": [round(obj.center[0] * image_size, 1), round(obj.center[1] * image_size, 1)]}
            for obj, box in zip(objects, boxes)
        ],
        "relations": found,
        "counts": counts(objects),
        "label": objects[0].name if single else None,
        "captions": captions,
    }
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue(), meta


def _make_scene_args(args: tuple) -> tuple[bytes, dict]:
    return make_scene(*args)


class _ShardWriter:
    """Writes numbered tar shards, each to a temporary name renamed when complete."""

    def __init__(self, folder: str, shard_size: int) -> None:
        self.folder = folder
        self.shard_size = shard_size
        self.paths: list[str] = []
        self._archive: tarfile.TarFile | None = None
        self._temp_name = ""
        self._count = 0

    def add(self, key: str, files: list[tuple[str, bytes]]) -> None:
        if self._archive is None or self._count == self.shard_size:
            self.close()
            self.paths.append(os.path.join(self.folder, f"{len(self.paths):05d}.tar"))
            self._temp_name = str(temporary_path(self.paths[-1]))
            self._archive = tarfile.open(self._temp_name, "w", format=tarfile.GNU_FORMAT)
            self._count = 0
        for extension, data in files:
            # Fixed owner/time/mode so the same data gives byte-identical shards.
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._archive.addfile(info, io.BytesIO(data))
        self._count += 1

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            os.replace(self._temp_name, self.paths[-1])
            self._archive = None


def _remove_stale(folder: str, pattern: str, keep: set[str]) -> None:
    """Delete earlier runs' numbered outputs that this run does not rewrite."""
    regex = re.compile(pattern)
    for name in os.listdir(folder):
        if regex.fullmatch(name) and name not in keep:
            os.unlink(os.path.join(folder, name))


def _scenes(jobs: list[tuple], workers: int) -> Iterator[tuple[bytes, dict]]:
    if workers <= 1 or len(jobs) < _POOL_THRESHOLD:
        yield from map(_make_scene_args, jobs)
        return
    # fork where available: workers need no re-import (importing vlmkit.data pulls in torch).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers) as pool:
        yield from pool.imap(_make_scene_args, jobs, chunksize=64)


def generate(
    out_dir: str,
    n: int,
    seed: int = 0,
    *,
    image_size: int = 96,
    single_fraction: float = 0.5,
    captions_per_image: int = 2,
    shard_size: int = 1000,
    workers: int | None = None,
    vqa_questions_per_image: int = 3,
) -> dict:
    """Write ``n`` procedural scenes to ``out_dir`` in every supported format.

    Args:
        single_fraction: share of one-object scenes (exactly round(n * fraction)); these carry
            a ``label`` "{color} {shape}", multi-object scenes (2-4 objects) have none.
        captions_per_image: distinct captions per image (1-6).
        shard_size: images per tar shard.
        workers: rendering processes (default: CPU count; 1 = in-process). Output does not
            depend on it.
        vqa_questions_per_image: questions per image in the VQA files (1-5; one is always an
            existence question, "yes" for even image ids).

    Returns:
        A summary: paths written and counts (``n``, ``num_single``, ``num_multi``,
        ``num_captions``, ``num_vqa_questions``, ``shards``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= captions_per_image <= 6:
        raise ValueError(f"captions_per_image must be 1-6, got {captions_per_image}")
    if not 0.0 <= single_fraction <= 1.0:
        raise ValueError(f"single_fraction must be in [0, 1], got {single_fraction}")
    if not 1 <= vqa_questions_per_image <= 5:
        raise ValueError(f"vqa_questions_per_image must be 1-5, got {vqa_questions_per_image}")
    if shard_size < 1 or image_size < 16:
        raise ValueError("shard_size must be >= 1 and image_size >= 16")
    image_dir = os.path.join(out_dir, "images")
    shard_dir = os.path.join(out_dir, "shards")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(shard_dir, exist_ok=True)

    width = max(6, len(str(n - 1)))
    keys = [str(index).zfill(width) for index in range(n)]
    num_single = int(round(n * single_fraction))
    # An exact share, spread over the indices by a seeded permutation.
    is_single = np.random.default_rng([seed, n]).permutation(n) < num_single
    jobs = [(seed, index, bool(is_single[index]), image_size, captions_per_image, keys[index])
            for index in range(n)]

    csv_buffer = io.StringIO()
    csv_writer = csv.writer(csv_buffer, lineterminator="\n")
    csv_writer.writerow(["image", "caption", "label"])
    coco_images, coco_annotations, metadata_lines = [], [], []
    vqa_asked, vqa_images = [], []
    shards = _ShardWriter(shard_dir, shard_size)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    try:
        for index, (png, meta) in enumerate(_scenes(jobs, workers)):
            key = keys[index]
            relative = f"images/{key}.png"
            atomic_write_bytes(os.path.join(out_dir, relative), png)
            label = meta["label"]
            for caption in meta["captions"]:
                csv_writer.writerow([relative, caption, label or ""])
                coco_annotations.append(
                    {"id": len(coco_annotations), "image_id": index, "caption": caption})
            coco_images.append({"id": index, "file_name": relative, "width": image_size,
                                "height": image_size, "label": label})
            # A separate per-image stream: the questions change nothing that was drawn for the scene.
            vqa_asked.append(scene_questions(meta, question_rng(seed, index), want_yes=index % 2 == 0,
                                             per_image=vqa_questions_per_image))
            vqa_images.append(relative)
            meta_json = json.dumps(meta)
            metadata_lines.append(meta_json)
            shards.add(key, [("png", png), ("txt", meta["captions"][0].encode()),
                             ("json", meta_json.encode())])
    finally:
        shards.close()

    _remove_stale(shard_dir, r"\d{5,}\.tar", {os.path.basename(p) for p in shards.paths})
    _remove_stale(image_dir, r"\d{6,}\.png", {f"{key}.png" for key in keys})
    paths = {
        "captions_csv": os.path.join(out_dir, "captions.csv"),
        "coco_json": os.path.join(out_dir, "coco.json"),
        "metadata_jsonl": os.path.join(out_dir, "metadata.jsonl"),
        "classes_txt": os.path.join(out_dir, "classes.txt"),
        "vqa_questions_json": os.path.join(out_dir, "vqa_questions.json"),
        "vqa_annotations_json": os.path.join(out_dir, "vqa_annotations.json"),
    }
    coco = {"info": {"description": f"vlmkit synthetic shapes, seed {seed}"},
            "images": coco_images, "annotations": coco_annotations}
    atomic_write_bytes(paths["captions_csv"], csv_buffer.getvalue().encode())
    atomic_write_bytes(paths["coco_json"], json.dumps(coco).encode())
    atomic_write_bytes(paths["metadata_jsonl"], ("\n".join(metadata_lines) + "\n").encode())
    atomic_write_bytes(paths["classes_txt"], ("\n".join(CLASS_NAMES) + "\n").encode())
    vqa_questions, vqa_annotations = vqa_files(vqa_asked, vqa_images, seed=seed)
    atomic_write_bytes(paths["vqa_questions_json"], json.dumps(vqa_questions).encode())
    # Compact: ten answers per question make this the largest JSON file.
    atomic_write_bytes(paths["vqa_annotations_json"], json.dumps(vqa_annotations, separators=(",", ":")).encode())
    return {
        "out_dir": out_dir,
        "images": image_dir,
        **paths,
        "shards": shards.paths,
        "shard_pattern": os.path.join(shard_dir, f"{{00000..{len(shards.paths) - 1:05d}}}.tar"),
        "n": n,
        "num_single": num_single,
        "num_multi": n - num_single,
        "num_captions": len(coco_annotations),
        "num_vqa_questions": len(vqa_questions["questions"]),
        "image_size": image_size,
        "seed": seed,
    }

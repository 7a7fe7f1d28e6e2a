"""The service behind the routes: one model on its own thread, an optional search index, decoded uploads.

The model runs on a single dedicated thread, never on the event loop: PyTorch already spreads one call over the
cores (``torch.set_num_threads``), so requests take turns rather than fight over them, and concurrent text
requests are gathered into one ``encode_text`` call by the :class:`~vlmkit.serve.batching.MicroBatcher`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import threading
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from vlmkit.capabilities import CapabilityError, capabilities_of, require
from vlmkit.data.decode import DEFAULT_MAX_PIXELS, BadSample, decode_image
from vlmkit.serve.batching import MicroBatcher

THUMBNAIL_SIDE = 256
THUMBNAIL_CACHE_SIZE = 512  # ~10 KB each


class Service:
    """The model, the index and the machinery the routes share (one per app)."""

    def __init__(self, model: Any, index: Any = None, *, model_name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, batch_window_ms: float = 5.0, max_batch: int = 64,
                 expose_paths: bool = False, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.model, self.index, self.precision = model, index, precision
        self.model_name = model_name or getattr(model, "name", None) or type(model).__name__
        self.capabilities = capabilities_of(model)
        self.max_pixels, self.expose_paths = max_pixels, expose_paths
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmkit-model")
        self.text_batcher = MicroBatcher(self._encode_texts, self.executor, window_ms=batch_window_ms,
                                         max_batch=max_batch)
        # text searches batch the whole way: one encode_text and one index search per batch, one model-thread hop
        self.text_search_batcher = MicroBatcher(self._search_texts, self.executor, window_ms=batch_window_ms,
                                                max_batch=max_batch)
        self._thumbnails: OrderedDict[int, bytes] = OrderedDict()
        self._thumbnail_lock = threading.Lock()
        if index is not None:
            self._check_index_matches_model()

    def _check_index_matches_model(self) -> None:
        """An index built with another model's embeddings would give meaningless results: refuse it up front."""
        if "encode_text" in self.capabilities:
            dim = self._encode_texts(["a photo"]).shape[1]
        elif "encode_image" in self.capabilities:
            from PIL import Image

            dim = self._encode_images([Image.new("RGB", (32, 32))]).shape[1]
        else:
            raise ValueError(f"{self.model_name} cannot embed (it has {', '.join(self.capabilities)}), so it cannot "
                             "search an index; serve a contrastive model with --index")
        if dim != self.index.dim:
            raise ValueError(f"the index holds {self.index.dim}-d embeddings (model {self.index.model_spec}) but "
                             f"{self.model_name} embeds in {dim} dimensions: serve the model the index was built "
                             "with")

    # the model -----------------------------------------------------------------------------------------------
    def require(self, capability: str, task: str) -> None:
        """501 with what to use instead when the model lacks ``capability``."""
        try:
            require(self.model, capability, task)
        except CapabilityError as error:
            raise HTTPException(status_code=501, detail=str(error)) from None

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` on the model thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args, **kwargs))

    def _autocast(self) -> Any:
        """bf16 autocast for the model's matmuls with ``precision="bf16"`` (about 2x on CPUs with bf16 units; the
        embeddings move by a cosine of ~1e-4), else nothing. ``vlmkit serve`` also stores the weights in bf16, which
        spares autocast its per-call casts (1.6x more for clip-tiny's text tower)."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        import torch

        device = getattr(self.model, "device", None)
        return torch.autocast(getattr(device, "type", None) or "cpu", dtype=torch.bfloat16)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        with self._autocast():
            return self.model.encode_text(texts).float().cpu().numpy()

    def _encode_images(self, images: list[Any]) -> np.ndarray:
        with self._autocast():
            return self.model.encode_image(images).float().cpu().numpy()

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] float32 L2-normalised, batched with concurrent requests."""
        return await self.text_batcher.run(texts)

    async def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """[len(images), D] float32 L2-normalised."""
        return await self.call(self._encode_images, list(images))

    # uploads -------------------------------------------------------------------------------------------------
    async def read_image(self, upload: UploadFile) -> Any:
        """The upload decoded safely to an RGB PIL image; 400 (not an image) or 413 (too many pixels)."""
        data = await upload.read()
        name = upload.filename or "the upload"
        try:
            image, _ = await run_in_threadpool(decode_image, data, max_pixels=self.max_pixels)
        except BadSample as bad:
            if bad.reason == "too_large":
                raise HTTPException(status_code=413, detail=f"{name}: image too large ({bad.detail}); the server "
                                                            f"accepts at most {self.max_pixels} pixels") from None
            explanation = {"empty_file": "the file is empty", "truncated_image": "the image file is cut short",
                           }.get(bad.reason, "not a readable image (send a PNG, JPEG, WebP, GIF, BMP or TIFF file)")
            raise HTTPException(status_code=400, detail=f"{name}: {explanation}") from None
        return image

    # the index -----------------------------------------------------------------------------------------------
    def require_index(self) -> Any:
        if self.index is None:
            raise HTTPException(status_code=501, detail="no search index is loaded: start the server with "
                                                        "--index INDEX (build one with vlmkit.search.build_index)")
        return self.index

    async def search(self, vector: np.ndarray, *, k: int, where: Sequence[str],
                     collapse_duplicates: bool) -> list[dict[str, Any]]:
        """The index's ``k`` nearest items to one L2-normalised vector [D], as JSON-ready dicts."""
        index = self.require_index()
        hits = await self.call(index.search, vector.reshape(1, -1).astype(np.float32), k=k, where=list(where),
                               collapse_duplicates=collapse_duplicates)
        return [self._result(hit) for hit in hits[0]]

    async def search_text(self, text: str, *, k: int, where: Sequence[str],
                          collapse_duplicates: bool) -> list[dict[str, Any]]:
        """The index's ``k`` nearest items to a text query, as JSON-ready dicts; concurrent text searches share one
        ``encode_text`` call and one batched index search."""
        self.require_index()
        (outcome,) = await self.text_search_batcher.run([(text, k, tuple(where), collapse_duplicates)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _search_texts(self, queries: list[tuple[str, int, tuple[str, ...], bool]]) -> list[Any]:
        """For each (text, k, where, collapse) its results, or the exception its search raised (a bad filter in one
        request must not fail the others of its batch)."""
        vectors = self._encode_texts([text for text, *_ in queries]).astype(np.float32)
        groups: dict[tuple, list[int]] = {}
        for row, (_, *options) in enumerate(queries):
            groups.setdefault(tuple(options), []).append(row)
        outcomes: list[Any] = [None] * len(queries)
        for (k, where, collapse), rows in groups.items():
            try:
                hits = self.index.search(vectors[rows], k=k, where=list(where), collapse_duplicates=collapse)
            except Exception as error:  # noqa: BLE001 - handed to each request of the group, raised there
                for row in rows:
                    outcomes[row] = error
                continue
            for row, row_hits in zip(rows, hits):
                outcomes[row] = [self._result(hit) for hit in row_hits]
        return outcomes

    def _result(self, hit: Any) -> dict[str, Any]:
        result = {"id": int(hit.id), "score": float(hit.score), "caption": hit.caption, "key": hit.key,
                  "width": hit.width, "height": hit.height, "thumbnail": f"/v1/thumbnail/{int(hit.id)}"}
        if self.expose_paths:
            result["path"] = hit.path
        return {name: value for name, value in result.items() if value is not None}  # as the schema's exclude_none

    def thumbnail(self, item_id: int) -> bytes:
        """A JPEG of indexed item ``item_id``, longest side at most 256 px (cached). 404 for anything else."""
        index = self.require_index()
        with self._thumbnail_lock:
            if item_id in self._thumbnails:
                self._thumbnails.move_to_end(item_id)
                return self._thumbnails[item_id]
        try:
            data = index.read_image_bytes(item_id)
        except (KeyError, IndexError):
            raise HTTPException(status_code=404, detail=f"no item {item_id} in the index") from None
        except OSError:
            raise HTTPException(status_code=404, detail=f"the image of item {item_id} is no longer readable") from None
        try:
            image, _ = decode_image(data, max_pixels=self.max_pixels)
        except BadSample:
            raise HTTPException(status_code=404, detail=f"the image of item {item_id} cannot be decoded") from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        jpeg = buffer.getvalue()
        with self._thumbnail_lock:
            self._thumbnails[item_id] = jpeg
            while len(self._thumbnails) > THUMBNAIL_CACHE_SIZE:
                self._thumbnails.popitem(last=False)
        return jpeg

    def health(self) -> dict[str, Any]:
        index = None
        if self.index is not None:
            index = {"count": int(self.index.count), "kind": str(self.index.kind), "dim": int(self.index.dim)}
        return {"status": "ok", "model": self.model_name, "capabilities": list(self.capabilities), "index": index,
                "precision": self.precision}

    async def close(self) -> None:
        """Stop the batcher (the app's shutdown). The model thread stays: the app may be started again."""
        await self.text_batcher.close()
        await self.text_search_batcher.close()

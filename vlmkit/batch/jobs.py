"""Batch jobs: what to run on every record. A job prepares one record on a CPU worker (decode safely, transform)
and runs the model on a batch of prepared items in the process that holds the model.

A job is picklable without its model: the model is loaded by :meth:`setup` where it runs (the main process for the
local executor, each actor of the Ray executor), from the spec the job was given.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from vlmkit.batch.units import Record
from vlmkit.data.decode import DEFAULT_MAX_PIXELS, BadSample, decode_image


class BatchJob(Protocol):
    """The interface every job implements (see :class:`EmbedImages`)."""

    batch_size: int

    def spec(self) -> dict[str, Any]:
        """What the job computes, as JSON: a restarted job must have the same spec to resume."""

    def setup(self) -> None:
        """Load the model (once, in the process that runs it)."""

    def preparer(self) -> Callable[[Record, bytes], tuple[Any, dict[str, Any]]]:
        """A picklable function (record, encoded bytes) -> (model input, metadata columns); raises BadSample."""

    def run(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Model outputs for a batch of prepared items: column name -> array with one row per item."""


class ImagePreparer:
    """Decode with vlmkit's safe decoder, record size and content hash, apply the model's image transform."""

    def __init__(self, transform: Any, max_pixels: int) -> None:
        self.transform, self.max_pixels = transform, max_pixels

    def __call__(self, record: Record, data: bytes) -> tuple[Any, dict[str, Any]]:
        image, _ = decode_image(data, max_pixels=self.max_pixels)
        meta = {"width": image.width, "height": image.height, "sha256": hashlib.sha256(data).hexdigest()}
        return self.transform(image), meta


class EmbedImages:
    """L2-normalised image embeddings (column ``embedding``, float32 [B, D]) with any model that can
    ``encode_image``: a native model or run folder, a Hugging Face folder, ``hf:ID``, ``open_clip:...``, or a
    loaded model object (local executor only: the Ray executor needs a spec each actor can load)."""

    def __init__(self, model: Any, *, batch_size: int = 64, device: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.model_spec = str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) and \
            Path(model).exists() else (model if isinstance(model, str) else None)
        self._model = None if isinstance(model, (str, os.PathLike)) else model
        self.batch_size, self.device, self.max_pixels = batch_size, device, max_pixels

    def spec(self) -> dict[str, Any]:
        name = self.model_spec or getattr(self._model, "name", None) or type(self._model).__name__
        return {"job": "embed_images", "model": name, "max_pixels": self.max_pixels}

    def __getstate__(self) -> dict[str, Any]:
        if self.model_spec is None:
            raise ValueError("this job holds a loaded model object, which cannot be sent to other processes; give "
                             "the model as a folder or spec (e.g. runs/clip or hf:openai/clip-vit-base-patch32)")
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> Any:
        self.setup()
        return self._model

    def setup(self) -> None:
        if self._model is None:
            self._model = load_job_model(self.model_spec, self.device, {"encode_image": "embed images"})

    def preparer(self) -> ImagePreparer:
        return ImagePreparer(self.model.image_transform, self.max_pixels)

    def run(self, items: list[Any]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            vectors = self.model.encode_image(torch.stack(items)).float().cpu().numpy()
        return {"embedding": vectors.astype(np.float32)}


def load_job_model(spec: str, device: str, needs: dict[str, str]) -> Any:
    """Load the model a job runs (``device="auto"``: CUDA when present) and check it has every capability in
    ``needs`` ({capability: the task, for the error message})."""
    import torch

    import vlmkit
    from vlmkit.capabilities import require

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = vlmkit.load(spec, device=device)
    for capability, task in needs.items():
        require(model, capability, task)
    return model


def prepare_record(prepare: Callable[[Record, bytes], tuple[Any, dict[str, Any]]], record: Record,
                   data: bytes | None = None) -> tuple[Any, dict[str, Any]] | BadSample:
    """Read (unless ``data`` is given) and prepare one record; a bad sample comes back as its BadSample."""
    try:
        if data is None:
            data = record.image.read()
        return prepare(record, data)
    except BadSample as bad:
        bad.key = bad.key or record.id
        return bad

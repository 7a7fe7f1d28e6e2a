"""The open_clip side of ``embed_throughput.py``: a worker that runs inside a separate venv.

It imports only torch, open_clip and the torch-only helpers of ``_open_clip_peer.py`` (never vlmkit), so it runs
under another torch version. Protocol as in ``_open_clip_peer.py``: one JSON object per line on stdin, one JSON
reply per line on the original stdout. Commands:

- ``{"cmd": "hello"}`` -> versions of python, torch and open_clip
- ``{"cmd": "peak", "dtype": "fp32" | "bf16", "threads": T, "size": N}`` -> ``{"flops": F}``
- ``{"cmd": "build", "name": ..., "overrides": {...}, "weights": PATH, "precision": "fp32" | "bf16",
  "threads": T, "inputs": {...}}`` -> ``{"params": N}``: ``open_clip.create_model(name, pretrained=PATH,
  **overrides)`` (overrides: open_clip model-config keys, for the tiny shapes), moved to bfloat16 for ``bf16``,
  in eval mode, and the benchmark's input batch (``embed_inputs(**inputs)``)
- ``{"cmd": "embed"}`` -> ``{"image": [[...]], "text": [[...]]}``, the normalised float32 embeddings of the batch
- ``{"cmd": "run", "modality": ..., "steps": N}`` -> ``{"seconds": s, "samples_per_s": x}``
- ``{"cmd": "profile", "modality": ..., "steps": N, "rows": R}`` -> a ``torch.profiler`` table
- ``{"cmd": "quit"}``
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import torch

from _open_clip_peer import matmul_peak, profile_steps, synthetic_batch, time_steps, versions

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def embed_inputs(batch_size: int, image_size: int, context_length: int, vocab_size: int, seed: int = 0,
                 min_length: int = 10, max_length: int = 20) -> dict[str, torch.Tensor]:
    """The embedding benchmark's batch: ``images`` [B, 3, S, S] standard normal; ``input_ids`` and
    ``attention_mask`` [B, L] of captions ``min_length`` to ``max_length`` tokens long (end-of-text, the largest
    id, last), zero padding after (``synthetic_batch`` of ``_open_clip_peer.py``)."""
    return synthetic_batch(batch_size, image_size, context_length, vocab_size, seed, max_length,
                           min_length=min_length)


class OpenClipEmbedder:
    """open_clip's CLIP with given weights, embedding one fixed batch of images or captions as open_clip's
    zero-shot code does: ``encode_image`` / ``encode_text`` with ``normalize=True`` under ``torch.no_grad()``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import open_clip

        torch.set_num_threads(int(spec["threads"]))
        model = open_clip.create_model(spec["name"], pretrained=spec["weights"], **spec.get("overrides", {}))
        self.dtype = DTYPES[spec["precision"]]
        self.model = model.to(self.dtype).eval()
        data = embed_inputs(**spec["inputs"])
        self.images = data["images"].to(self.dtype)
        self.texts = data["input_ids"]  # open_clip runs the whole context and pools at the largest id (EOT)
        self.batch_size = len(self.texts)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def image(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_image(self.images, normalize=True).float()

    def text(self) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_text(self.texts, normalize=True).float()

    def step(self, modality: str) -> Callable[[], torch.Tensor]:
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be image or text, not {modality!r}")
        return self.image if modality == "image" else self.text


def serve() -> None:
    """Answer commands until ``quit`` or end of input; errors are replies, not crashes."""
    reply_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not break the protocol
    embedder: OpenClipEmbedder | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            name = command.get("cmd")
            if name == "quit":
                break
            if name == "hello":
                reply: dict[str, Any] = versions()
            elif name == "peak":
                torch.set_num_threads(int(command["threads"]))
                reply = {"flops": matmul_peak(command["dtype"], int(command.get("size", 2048)))}
            elif name == "build":
                embedder = None  # free the previous model first
                embedder = OpenClipEmbedder(command)
                reply = {"params": embedder.num_parameters, "threads": torch.get_num_threads()}
            elif embedder is None:
                raise RuntimeError(f"command {name!r} needs a model: send 'build' first")
            elif name == "embed":
                reply = {"image": embedder.image().tolist(), "text": embedder.text().tolist()}
            elif name == "run":
                reply = time_steps(embedder.step(command["modality"]), int(command["steps"]), embedder.batch_size)
            elif name == "profile":
                reply = profile_steps(embedder.step(command["modality"]), int(command.get("steps", 2)),
                                      int(command.get("rows", 25)))
            else:
                raise ValueError(f"unknown command {name!r}")
            reply["ok"] = True
        except Exception as error:  # reported to the driver, which raises it with the peer's message
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        reply_stream.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    serve()

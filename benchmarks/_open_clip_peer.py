"""The open_clip side of ``train_throughput.py``: a worker that runs inside a separate venv.

It imports only torch (and open_clip, lazily), never vlmkit, so it can run under another torch version.
``train_throughput.py`` imports the torch-only helpers from here (the synthetic batch, FLOP counting, matmul
peak, timing and profiling), so both sides are built and measured the same way.

Protocol: one JSON object per line on stdin, one JSON reply per line on the original stdout (anything the
libraries print goes to stderr). Commands:

- ``{"cmd": "hello"}`` -> versions of python, torch and open_clip
- ``{"cmd": "peak", "dtype": "fp32" | "bf16", "threads": T}`` -> ``{"flops": F}``, matmul FLOP/s of this torch
- ``{"cmd": "build", "model": {...}, "train": {...}, "batch": {...}, "precision": ..., "threads": ..., "seed": ...}``
  -> ``{"params": N, ...}``; builds ``open_clip.model.CLIP``, AdamW and ClipLoss as open_clip's trainer does
- ``{"cmd": "flops"}`` -> matmul FLOPs of one training step counted by ``FlopCounterMode`` (the step is taken)
- ``{"cmd": "run", "steps": N}`` -> ``{"seconds": s, "samples_per_s": x}``
- ``{"cmd": "profile", "steps": N, "rows": R}`` -> a ``torch.profiler`` table of N steps
- ``{"cmd": "quit"}``
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable

import torch

# open_clip's names for the precisions the benchmark compares (``--precision`` of open_clip_train.main)
OPEN_CLIP_PRECISION = {"fp32": "fp32", "bf16-mixed": "amp_bf16", "bf16": "pure_bf16"}


def synthetic_batch(batch_size: int, image_size: int, context_length: int, vocab_size: int,
                    seed: int = 0, max_length: int | None = None, *,
                    min_length: int | None = None) -> dict[str, torch.Tensor]:
    """A caption-like training batch.

    ``images`` [B, 3, S, S] standard normal; ``input_ids`` [B, L] (L = the context length) with a random length
    per caption, from ``min_length`` (default: a quarter of ``max_length``, at least 2) to ``max_length`` (default:
    the context length), random tokens, the end-of-text token (``vocab_size - 1``, the largest id as in CLIP's
    tokenizer, so open_clip's argmax pooling finds it) at the last real position and padding id 0 after;
    ``attention_mask`` [B, L] True for real tokens (the end-of-text token included).
    """
    max_length = context_length if max_length is None else max_length
    if not 2 <= max_length <= context_length:
        raise ValueError(f"the longest caption must have 2 to {context_length} tokens, not {max_length}")
    min_length = max(2, max_length // 4) if min_length is None else min_length
    if not 2 <= min_length <= max_length:
        raise ValueError(f"the shortest caption must have 2 to {max_length} tokens, not {min_length}")
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    lengths = torch.randint(min_length, max_length + 1, (batch_size,), generator=generator)
    positions = torch.arange(context_length)
    mask = positions[None, :] < lengths[:, None]
    input_ids = torch.randint(1, vocab_size - 1, (batch_size, context_length), generator=generator)
    input_ids = torch.where(mask, input_ids, torch.zeros_like(input_ids))
    input_ids[torch.arange(batch_size), lengths - 1] = vocab_size - 1
    return {"images": images, "input_ids": input_ids, "attention_mask": mask}


# --- torch-only helpers shared with train_throughput.py ---------------------------------------------------------
def time_steps(step: Callable[[], Any], steps: int, batch_size: int) -> dict[str, float]:
    """Seconds and samples/s of ``steps`` calls, and the minor page faults per call (fresh memory touched for the
    first time: large CPU tensors come from new pages, and faulting them in is part of the time)."""
    faults = _minor_faults()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples_per_s": steps * batch_size / seconds,
            "page_faults_per_step": (_minor_faults() - faults) / steps}


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """QKᵀ and AV of [B, H, L, D] attention, full L×L (causal counted in full, as FlopCounterMode does)."""
    batch, heads, queries, head_dim = query
    return 2 * batch * heads * queries * key[-2] * (head_dim + value[-1])


def _attention_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _attention_flops(query, key, value)


def attention_flop_formulas() -> dict[Any, Any]:
    """Formulas for the CPU fused attention kernels, which ``FlopCounterMode`` does not count by itself."""
    from torch.utils.flop_counter import flop_registry

    formulas = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops)):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            formulas[packet] = formula
    return formulas


def count_flops(step: Callable[[], Any]) -> float:
    """Matmul FLOPs (mm, addmm, bmm, convolution, attention; forward and backward) of one call of ``step``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        step()
    return float(counter.get_total_flops())


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of ``size``×``size`` matmuls in ``dtype`` (fp32 | bf16) with the current thread count."""
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size).to(torch_dtype)
    b = torch.randn(size, size).to(torch_dtype)
    out = torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def profile_steps(step: Callable[[], Any], steps: int, rows: int) -> dict[str, Any]:
    """``torch.profiler`` over ``steps`` calls: a table sorted by self CPU time and per-op totals (µs)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    averages = prof.key_averages()
    return {"table": averages.table(sort_by="self_cpu_time_total", row_limit=rows),
            "ops": {event.key: {"self_us": event.self_cpu_time_total, "total_us": event.cpu_time_total,
                                "count": event.count} for event in averages}}


class OpenClipTrainer:
    """open_clip's CLIP, optimizer, loss and one training step (``open_clip_train.train.train_one_epoch`` with
    ``accum_freq=1``: autocast forward + ClipLoss, backward, grad-norm clip, AdamW step, clamp of the log
    temperature to [0, ln 100])."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        torch.set_num_threads(int(spec["threads"]))
        model_spec, train, batch = spec["model"], spec["train"], spec["batch"]
        self.precision = OPEN_CLIP_PRECISION[spec["precision"]]
        vision, text = model_spec["vision"], model_spec["text"]
        vision_cfg = CLIPVisionCfg(layers=vision["layers"], width=vision["width"],
                                   head_width=vision["width"] // vision["heads"], mlp_ratio=vision["mlp_ratio"],
                                   patch_size=vision["patch_size"], image_size=vision["image_size"],
                                   # mean pooling: open_clip averages the patch tokens but keeps its class token
                                   # in the sequence (one token more than ours of 64 + 1)
                                   pool_type="avg" if vision.get("pool") == "mean" else "tok")
        text_cfg = CLIPTextCfg(context_length=text["context_length"], vocab_size=text["vocab_size"],
                               width=text["width"], heads=text["heads"], layers=text["layers"],
                               mlp_ratio=text["mlp_ratio"])
        torch.manual_seed(int(spec["seed"]))
        # open_clip's factory: cast_dtype from the precision (None for fp32, amp_bf16 and pure_bf16); pure_bf16
        # then moves the whole model to bfloat16, and the trainer feeds bfloat16 images.
        model = CLIP(model_spec["embed_dim"], vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=False,
                     cast_dtype=open_clip.model.get_cast_dtype(self.precision), output_dict=True)
        if self.precision == "pure_bf16":
            model.to(dtype=torch.bfloat16)
        self.model = model.train()
        self.input_dtype = open_clip.model.get_input_dtype(self.precision)
        # open_clip_train.precision.get_autocast: torch.amp.autocast(bfloat16) for amp_bf16, else a no-op context
        self.autocast: Callable[[], Any] = (
            (lambda: torch.amp.autocast(device_type="cpu", dtype=torch.bfloat16)) if self.precision == "amp_bf16"
            else contextlib.nullcontext)

        # open_clip_train.main: no weight decay on gains, biases and the temperature
        def exclude(name: str, parameter: torch.nn.Parameter) -> bool:
            return (parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                    or "logit_scale" in name)

        named = list(model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad],
              "weight_decay": float(train["weight_decay"])}],
            lr=float(train["lr"]), betas=tuple(float(b) for b in train["betas"]), eps=float(train["eps"]))
        self.loss = open_clip.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True,
                                       rank=0, world_size=1)
        self.grad_clip = float(train["grad_clip"] or 0) or None
        data = synthetic_batch(batch["batch_size"], vision["image_size"], text["context_length"],
                               text["vocab_size"], int(batch.get("seed", 0)), batch.get("max_length"))
        self.images = data["images"].to(dtype=self.input_dtype) if self.input_dtype else data["images"]
        self.texts = data["input_ids"]
        self.batch_size = batch["batch_size"]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def step(self) -> float:
        self.optimizer.zero_grad()
        with self.autocast():
            model_out = self.model(self.images, self.texts)
            losses = self.loss(**model_out, output_dict=True)
            total_loss = sum(losses.values())
        total_loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, norm_type=2.0)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return float(total_loss.detach())

    def run(self, steps: int) -> dict[str, float]:
        return time_steps(self.step, steps, self.batch_size)

    def flops(self) -> dict[str, float]:
        flops = count_flops(self.step)
        return {"flops_per_step": flops, "flops_per_sample": flops / self.batch_size}


def versions() -> dict[str, Any]:
    import open_clip

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "threads": torch.get_num_threads(), "executable": sys.executable}


def serve() -> None:
    """Answer commands until ``quit`` or end of input; errors are replies, not crashes."""
    reply_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not break the protocol
    trainer: OpenClipTrainer | None = None
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
                trainer = None
                trainer = OpenClipTrainer(command)
                reply = {"params": trainer.num_parameters, "precision": trainer.precision,
                         "threads": torch.get_num_threads()}
            elif trainer is None:
                raise RuntimeError(f"command {name!r} needs a model: send 'build' first")
            elif name == "run":
                reply = trainer.run(int(command["steps"]))
            elif name == "flops":
                reply = trainer.flops()
            elif name == "profile":
                reply = profile_steps(trainer.step, int(command.get("steps", 2)), int(command.get("rows", 25)))
            else:
                raise ValueError(f"unknown command {name!r}")
            reply["ok"] = True
        except Exception as error:  # reported to the driver, which raises it with the peer's message
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        reply_stream.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    serve()

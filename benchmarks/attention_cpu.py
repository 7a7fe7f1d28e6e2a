"""bf16 attention on CPU: PyTorch's bf16 kernel, the fp32 kernel on cast inputs, and vlmkit's ``attention``.

    python benchmarks/attention_cpu.py [--lengths 32,50,65,128,197,256,257,512] [--threads 1] [--json]

For each sequence length L (self-attention, L queries over L keys; 4 heads of 64 and 8,192 tokens per call), the
three sides run on the same bf16 tensors, taking turns in rounds (the order reversed every other round), once
forward only (no autograd: inference) and once forward plus backward (training). The report gives the median
milliseconds per call and the ratio PyTorch / vlmkit (above 1: vlmkit's is faster). ``attention``
(vlmkit/modules/transformer.py) casts to fp32 only when autograd records the call and L is at most
``CPU_FP32_ATTENTION_MAX_KEYS``; otherwise it runs PyTorch's bf16 kernel, and its column is the same code.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

from train_throughput import machine_info  # noqa: E402

from vlmkit.modules.transformer import CPU_FP32_ATTENTION_MAX_KEYS, attention  # noqa: E402


def pytorch_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def fp32_cast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def timed(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], backward: bool, calls: int) -> float:
    """Milliseconds per call of ``fn`` (plus the backward of its sum when ``backward``)."""
    start = time.perf_counter()
    for _ in range(calls):
        if backward:
            fn(*tensors).float().sum().backward()
        else:
            with torch.no_grad():
                fn(*tensors)
    return (time.perf_counter() - start) / calls * 1000


def measure(length: int, rounds: int, calls: int, heads: int = 4, head_dim: int = 64) -> dict[str, Any]:
    batch = max(1, 8192 // length)
    generator = torch.Generator().manual_seed(length)
    tensors = [torch.randn(batch, heads, length, head_dim, generator=generator).bfloat16().requires_grad_()
               for _ in range(3)]
    sides = {"pytorch_bf16": pytorch_bf16, "fp32_cast": fp32_cast, "vlmkit": attention}
    result: dict[str, Any] = {"length": length, "batch": batch}
    for mode, backward in (("forward", False), ("forward_backward", True)):
        times: dict[str, list[float]] = {name: [] for name in sides}
        for name, fn in sides.items():  # warm-up
            timed(fn, tensors, backward, 1)
        for index in range(rounds):
            order = list(sides) if index % 2 == 0 else list(sides)[::-1]
            for name in order:
                times[name].append(timed(sides[name], tensors, backward, calls))
        medians = {name: statistics.median(values) for name, values in times.items()}
        result[mode] = {**{f"{name}_ms": round(value, 2) for name, value in medians.items()},
                        "ratio": round(medians["pytorch_bf16"] / medians["vlmkit"], 2),
                        "vlmkit_kernel": "fp32" if backward and length <= CPU_FP32_ATTENTION_MAX_KEYS else "bf16"}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="32,50,65,128,197,256,257,512",
                        help="comma-separated sequence lengths (32: the tiny text tower's context; 65: the tiny "
                             "ViT's 64 patches and a class token; 50 / 197 / 257: ViT-B/32, B/16, L/14 at 224 px)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=3, help="calls per timed segment")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(item) for item in args.lengths.split(",") if item.strip()]
    report = {"machine": machine_info(threads=args.threads), "torch": torch.__version__,
              "fp32_max_keys": CPU_FP32_ATTENTION_MAX_KEYS,
              "results": [measure(length, args.rounds, args.calls) for length in lengths]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        machine = report["machine"]
        print(f"machine: {machine['cpu']} ({machine['cpu_capability']}), {args.threads} thread(s); torch "
              f"{report['torch']}")
        print(f"{'L':>5} {'batch':>5} | forward: {'torch':>7} {'fp32':>7} {'vlmkit':>7} {'ratio':>5} | "
              f"forward+backward: {'torch':>7} {'fp32':>7} {'vlmkit':>7} {'ratio':>5}  (ms per call)")
        for row in report["results"]:
            cells = []
            for mode in ("forward", "forward_backward"):
                r = row[mode]
                cells.append(f"{r['pytorch_bf16_ms']:>7.2f} {r['fp32_cast_ms']:>7.2f} {r['vlmkit_ms']:>7.2f} "
                             f"{r['ratio']:>5.2f} ({r['vlmkit_kernel']})")
            print(f"{row['length']:>5} {row['batch']:>5} |          {cells[0]} |                   {cells[1]}")
    return report


if __name__ == "__main__":
    main()

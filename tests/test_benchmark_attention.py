"""The CPU attention benchmark on two tiny lengths: its report's fields and the kernel vlmkit says it picks."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_attention_benchmark_reports_both_modes_and_the_kernel_of_each(capsys):
    spec = importlib.util.spec_from_file_location("attention_cpu", ROOT / "benchmarks" / "attention_cpu.py")
    module = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        report = module.main(["--lengths", "16,300", "--rounds", "2", "--calls", "1"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert report["fp32_max_keys"] == 256 and report["machine"]["threads"] == 1
    short, long = report["results"]
    assert (short["length"], short["batch"], long["length"], long["batch"]) == (16, 512, 300, 27)
    for row in (short, long):
        for mode in ("forward", "forward_backward"):
            values = row[mode]
            assert all(values[f"{side}_ms"] > 0 for side in ("pytorch_bf16", "fp32_cast", "vlmkit"))
            assert values["ratio"] == round(values["pytorch_bf16_ms"] / values["vlmkit_ms"], 2)
    # fp32 only where autograd records the call and the keys are few; inference and long sequences keep bf16
    kernels = [(row["length"], mode, row[mode]["vlmkit_kernel"]) for row in (short, long)
               for mode in ("forward", "forward_backward")]
    assert kernels == [(16, "forward", "bf16"), (16, "forward_backward", "fp32"), (300, "forward", "bf16"),
                       (300, "forward_backward", "bf16")]
    assert "   16   512 |" in printed and "(fp32)" in printed

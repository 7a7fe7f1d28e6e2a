"""Training throughput of a vlmkit recipe, its FLOPs and MFU, side by side with open_clip.

    python benchmarks/train_throughput.py --recipe clip-tiny --batch 128 --precision all \\
        [--peer open_clip --peer-python .peer-venv/bin/python] [--json] [--profile]

Ours runs exactly what the trainer runs (``vlmkit.train.step.optimizer_step`` on the recipe's model and AdamW).
The peer (``_open_clip_peer.py``, in its own venv) builds open_clip's CLIP with the same towers and trains on the
same batch with open_clip's step. The two alternate in rounds within one run (ABBA order), so both see the same
machine load; the report gives medians per round. MFU is achieved matmul FLOP/s over the matmul peak measured in
this run for the precision's matmul dtype (fp32 for fp32, bf16 for bf16-mixed and bf16).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

# torch-only helpers shared with the peer, which cannot import vlmkit
from _open_clip_peer import (count_flops, matmul_peak, profile_steps, synthetic_batch,  # noqa: E402
                             time_steps)

PRECISIONS = ("fp32", "bf16-mixed", "bf16")
MATMUL_DTYPE = {"fp32": "fp32", "bf16-mixed": "bf16", "bf16": "bf16"}
PEER_SCRIPT = HERE / "_open_clip_peer.py"
DEFAULT_PEER_PYTHON = HERE.parent / ".peer-venv" / "bin" / "python"


# --- our side ----------------------------------------------------------------------------------------------------
def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The recipe's model section with the text vocabulary sized as training sizes it (tokenizer.vocab_size)."""
    model = copy.deepcopy(config["model"])
    model.setdefault("text", {})["vocab_size"] = int(config["tokenizer"]["vocab_size"])
    return model


class OursTrainer:
    """vlmkit's model, optimizer and training step, built as ``vlmkit.train.loop`` builds them."""

    def __init__(self, config: dict[str, Any], precision: str, batch: dict[str, torch.Tensor], seed: int = 0):
        import vlmkit
        from vlmkit.train.optim import build_optimizer

        torch.manual_seed(seed)
        self.model = vlmkit.build_model(model_config(config))
        if precision == "bf16":
            self.model.to(torch.bfloat16)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config["train"])
        self.precision, self.batch = precision, batch
        self.clip = float(config["train"]["grad_clip"] or 0)
        self.batch_size = len(batch["images"])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def step(self) -> float:
        from vlmkit.train.step import optimizer_step

        loss, _ = optimizer_step(self.model, self.model, self.optimizer, self.batch, accum=1, clip=self.clip,
                                 precision=self.precision, device=torch.device("cpu"))
        return loss

    def run(self, steps: int) -> dict[str, float]:
        return time_steps(self.step, steps, self.batch_size)

    def profile(self, steps: int, rows: int) -> dict[str, Any]:
        return profile_steps(self.step, steps, rows)


def analytic_flops_per_sample(model: dict[str, Any], batch_size: int, text_length: int | None = None) -> float:
    """Forward + backward matmul FLOPs per sample of a ViT/text-transformer CLIP with linear projections.

    ``text_length``: the token columns the text tower runs over (default: the context length; vlmkit's causal
    tower drops the padding columns after the batch's longest caption, open_clip runs the whole context).

    Forward: 2 FLOPs per multiply-add of every linear layer and of attention's QKᵀ and AV (full L×L, as
    ``FlopCounterMode`` counts causal attention too), the patch convolution, both projections and the two B×B
    logit matrices of the loss. Backward is twice the forward, except the patch convolution, whose input (the
    images) needs no gradient: once.
    """
    vision, text, embed = model["vision"], model["text"], int(model["embed_dim"])

    def tower(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
        hidden = int(width * mlp_ratio)
        linear = tokens * (3 * width * width + width * width + 2 * width * hidden)
        attention = 2 * tokens * tokens * width
        return 2.0 * layers * (linear + attention)

    patches = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    vision_tokens = patches + (1 if vision.get("pool", "cls") == "cls" else 0)
    forward = tower(vision_tokens, int(vision["width"]), int(vision["layers"]), float(vision.get("mlp_ratio", 4)))
    forward += tower(int(text_length or text["context_length"]), int(text["width"]), int(text["layers"]),
                     float(text.get("mlp_ratio", 4)))
    forward += 2.0 * (int(vision["width"]) + int(text["width"])) * embed  # projections
    forward += 2 * 2.0 * batch_size * embed  # this sample's row of each logit matrix
    patch = 2.0 * patches * 3 * int(vision["patch_size"]) ** 2 * int(vision["width"])
    return 3 * forward + 2 * patch


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and bf16 features, thread count, versions, and the load average (as ``uptime`` shows it)."""
    cpu, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "python": platform.python_version(), "load_start": load_average()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


# --- the peer ------------------------------------------------------------------------------------------------------
class PeerProcess:
    """An open_clip worker (``script``, default ``_open_clip_peer.py``) in its own interpreter, driven by JSON
    lines."""

    def __init__(self, python: str | Path, script: str | Path = PEER_SCRIPT) -> None:
        python = os.path.abspath(python)  # not resolve(): a venv's python is a symlink that must stay one
        if not Path(python).exists():
            raise FileNotFoundError(f"--peer-python {python} does not exist; create the peer venv as "
                                    "benchmarks/README.md says")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([python, str(script)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
                                        env=env, cwd=str(HERE))

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(f"the open_clip peer exited during {cmd!r}:\n{self.stderr.read()[-3000:]}")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise RuntimeError(f"the open_clip peer failed on {cmd!r}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.call("quit")
            except (RuntimeError, BrokenPipeError, OSError):
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def peer_model_spec(model: Any) -> dict[str, Any]:
    """Our built model's shapes in the form the peer needs; refuses what open_clip's CLIP cannot mirror."""
    config = model.config
    vision, text = asdict(config.vision), asdict(config.text)
    problems = []
    if config.architecture != "clip":
        problems.append(f"architecture {config.architecture} (the peer trains CLIP with ClipLoss)")
    if config.freeze != "none":
        problems.append(f"freeze {config.freeze} (LiT)")
    if config.projection != "linear":
        problems.append(f"projection {config.projection}")
    if vision["pool"] not in ("cls", "mean") or not vision["norm_pre"]:
        problems.append("vision pool/norm_pre other than cls or mean/true")
    if text["pool"] != "eot" or not text["causal"]:
        problems.append("text pool/causal other than eot/true")
    if vision["activation"] != "gelu" or text["activation"] != "gelu":
        problems.append("activation other than gelu")
    if problems:
        raise ValueError("open_clip's CLIP cannot mirror this model: " + "; ".join(problems))
    return {"embed_dim": config.embed_dim, "vision": vision, "text": text}


# --- the run -------------------------------------------------------------------------------------------------------
def resolve_precisions(requested: str) -> list[str]:
    """``all``: each precision; ``auto``: the one vlmkit's trainer picks on this machine for ``auto``."""
    if requested == "all":
        return list(PRECISIONS)
    if requested == "auto":
        from vlmkit.train.setup import resolve_precision

        return [resolve_precision("auto", torch.device("cpu"))]
    return [requested]


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every requested precision; returns the JSON-able result."""
    from vlmkit.config import load_config

    config = load_config(args.recipe, args.set)
    threads = int(args.threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    precisions = resolve_precisions(args.precision)
    model = model_config(config)
    vision, text = model["vision"], model["text"]
    batch = synthetic_batch(args.batch, int(vision["image_size"]), int(text["context_length"]),
                            int(text["vocab_size"]), args.seed, args.caption_max)
    machine = machine_info(threads)
    log(f"machine: {machine['cpu']}, {threads} threads, torch {machine['torch']}, load {machine['load_start']}")
    dtypes = sorted({MATMUL_DTYPE[p] for p in precisions})
    peaks = {dtype: matmul_peak(dtype, args.matmul_size) for dtype in dtypes}
    log("matmul peak at start: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    peer = PeerProcess(args.peer_python) if args.peer else None
    result: dict[str, Any] = {
        "settings": {"recipe": args.recipe, "overrides": list(args.set), "batch": args.batch, "precisions": precisions,
                     "precision_requested": args.precision, "recipe_precision": config["train"]["precision"],
                     "longest_caption": int(batch["attention_mask"].sum(1).max()),
                     "context_length": int(text["context_length"]),
                     "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                     "threads": threads, "seed": args.seed, "peer": args.peer, "matmul_size": args.matmul_size},
        "machine": machine, "model": model, "results": []}
    try:
        peer_peaks: dict[str, float] = {}
        if peer is not None:
            result["machine"]["peer"] = peer.call("hello")
            peer_peaks = {dtype: peer.call("peak", dtype=dtype, threads=threads, size=args.matmul_size)["flops"]
                          for dtype in dtypes}
        for precision in precisions:
            result["results"].append(measure_precision(config, precision, batch, peer, args, threads, log))
        # Load from other processes only ever lowers a measured peak: keep the better of start and end.
        for dtype in dtypes:
            peaks[dtype] = max(peaks[dtype], matmul_peak(dtype, args.matmul_size))
            if peer is not None:
                peer_peaks[dtype] = max(peer_peaks[dtype], peer.call("peak", dtype=dtype, threads=threads,
                                                                     size=args.matmul_size)["flops"])
    finally:
        if peer is not None:
            peer.close()
    result["matmul_peak_flops"] = peaks
    if peer_peaks:
        result["matmul_peak_flops_peer"] = peer_peaks
    for row in result["results"]:
        peak = row["matmul_peak_flops"] = peaks[MATMUL_DTYPE[row["precision"]]]
        row["ours_mfu"] = row["ours_samples_per_s"] * row["flops_per_sample"] / peak
        if "peer_samples_per_s" in row:
            row["peer_mfu"] = row["peer_samples_per_s"] * row["peer_flops_per_sample"] / peak
    result["machine"]["load_end"] = load_average()
    # the 1-minute load counts this run's own threads; more than one extra means other work shared the cores
    loads = [load[0] for load in (result["machine"]["load_start"], result["machine"]["load_end"]) if load]
    result["machine"]["busy"] = bool(loads) and max(loads) > threads + 1
    if peer is not None:
        result["target"] = target_check(result["results"])
    return result


def measure_precision(config: dict[str, Any], precision: str, batch: dict[str, torch.Tensor],
                      peer: PeerProcess | None, args: argparse.Namespace, threads: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Samples/s of both sides in alternating rounds, FLOPs per sample, parameters (MFU is added later)."""
    ours = OursTrainer(config, precision, batch, args.seed)
    flops_step = count_flops(ours.step)  # also the first warm-up step
    row: dict[str, Any] = {
        "precision": precision, "params_ours": ours.num_parameters, "flops_per_sample": flops_step / args.batch,
        "flops_per_sample_analytic": analytic_flops_per_sample(
            model_config(config), args.batch, int(batch["attention_mask"].sum(1).max()))}
    if peer is not None:
        built = peer.call("build", model=peer_model_spec(ours.model), precision=precision, threads=threads,
                          seed=args.seed, train=config["train"],
                          batch={"batch_size": args.batch, "seed": args.seed, "max_length": args.caption_max})
        row["params_peer"] = built["params"]
        row["peer_precision"] = built["precision"]
        row["peer_flops_per_sample"] = peer.call("flops")["flops_per_sample"]
        log(f"[{precision}] parameters: ours {row['params_ours']:,}, open_clip {row['params_peer']:,}")
    for _ in range(max(0, args.warmup - 1)):
        ours.step()
        if peer is not None:
            peer.call("run", steps=1)
    ours_rates, peer_rates = [], []
    for index in range(args.rounds):
        order = ("ours", "peer") if index % 2 == 0 else ("peer", "ours")  # ABBA cancels a drifting load
        for side in order:
            if side == "peer" and peer is None:
                continue
            time.sleep(args.pause)  # let the other process's worker threads go idle
            rate = (ours.run(args.steps) if side == "ours" else peer.call("run", steps=args.steps))["samples_per_s"]
            (ours_rates if side == "ours" else peer_rates).append(rate)
        log(f"[{precision}] round {index + 1}/{args.rounds}: ours {ours_rates[-1]:.1f}"
            + (f", open_clip {peer_rates[-1]:.1f}" if peer_rates else "") + f" samples/s (load {load_average()[0]})")
    row.update(ours_rounds=ours_rates, ours_samples_per_s=statistics.median(ours_rates),
               ours_best_samples_per_s=max(ours_rates))
    if peer is not None:
        row.update(peer_rounds=peer_rates, peer_samples_per_s=statistics.median(peer_rates),
                   peer_best_samples_per_s=max(peer_rates))
        row["ratio"] = row["ours_samples_per_s"] / row["peer_samples_per_s"]
        # each round's two segments ran back to back, so their ratio sees nearly the same load
        row["ratio_paired_median"] = statistics.median(a / b for a, b in zip(ours_rates, peer_rates))
        row["ratio_best"] = row["ours_best_samples_per_s"] / row["peer_best_samples_per_s"]
    if args.profile:
        row["profile_ours"] = ours.profile(args.profile_steps, args.profile_rows)
        if peer is not None:
            row["profile_peer"] = peer.call("profile", steps=args.profile_steps, rows=args.profile_rows)
    return row


def target_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target: >= 1.5x open_clip at bf16-mixed and never slower at fp32."""
    ratios = {row["precision"]: row["ratio"] for row in rows if "ratio" in row}
    check: dict[str, Any] = {}
    if "bf16-mixed" in ratios:
        check["bf16-mixed >= 1.5x"] = ratios["bf16-mixed"] >= 1.5
    if "fp32" in ratios:
        check["fp32 >= 1.0x"] = ratios["fp32"] >= 1.0
    return check


# --- output --------------------------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    has_peer = any("ratio" in row for row in result["results"])
    head = ["precision", "ours samples/s"] + (["open_clip samples/s", "ratio"] if has_peer else []) + \
        ["ours MFU"] + (["open_clip MFU"] if has_peer else [])
    lines = [head]
    for row in result["results"]:
        cells = [row["precision"], f"{row['ours_samples_per_s']:.1f}"]
        if has_peer:
            cells += [f"{row['peer_samples_per_s']:.1f}", f"{row['ratio']:.2f}x"]
        cells.append(f"{100 * row['ours_mfu']:.1f}%")
        if has_peer:
            cells.append(f"{100 * row['peer_mfu']:.1f}%")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    table = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines]
    machine, settings = result["machine"], result["settings"]
    first = result["results"][0]
    notes = [f"{settings['recipe']} batch {settings['batch']}, {settings['rounds']} rounds x "
             f"{settings['steps_per_round']} steps (median), {machine['threads']} threads on {machine['cpu']}",
             f"torch {machine['torch']}" + (f", open_clip {machine['peer']['open_clip']} on torch "
                                            f"{machine['peer']['torch']}" if "peer" in machine else ""),
             f"load average start {machine['load_start']} end {machine.get('load_end')}",
             f"FLOPs/sample (fwd+bwd matmuls): {first['flops_per_sample'] / 1e9:.3f} G counted, "
             f"{first['flops_per_sample_analytic'] / 1e9:.3f} G analytic"
             + (f", open_clip {first['peer_flops_per_sample'] / 1e9:.3f} G" if "peer_flops_per_sample" in first
                else ""),
             "matmul peak (MFU denominator, both sides): "
             + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in result["matmul_peak_flops"].items())
             + ("; with the peer's torch: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in
                                                         result["matmul_peak_flops_peer"].items())
                if "matmul_peak_flops_peer" in result else "")]
    if has_peer:
        notes.append("ratio of per-round pairs (median) / of best rounds: " + ", ".join(
            f"{row['precision']} {row['ratio_paired_median']:.2f}x / {row['ratio_best']:.2f}x"
            for row in result["results"]))
    if "params_peer" in first:
        notes.append(f"parameters: ours {first['params_ours']:,}, open_clip {first['params_peer']:,}")
    if machine.get("busy"):
        notes.append(f"WARNING: load average above {machine['threads']} + 1: other processes shared the cores, so "
                     "rounds vary; trust the per-round pairs more than the medians, or rerun on a quiet machine")
    if "target" in result:
        notes.append("target: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["target"].items()))
    return "\n".join(table + [""] + notes)


def format_profile(row: dict[str, Any], steps: int, rows: int = 20) -> str:
    """Self CPU time per step of the ops where either side spends the most, side by side with the peer's."""
    sides = [("ours", row["profile_ours"]["ops"])]
    if "profile_peer" in row:
        sides.append(("open_clip", row["profile_peer"]["ops"]))

    def ms(ops: dict[str, Any], key: str) -> float:
        return ops.get(key, {}).get("self_us", 0) / 1e3 / steps

    keys = sorted({key for _, ops in sides for key in ops}, key=lambda k: -max(ms(ops, k) for _, ops in sides))
    lines = [f"[{row['precision']}] self CPU ms per step ({steps} profiled steps)",
             f"{'op':<60}" + "".join(f" {name:>10}" for name, _ in sides)
             + (f" {'diff':>9}" if len(sides) > 1 else "")]
    for key in [*keys[:rows], "total"]:
        values = [sum(ms(ops, k) for k in ops) if key == "total" else ms(ops, key) for _, ops in sides]
        lines.append(f"{key[:60]:<60}" + "".join(f" {value:10.1f}" for value in values)
                     + (f" {values[0] - values[1]:+9.1f}" if len(values) > 1 else ""))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="clip-tiny", help="built-in recipe name or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precision", default="bf16-mixed", choices=(*PRECISIONS, "all", "auto"),
                        help="all: each in turn; auto: what vlmkit's trainer picks here for train.precision=auto")
    parser.add_argument("--caption-max", type=int, default=None,
                        help="longest caption in tokens (default: the context length); lengths are uniform from "
                             "a quarter of it to all of it, the rest is padding")
    parser.add_argument("--peer", choices=("open_clip",), default=None)
    parser.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON),
                        help="interpreter of the venv with torch==2.14.1 torchvision==0.29.1 open_clip_torch")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and side")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds of idle before each timed segment")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also profile both sides and compare op times")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_benchmark(args, log=lambda message: print(message, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(format_table(result))
        if args.profile:
            for row in result["results"]:
                print("\n" + format_profile(row, args.profile_steps))
                print("\nours:\n" + row["profile_ours"]["table"])
                if "profile_peer" in row:
                    print("open_clip:\n" + row["profile_peer"]["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

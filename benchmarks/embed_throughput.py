"""Image and text embedding throughput of a CLIP ViT-B/32 converted to vlmkit, beside transformers and open_clip.

    python benchmarks/embed_throughput.py --precision all --batch 32 \\
        [--peer-python .peer-venv/bin/python] [--json] [--out FILE] [--profile]

One random transformers ``CLIPModel`` with OpenAI ViT-B/32 shapes is saved to a temporary folder and converted
with ``vlmkit.backends.clip_convert.native_from_hf`` (the real conversion path); open_clip (in its own venv, a
subprocess) gets the same weights through ``export_open_clip``. Every side embeds the same preprocessed batch
into normalised float32 embeddings; the sides alternate in rounds within one run and the report gives medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

from _open_clip_embed_peer import embed_inputs  # noqa: E402  (torch-only, shared with the peer)
from _open_clip_peer import count_flops, matmul_peak, profile_steps, time_steps  # noqa: E402
from train_throughput import PeerProcess, load_average, machine_info  # noqa: E402

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODALITIES = ("image", "text")
PEER_SCRIPT = HERE / "_open_clip_embed_peer.py"
OPEN_CLIP_NAME = "ViT-B-32-quickgelu"
TARGET = 1.3  # the issue: >= 1.3x the faster peer on images/s at the same precision and batch size
PARITY_TOLERANCE = 1e-3  # fp32 embeddings of the sides must agree to this (max abs difference)
# OpenAI CLIP ViT-B/32 (quick_gelu, heads of 64) and a tiny model with the same structure for tests
SHAPES = {
    "vit-b-32": {"embed_dim": 512, "image_size": 224, "patch_size": 32, "vision_width": 768, "vision_layers": 12,
                 "vision_heads": 12, "context_length": 77, "vocab_size": 49408, "text_width": 512,
                 "text_layers": 12, "text_heads": 8},
    "tiny": {"embed_dim": 32, "image_size": 32, "patch_size": 8, "vision_width": 64, "vision_layers": 2,
             "vision_heads": 2, "context_length": 16, "vocab_size": 256, "text_width": 64, "text_layers": 2,
             "text_heads": 2},
}


# --- the models ------------------------------------------------------------------------------------------------
def hf_config(shapes: dict[str, int]) -> Any:
    """A transformers ``CLIPConfig``; end-of-text is the largest id, as in OpenAI's tokenizer."""
    import transformers

    vocab = shapes["vocab_size"]
    text = {"vocab_size": vocab, "max_position_embeddings": shapes["context_length"],
            "hidden_size": shapes["text_width"], "intermediate_size": 4 * shapes["text_width"],
            "num_hidden_layers": shapes["text_layers"], "num_attention_heads": shapes["text_heads"],
            "hidden_act": "quick_gelu", "projection_dim": shapes["embed_dim"],
            "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": 0}
    vision = {"image_size": shapes["image_size"], "patch_size": shapes["patch_size"],
              "hidden_size": shapes["vision_width"], "intermediate_size": 4 * shapes["vision_width"],
              "num_hidden_layers": shapes["vision_layers"], "num_attention_heads": shapes["vision_heads"],
              "hidden_act": "quick_gelu", "projection_dim": shapes["embed_dim"]}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=shapes["embed_dim"])


def open_clip_overrides(shape_name: str) -> dict[str, Any]:
    """``create_model`` keyword overrides of ViT-B-32-quickgelu's config for other shapes (none for ViT-B/32)."""
    if shape_name == "vit-b-32":
        return {}
    shapes = SHAPES[shape_name]
    return {"embed_dim": shapes["embed_dim"],
            "vision_cfg": {"image_size": shapes["image_size"], "patch_size": shapes["patch_size"],
                           "width": shapes["vision_width"], "layers": shapes["vision_layers"],
                           "head_width": shapes["vision_width"] // shapes["vision_heads"]},
            "text_cfg": {"context_length": shapes["context_length"], "vocab_size": shapes["vocab_size"],
                         "width": shapes["text_width"], "heads": shapes["text_heads"],
                         "layers": shapes["text_layers"]}}


class LocalSide:
    """One in-process side: a function per modality that embeds the fixed batch to normalised float32 [B, D]."""

    def __init__(self, name: str, embed: dict[str, Callable[[], torch.Tensor]], batch_size: int) -> None:
        self.name, self.embed, self.batch_size = name, embed, batch_size

    def run(self, modality: str, steps: int) -> dict[str, float]:
        return time_steps(self.embed[modality], steps, self.batch_size)

    def embeddings(self) -> dict[str, torch.Tensor]:
        return {modality: self.embed[modality]() for modality in MODALITIES}

    def flops_per_item(self, modality: str) -> float:
        return count_flops(self.embed[modality]) / self.batch_size

    def profile(self, modality: str, steps: int, rows: int) -> dict[str, Any]:
        return profile_steps(self.embed[modality], steps, rows)


class PeerSide:
    """open_clip in the peer venv, with the same interface as ``LocalSide``."""

    name = "open_clip"

    def __init__(self, process: PeerProcess) -> None:
        self.process = process

    def run(self, modality: str, steps: int) -> dict[str, float]:
        return self.process.call("run", modality=modality, steps=steps)

    def embeddings(self) -> dict[str, torch.Tensor]:
        reply = self.process.call("embed")
        return {modality: torch.tensor(reply[modality]) for modality in MODALITIES}

    def flops_per_item(self, modality: str) -> None:
        return None  # FlopCounterMode does not see inside nn.MultiheadAttention's fused inference kernel

    def profile(self, modality: str, steps: int, rows: int) -> dict[str, Any]:
        return self.process.call("profile", modality=modality, steps=steps, rows=rows)


def local_sides(hf_model: Any, native: Any, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> list[LocalSide]:
    """vlmkit's native model (its ``encode_image`` / ``encode_text``) and transformers' ``CLIPModel``
    (``get_image_features`` / ``get_text_features`` under ``torch.no_grad()``, then normalised as vlmkit's are)."""
    images, ids, mask = inputs["images"], inputs["input_ids"], inputs["attention_mask"]
    hf_images = images.to(dtype)

    def pooled(output: Any) -> torch.Tensor:  # transformers 5 returns a model output, 4.x a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def hf_image() -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(pooled(hf_model.get_image_features(pixel_values=hf_images)).float(), dim=-1)

    def hf_text() -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(pooled(hf_model.get_text_features(input_ids=ids, attention_mask=mask)).float(),
                               dim=-1)

    batch = len(ids)
    return [LocalSide("vlmkit", {"image": lambda: native.encode_image(images),
                                 "text": lambda: native.encode_text(ids, mask)}, batch),
            LocalSide("transformers", {"image": hf_image, "text": hf_text}, batch)]


# --- the run -------------------------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every requested precision; returns the JSON-able result."""
    import transformers

    from vlmkit.backends.clip_convert import export_open_clip, native_from_hf

    shape_name = "tiny" if args.tiny else "vit-b-32"
    shapes = SHAPES[shape_name]
    threads = int(args.threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    precisions = list(PRECISIONS) if args.precision == "all" else [args.precision]
    input_spec = {"batch_size": args.batch, "image_size": shapes["image_size"],
                  "context_length": shapes["context_length"], "vocab_size": shapes["vocab_size"], "seed": args.seed,
                  "min_length": min(args.caption_min, shapes["context_length"]),
                  "max_length": min(args.caption_max, shapes["context_length"])}
    inputs = embed_inputs(**input_spec)
    machine = machine_info(threads)
    machine["transformers"] = transformers.__version__
    log(f"machine: {machine['cpu']}, {threads} threads, torch {machine['torch']}, load {machine['load_start']}")
    peaks = {p: matmul_peak(p, args.matmul_size) for p in precisions} if args.matmul_size else {}
    if peaks:
        log("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    lengths = inputs["attention_mask"].sum(1)
    result: dict[str, Any] = {
        "settings": {"shapes": shape_name, "model": shapes, "batch": args.batch, "precisions": precisions,
                     "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
                     "threads": threads, "seed": args.seed, "peer": bool(args.peer_python),
                     "caption_lengths": [int(lengths.min()), int(lengths.max())],
                     "caption_mean": float(lengths.float().mean())},
        "machine": machine, "matmul_peak_flops": peaks, "results": []}
    peer = PeerProcess(args.peer_python, PEER_SCRIPT) if args.peer_python else None
    try:
        with tempfile.TemporaryDirectory(prefix="vlmkit-embed-bench-") as folder:
            torch.manual_seed(args.seed)
            hf_model = transformers.CLIPModel(hf_config(shapes)).eval()
            transformers.utils.logging.disable_progress_bar()
            hf_model.save_pretrained(Path(folder) / "hf")
            native = native_from_hf(Path(folder) / "hf")  # the real conversion path
            result["settings"]["transformers_attention"] = hf_model.config._attn_implementation
            result["settings"]["params"] = sum(p.numel() for p in native.parameters())
            weights = export_open_clip(native, Path(folder) / "open_clip.safetensors") if peer else None
            if peer is not None:
                result["machine"]["peer"] = peer.call("hello")
            for precision in precisions:
                dtype = DTYPES[precision]
                hf_model.to(dtype)
                native.to(dtype)
                sides: list[Any] = local_sides(hf_model, native, inputs, dtype)
                if peer is not None:
                    built = peer.call("build", name=OPEN_CLIP_NAME, overrides=open_clip_overrides(shape_name),
                                      weights=str(weights), precision=precision, threads=threads,
                                      inputs=input_spec)
                    result["settings"]["params_open_clip"] = built["params"]
                    sides.append(PeerSide(peer))
                result["results"].append(measure_precision(precision, sides, args, peaks.get(precision), log))
        result["machine"]["load_end"] = load_average()
    finally:
        if peer is not None:
            peer.close()
    loads = [load[0] for load in (machine["load_start"], machine["load_end"]) if load]
    machine["busy"] = bool(loads) and max(loads) > threads + 1
    result["target"] = {row["precision"]: row["image"]["ratio"] >= TARGET for row in result["results"]}
    return result


def parity(sides: list[Any], precision: str, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Max abs difference of each side's embeddings from vlmkit's; fails loudly in fp32 above the tolerance."""
    embeddings = {side.name: side.embeddings() for side in sides}
    reference = embeddings[sides[0].name]
    diffs = {name: {m: float((e[m] - reference[m]).abs().max()) for m in MODALITIES}
             for name, e in embeddings.items() if name != sides[0].name}
    log(f"[{precision}] max abs diff from vlmkit: " + ", ".join(
        f"{name} images {d['image']:.2e} texts {d['text']:.2e}" for name, d in diffs.items()))
    bad = {name: d for name, d in diffs.items() if max(d.values()) > PARITY_TOLERANCE}
    if precision == "fp32" and bad:
        raise RuntimeError(f"fp32 embeddings differ from vlmkit's by more than {PARITY_TOLERANCE}: {bad}")
    return diffs


def measure_precision(precision: str, sides: list[Any], args: argparse.Namespace, peak: float | None,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Items/s of every side for images then texts, in alternating rounds; parity and FLOPs per item."""
    row: dict[str, Any] = {"precision": precision, "parity": parity(sides, precision, log)}
    for modality in MODALITIES:
        for _ in range(args.warmup):
            for side in sides:
                side.run(modality, 1)
        rates: dict[str, list[float]] = {side.name: [] for side in sides}
        faults: dict[str, list[float]] = {side.name: [] for side in sides}
        for index in range(args.rounds):
            for side in (sides if index % 2 == 0 else sides[::-1]):  # ABBA: a drifting load hits every side
                time.sleep(args.pause)  # let the other process's worker threads go idle
                timing = side.run(modality, args.steps)
                rates[side.name].append(timing["samples_per_s"])
                faults[side.name].append(timing.get("page_faults_per_step", 0))
            log(f"[{precision}] {modality}s round {index + 1}/{args.rounds}: "
                + ", ".join(f"{name} {r[-1]:.1f}" for name, r in rates.items()) + f" /s (load {load_average()[0]})")
        entry: dict[str, Any] = {}
        for side in sides:
            # open_clip computes what transformers computes (the whole context for texts): the same FLOPs
            flops = side.flops_per_item(modality) or entry["transformers"]["flops_per_item"]
            entry[side.name] = {"rounds": rates[side.name], "per_s": statistics.median(rates[side.name]),
                                "best_per_s": max(rates[side.name]), "flops_per_item": flops,
                                "page_faults_per_batch": statistics.median(faults[side.name])}
            if peak:
                entry[side.name]["mfu"] = entry[side.name]["per_s"] * flops / peak
        peers = [side.name for side in sides[1:]]
        faster = max(peers, key=lambda name: entry[name]["per_s"])
        entry["faster_peer"] = faster
        entry["ratio"] = entry[sides[0].name]["per_s"] / entry[faster]["per_s"]
        # each round's segments ran back to back, so their ratio sees nearly the same load
        entry["ratio_paired_median"] = statistics.median(
            ours / max(rates[name][i] for name in peers) for i, ours in enumerate(rates[sides[0].name]))
        row[modality] = entry
    if args.profile:
        row["profile"] = {side.name: side.profile("image", args.profile_steps, args.profile_rows) for side in sides}
    return row


# --- output --------------------------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    names = [name for name in ("vlmkit", "transformers", "open_clip") if name in result["results"][0]["image"]]
    head = ["precision", "per second"] + names + ["vlmkit / faster peer", "per-round pairs"]
    lines = [head]
    for row in result["results"]:
        for modality in MODALITIES:
            entry = row[modality]
            lines.append([row["precision"], f"{modality}s"] + [f"{entry[name]['per_s']:.1f}" for name in names]
                         + [f"{entry['ratio']:.2f}x ({entry['faster_peer']})", f"{entry['ratio_paired_median']:.2f}x"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    table = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines]
    machine, settings = result["machine"], result["settings"]
    notes = [f"CLIP {settings['shapes']} ({settings['params']:,} parameters), batch {settings['batch']}, "
             f"{settings['rounds']} rounds x {settings['steps_per_round']} batches (median), "
             f"{machine['threads']} threads on {machine['cpu']}; bf16 = all weights converted to bfloat16",
             f"torch {machine['torch']}, transformers {machine['transformers']} "
             f"(attention: {settings['transformers_attention']})"
             + (f"; open_clip {machine['peer']['open_clip']} on torch {machine['peer']['torch']}"
                if "peer" in machine else ""),
             f"load average start {machine['load_start']} end {machine.get('load_end')}",
             f"captions {settings['caption_lengths'][0]}-{settings['caption_lengths'][1]} tokens of "
             f"{settings['model']['context_length']}: vlmkit's causal tower stops at the longest, the others run "
             "the whole context; GFLOP per text " + ", ".join(
                 f"{name} {result['results'][0]['text'][name]['flops_per_item'] / 1e9:.3g}" for name in names)
             + ", per image " + f"{result['results'][0]['image']['vlmkit']['flops_per_item'] / 1e9:.3g}"]
    if result["matmul_peak_flops"]:
        notes.append("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in
                                                 result["matmul_peak_flops"].items()) + "; image MFU " + "; ".join(
            f"{row['precision']} " + ", ".join(f"{name} {100 * row['image'][name]['mfu']:.0f}%" for name in names)
            for row in result["results"]))
    for row in result["results"]:
        notes.append(f"[{row['precision']}] max abs diff of embeddings from vlmkit's: " + ", ".join(
            f"{name} images {d['image']:.1e} texts {d['text']:.1e}" for name, d in row["parity"].items()))
        notes.append(f"[{row['precision']}] minor page faults per batch (thousands), images / texts: " + ", ".join(
            f"{name} {row['image'][name]['page_faults_per_batch'] / 1e3:.0f} / "
            f"{row['text'][name]['page_faults_per_batch'] / 1e3:.0f}" for name in names))
    if machine.get("busy"):
        notes.append(f"WARNING: load average above {machine['threads']} + 1: other processes shared the cores; "
                     "trust the per-round pairs more than the medians, or rerun on a quiet machine")
    notes.append(f"Target: >= {TARGET}x the faster peer on images/s at the same precision and batch size "
                 f"(peers measured: {', '.join(names[1:])}): " + ", ".join(
                     f"{precision} {'met' if met else 'NOT met'}" for precision, met in result["target"].items()))
    return "\n".join(table + [""] + notes)


def format_profile(row: dict[str, Any], steps: int, rows: int = 20) -> str:
    """Self CPU ms per batch of the image ops where any side spends the most, side by side."""
    sides = list(row["profile"].items())

    def ms(ops: dict[str, Any], key: str) -> float:
        return ops.get(key, {}).get("self_us", 0) / 1e3 / steps

    keys = sorted({key for _, p in sides for key in p["ops"]}, key=lambda k: -max(ms(p["ops"], k) for _, p in sides))
    lines = [f"[{row['precision']}] images: self CPU ms per batch ({steps} profiled batches)",
             f"{'op':<56}" + "".join(f" {name:>12}" for name, _ in sides)]
    for key in [*keys[:rows], "total"]:
        values = [sum(ms(p["ops"], k) for k in p["ops"]) if key == "total" else ms(p["ops"], key) for _, p in sides]
        lines.append(f"{key[:56]:<56}" + "".join(f" {value:12.1f}" for value in values))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="all", choices=(*PRECISIONS, "all"),
                        help="bf16 converts every side's weights to bfloat16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per modality (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="timed batches per round and side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per side before the rounds")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds of idle before each timed segment")
    parser.add_argument("--caption-min", type=int, default=10, help="shortest caption in tokens (EOT included)")
    parser.add_argument("--caption-max", type=int, default=20, help="longest caption in tokens (at most the "
                                                                    "context: 77 makes every side do the same work)")
    parser.add_argument("--peer-python", default=None,
                        help="interpreter of the venv with open_clip (e.g. .peer-venv/bin/python): adds open_clip")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every side (default: torch's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="matmul peak size (0: skip the peak)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes with the same structure (for tests)")
    parser.add_argument("--profile", action="store_true", help="also profile image batches of every side")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 2 <= args.caption_min <= args.caption_max:
        parser.error("captions need 2 <= --caption-min <= --caption-max tokens")
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
        for row in result["results"] if args.profile else []:
            print("\n" + format_profile(row, args.profile_steps))
            for name, profile in row["profile"].items():
                print(f"\n{name}:\n{profile['table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation speed of a native generative recipe with and without the KV cache (tokens/s).

    python benchmarks/generation_speed.py --recipe llava-tiny --batch 8 --tokens 32 [--rounds 3] [--json]

The model is the recipe's architecture with random weights and a BPE tokenizer trained on a few captions, so the
numbers measure the decoder, not what it says. The prompt is the recipe's image tokens plus a short question.
Each round times greedy decoding of exactly ``--tokens`` new tokens (no stop token) once with the cache and once
without (the whole sequence recomputed at every step); the report gives medians and the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent),) if p not in sys.path]

CAPTIONS = ["a red circle left of a blue square", "two green triangles above a yellow star",
            "what color is the circle?", "there are three shapes"] * 20


def build(recipe: str, overrides: list[str]):
    from vlmkit.config import load_config
    from vlmkit.data import train_bpe
    from vlmkit.registry import build_model, model_class

    config = load_config(recipe, overrides)
    cls = model_class(config["model"]["architecture"])
    tokenizer = train_bpe(CAPTIONS, vocab_size=int(config["tokenizer"]["vocab_size"]), min_frequency=1,
                          special_tokens=getattr(cls, "special_tokens", ()))
    section = getattr(cls, "vocabulary_section", "text")
    config["model"].setdefault(section, {})["vocab_size"] = tokenizer.vocab_size
    torch.manual_seed(0)
    return build_model(config["model"], tokenizer=tokenizer).eval(), config


def time_generation(model, pixels: torch.Tensor, tokens: int, use_cache: bool) -> float:
    from vlmkit.generation import DecodingConfig, DecodingState, generate

    prompts = ["question: what color is the circle? answer:"] * len(pixels)
    ids, mask, _ = model.sequences(prompts, None, left_pad=True)
    with torch.no_grad():
        state = DecodingState(prefix=model.embed(pixels, ids), prefix_mask=mask)
        start = time.perf_counter()
        out = generate(model, state, DecodingConfig(max_new_tokens=tokens, use_cache=use_cache), stop_ids=[-1],
                       pad_id=model.tokenizer.pad_id)
        elapsed = time.perf_counter() - start
    assert all(len(row) == tokens for row in out)
    return len(pixels) * tokens / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="llava-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, config = build(args.recipe, args.overrides)
    if not hasattr(model, "sequences"):
        raise SystemExit(f"{args.recipe} is not a prefix-LM recipe (llava-tiny, blip2-tiny)")
    size = config["model"]["vision"]["image_size"]
    pixels = torch.randn(args.batch, 3, size, size)
    time_generation(model, pixels, 2, True)  # warm-up
    cached, uncached = [], []
    for _ in range(args.rounds):
        cached.append(time_generation(model, pixels, args.tokens, True))
        uncached.append(time_generation(model, pixels, args.tokens, False))
    result = {"recipe": args.recipe, "batch": args.batch, "new_tokens": args.tokens,
              "prefix_length": 1 + model.num_image_tokens + len(model._ids("question: what color is the circle? "
                                                                           "answer:")),
              "tokens_per_s_cache": statistics.median(cached), "tokens_per_s_no_cache": statistics.median(uncached),
              "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "load_average": list(os.getloadavg())}
    result["speedup"] = result["tokens_per_s_cache"] / result["tokens_per_s_no_cache"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.recipe}, batch {args.batch}, {args.tokens} new tokens after a {result['prefix_length']}-position "
              f"prefix, {args.threads} threads, load {result['load_average']}")
        print(f"  with KV cache:    {result['tokens_per_s_cache']:8.1f} tokens/s")
        print(f"  without KV cache: {result['tokens_per_s_no_cache']:8.1f} tokens/s")
        print(f"  speed-up: {result['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The training-throughput benchmark on a tiny model: fields of its JSON, FLOP counting, the batch, the peer."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
TINY = ["--recipe", "clip-tiny", "--set", "model.embed_dim=32", "--set", "tokenizer.vocab_size=128",
        "--set", "model.vision.image_size=32", "--set", "model.vision.width=64", "--set", "model.vision.layers=1",
        "--set", "model.vision.heads=2", "--set", "model.text.context_length=16", "--set", "model.text.width=64",
        "--set", "model.text.layers=1", "--set", "model.text.heads=2", "--batch", "8", "--steps", "1",
        "--rounds", "2", "--warmup", "1", "--pause", "0", "--matmul-size", "256"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_throughput", None)


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def matmul_flops_by_hand(batch: int, text_tokens: int = 16, vision_extra_tokens: int = 0) -> float:
    """TINY's forward + backward matmul FLOPs per sample, counted layer by layer.

    ``text_tokens``: columns of the text tower (vlmkit's causal tower stops at the longest caption).
    """
    width, hidden, embed = 64, 256, 32
    vision_tokens = (32 // 8) ** 2 + vision_extra_tokens  # 16 patches; clip-tiny pools by mean: no class token

    def block(tokens: int) -> float:
        qkv, out = 2 * tokens * width * 3 * width, 2 * tokens * width * width
        mlp = 2 * tokens * width * hidden * 2
        attention = 2 * (2 * tokens * tokens * width)  # QKᵀ and AV over all heads
        return qkv + out + mlp + attention

    projections = 2 * width * embed * 2
    logits = 2 * (2 * batch * embed)  # this sample's row in image->text and text->image logits
    forward = block(vision_tokens) + block(text_tokens) + projections + logits
    patch_embed = 2 * 16 * (3 * 8 * 8) * width
    # backward = 2 x forward (input and weight gradients); the patch convolution only needs its weight gradient
    return 3 * forward + 2 * patch_embed


def test_tiny_run_reports_json_fields_and_flops(bench, capsys):
    assert bench.main([*TINY, "--precision", "fp32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["batch"] == 8 and result["settings"]["precisions"] == ["fp32"]
    assert result["settings"]["rounds"] == 2 and result["settings"]["peer"] is None
    machine = result["machine"]
    assert machine["torch"] == torch.__version__ and machine["threads"] >= 1 and machine["cpu"]
    assert len(machine["load_start"]) == 3 and "load_end" in machine
    assert result["matmul_peak_flops"]["fp32"] > 0
    (row,) = result["results"]
    assert row["precision"] == "fp32" and len(row["ours_rounds"]) == 2
    assert row["ours_samples_per_s"] > 0 and math.isfinite(row["ours_mfu"]) and row["ours_mfu"] > 0
    assert row["ours_mfu"] == pytest.approx(row["ours_samples_per_s"] * row["flops_per_sample"]
                                            / result["matmul_peak_flops"]["fp32"])
    assert result["settings"]["context_length"] == 16
    longest = result["settings"]["longest_caption"]
    assert 4 <= longest <= 16
    by_hand = matmul_flops_by_hand(8, longest)
    assert row["flops_per_sample"] == pytest.approx(by_hand, rel=0.02)
    assert row["flops_per_sample_analytic"] == pytest.approx(by_hand, rel=1e-9)
    assert "ratio" not in row and "target" not in result
    assert row["params_ours"] > 0


def test_table_lists_precision_and_throughput(bench):
    args = bench.parse_args([*TINY, "--precision", "bf16", "--rounds", "1"])
    result = bench.run_benchmark(args)
    (row,) = result["results"]
    longest = result["settings"]["longest_caption"]
    assert row["flops_per_sample"] == pytest.approx(matmul_flops_by_hand(8, longest), rel=0.02)  # same in bf16
    assert set(result["matmul_peak_flops"]) == {"bf16"}
    table = bench.format_table(result)
    assert "ours samples/s" in table and "bf16" in table and "open_clip" not in table.splitlines()[0]


def test_flop_count_includes_fused_attention(bench):
    """CPU attention runs as a fused kernel that FlopCounterMode alone does not count."""
    q = torch.randn(2, 4, 10, 8, requires_grad=True)
    k, v = torch.randn(2, 4, 12, 8, requires_grad=True), torch.randn(2, 4, 12, 8, requires_grad=True)

    def attention():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

    assert bench.count_flops(attention) == 3 * (2 * 2 * 4 * 10 * 12 * (8 + 8))


def test_synthetic_batch_looks_like_captions(bench):
    batch = bench.synthetic_batch(64, 16, 12, 100, seed=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert batch["images"].shape == (64, 3, 16, 16) and ids.shape == mask.shape == (64, 12)
    lengths = mask.sum(1)
    assert lengths.min() >= 3 and lengths.max() <= 12 and len(set(lengths.tolist())) > 1
    assert torch.equal(ids[torch.arange(64), lengths - 1], torch.full((64,), 99))  # EOT, the largest id
    assert torch.equal(ids.argmax(1), lengths - 1)  # open_clip's argmax pooling finds it
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    assert torch.equal(bench.synthetic_batch(64, 16, 12, 100, seed=3)["input_ids"], ids)
    short = bench.synthetic_batch(64, 16, 12, 100, seed=3, max_length=6)["attention_mask"]
    assert short.shape == (64, 12) and short.sum(1).max() <= 6 and not short[:, 6:].any()
    with pytest.raises(ValueError, match="longest caption"):
        bench.synthetic_batch(4, 16, 12, 100, max_length=13)


def test_peer_refuses_models_open_clip_cannot_mirror(bench):
    from vlmkit.config import load_config

    import vlmkit

    model = vlmkit.build_model(bench.model_config(load_config("siglip-tiny", ["model.vision.layers=1",
                                                                              "model.text.layers=1"])))
    with pytest.raises(ValueError, match="cannot mirror"):
        bench.peer_model_spec(model)


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no peer venv at .peer-venv (see benchmarks/README.md)")
def test_peer_runs_alternating_with_ours(bench, capsys):
    assert bench.main([*TINY, "--precision", "all", "--peer", "open_clip", "--peer-python", str(PEER_PYTHON),
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"]["peer"]["open_clip"] and result["machine"]["peer"]["torch"]
    assert set(result["target"]) == {"bf16-mixed >= 1.5x", "fp32 >= 1.0x"}
    for row in result["results"]:
        assert row["params_peer"] == pytest.approx(row["params_ours"], rel=0.03)
        # full context; open_clip's mean pooling keeps its class token in the sequence: one vision token more
        assert row["peer_flops_per_sample"] == pytest.approx(matmul_flops_by_hand(8, vision_extra_tokens=1),
                                                             rel=0.02)
        assert len(row["peer_rounds"]) == 2 and row["peer_samples_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_samples_per_s"] / row["peer_samples_per_s"])
        assert row["peer_mfu"] > 0
    assert [row["peer_precision"] for row in result["results"]] == ["fp32", "amp_bf16", "pure_bf16"]

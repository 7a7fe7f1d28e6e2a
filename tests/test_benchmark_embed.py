"""The embedding-throughput benchmark in its tiny mode: JSON fields, parity of the sides, the table, the peer."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
TINY = ["--tiny", "--batch", "4", "--rounds", "1", "--steps", "1", "--warmup", "0", "--pause", "0",
        "--matmul-size", "128"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("embed_throughput", ROOT / "benchmarks" / "embed_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["embed_throughput"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("embed_throughput", None)


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_run_reports_json_fields(bench, capsys, tmp_path):
    out = tmp_path / "result.json"
    assert bench.main([*TINY, "--precision", "fp32", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    settings, machine = result["settings"], result["machine"]
    assert settings["shapes"] == "tiny" and settings["batch"] == 4 and settings["precisions"] == ["fp32"]
    assert settings["peer"] is False and settings["params"] > 0 and settings["transformers_attention"]
    shortest, longest = settings["caption_lengths"]
    assert 10 <= shortest <= longest <= 16  # 10-20 tokens, capped at the tiny context of 16
    assert machine["torch"] == torch.__version__ and machine["transformers"]
    assert len(machine["load_start"]) == 3 and len(machine["load_end"]) == 3
    assert result["matmul_peak_flops"]["fp32"] > 0
    (row,) = result["results"]
    assert row["precision"] == "fp32"
    assert set(row["parity"]) == {"transformers"}
    assert max(row["parity"]["transformers"].values()) < 1e-5  # the same weights through the real conversion
    for modality in ("image", "text"):
        entry = row[modality]
        for side in ("vlmkit", "transformers"):
            assert len(entry[side]["rounds"]) == 1 and entry[side]["per_s"] > 0
            assert entry[side]["flops_per_item"] > 0 and entry[side]["mfu"] > 0
        assert entry["faster_peer"] == "transformers"
        assert entry["ratio"] == pytest.approx(entry["vlmkit"]["per_s"] / entry["transformers"]["per_s"])
    # one image's patch embedding and blocks are the same work on both sides; vlmkit's causal text tower stops
    # at the longest caption, transformers runs the whole context
    assert row["image"]["vlmkit"]["flops_per_item"] == pytest.approx(row["image"]["transformers"]["flops_per_item"],
                                                                    rel=0.01)
    assert row["text"]["vlmkit"]["flops_per_item"] < row["text"]["transformers"]["flops_per_item"]
    assert set(result["target"]) == {"fp32"} and isinstance(result["target"]["fp32"], bool)


def test_table_has_both_modalities_and_the_target_line(bench):
    result = bench.run_benchmark(bench.parse_args([*TINY, "--precision", "bf16", "--matmul-size", "0"]))
    table = bench.format_table(result)
    assert "images" in table and "texts" in table and "bf16" in table and "transformers" in table.splitlines()[0]
    assert "Target: >= 1.3x the faster peer on images/s at the same precision and batch size" in table
    assert result["matmul_peak_flops"] == {} and "mfu" not in result["results"][0]["image"]["vlmkit"]


def test_inputs_are_captions_with_padding(bench):
    inputs = bench.embed_inputs(8, 32, 77, 49408, seed=1, min_length=10, max_length=20)
    mask, ids = inputs["attention_mask"], inputs["input_ids"]
    lengths = mask.sum(1)
    assert inputs["images"].shape == (8, 3, 32, 32) and ids.shape == mask.shape == (8, 77)
    assert lengths.min() >= 10 and lengths.max() <= 20
    assert torch.equal(ids.argmax(1), lengths - 1) and (ids[~mask] == 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no peer venv at .peer-venv (see benchmarks/README.md)")
def test_peer_embeds_the_same_weights(bench, capsys):
    assert bench.main([*TINY, "--precision", "all", "--peer-python", str(PEER_PYTHON), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["machine"]["peer"]["open_clip"]
    fp32, bf16 = result["results"]
    assert max(fp32["parity"]["open_clip"].values()) < 1e-5
    assert max(bf16["parity"]["open_clip"].values()) < 0.05
    for row in result["results"]:
        assert row["image"]["open_clip"]["per_s"] > 0 and row["text"]["open_clip"]["per_s"] > 0

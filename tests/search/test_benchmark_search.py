"""benchmarks/search_latency.py in its tiny mode: every kind measured, fields present, recall sane."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_search_latency_benchmark(capsys):
    spec = importlib.util.spec_from_file_location("search_latency", ROOT / "benchmarks" / "search_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_latency"] = module
    try:
        spec.loader.exec_module(module)
        report = module.main(["--tiny", "--json"])
    finally:
        sys.modules.pop("search_latency", None)
    assert json.loads(capsys.readouterr().out) == report
    results = {row["kind"]: row for row in report["results"]}
    assert set(results) == {"flat", "ivf", "ivfpq"} and report["dim"] == 32
    assert results["flat"]["recall_at_10"] == 1.0 and results["ivfpq"]["recall_at_10"] >= 0.9
    for row in results.values():
        assert row["size"] == 2000 and row["p99_ms"] >= row["p50_ms"] > 0 and row["rss_growth_bytes"] > 0
        assert row["faiss_bytes"] > 0 and row["build_s"] > 0
    assert results["ivfpq"]["rerank_vectors_bytes"] >= 2000 * 32 * 4
    assert results["ivfpq"]["faiss_bytes"] < results["flat"]["faiss_bytes"]
    assert "| 2,000 | ivfpq |" in module.table(report["results"])
    assert 0 < results["ivf"]["recall_at_10_by_nprobe"]["1"] <= results["ivf"]["recall_at_10"]

"""A bounded load test against a real uvicorn server on 127.0.0.1 (500 text searches at 16 concurrency, zero
errors, stops by itself), the micro-batcher at work under it, and the HTTP latency benchmark in its tiny mode."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from vlmkit.serve import create_app
from vlmkit.serve.runner import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("http_latency", ROOT / "benchmarks" / "http_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["http_latency"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("http_latency", None)


def test_500_searches_at_16_concurrency_without_an_error(bench, clip_model, scene_index):
    app = create_app(clip_model, scene_index, batch_window_ms=5)
    queries = [{"text": text, "k": 10} for text in ("a red circle", "two green triangles", "a blue square",
                                                    "three objects", "a yellow star above a circle")]
    with serve_in_thread(app) as url:
        run = asyncio.run(bench.run_load(url, queries, requests=500, concurrency=16, timeout_s=120))
    summary = bench.summarize([run])
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["requests"] == 500 and summary["p99_ms"] > 0
    batcher = app.state.service.text_batcher
    assert batcher.calls < 500  # concurrent queries shared encode_text calls


def test_load_errors_are_counted_not_raised(bench, clip_model):
    with serve_in_thread(create_app(clip_model, api_key="k")) as url:
        run = asyncio.run(bench.run_load(url, [{"texts": ["a"]}], route="/v1/embed", requests=20, concurrency=4,
                                         timeout_s=60))
        assert run["errors"] == ["401"] * 20 and not run["latencies"]
        good = asyncio.run(bench.run_load(url, [{"texts": ["a"]}], route="/v1/embed", requests=8, concurrency=4,
                                          timeout_s=60, headers={"X-API-Key": "k"}))
    assert not good["errors"] and len(good["latencies"]) == 8


def test_benchmark_tiny_mode_reports_both_settings(bench, capsys):
    assert bench.main(["--tiny", "--json", "--requests", "24"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["tiny"] and result["settings"]["windows_ms"] == [5.0, 0.0]
    assert [row["label"] for row in result["results"]] == ["batched (5 ms window)", "no batching (0 ms)"]
    for row in result["results"]:
        assert row["requests"] == 24 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["throughput_rps"] > 0
    assert result["fastest_p99"] in {row["label"] for row in result["results"]}
    assert bench.table(result).count("\n") >= 4

"""benchmarks/lit_vs_scratch.py's evaluation on a tiny trained model: every phrasing, both tasks, the table."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lit_vs_scratch", ROOT / "benchmarks" / "lit_vs_scratch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lit_vs_scratch"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("lit_vs_scratch", None)


def test_evaluate_and_table(bench, tiny_run, heldout_data):
    import vlmkit

    samples, metas = bench.heldout_samples(heldout_data)
    results = bench.evaluate(vlmkit.load(tiny_run), samples, metas)
    for condition in bench.CONDITIONS:
        zeroshot, retrieval = results["zeroshot"][condition], results["retrieval"][condition]
        assert 0 <= zeroshot["acc1"] <= zeroshot["acc5"] <= 1 and zeroshot["num_images"] == 40
        assert retrieval["num_images"] == 80 and retrieval["num_texts"] == 160
        assert 0 <= retrieval["image_retrieval_recall@1"] <= retrieval["image_retrieval_recall@10"] <= 1
    assert "crimson" in results["zeroshot"]["unseen_words"]["example"]
    report = {"models": {"clip-tiny": {"training": {"steps": 6, "seconds": 1.0, "samples_per_s": 96.0,
                                                    "precision": "fp32", "final_loss": 2.0},
                                       "eval": results}},
              "chance": {"zeroshot_acc1": 1 / 30, "retrieval_recall@1": 1 / 80}}
    table = bench.format_table(report)
    assert "zero-shot top-1, unseen templates + synonyms" in table and "text->image R@10, training phrasing" in table
    assert 0 <= results["text_agreement"]["seen"] <= 1 and "color right" in table

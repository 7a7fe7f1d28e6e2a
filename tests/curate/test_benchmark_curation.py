"""benchmarks/curation.py --tiny: the whole benchmark (noisy pool, scorer, curation, two trainings, evaluation)
runs and reports raw vs curated, per-stage precision/recall and executor speed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_curation_benchmark_tiny(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import curation
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = curation.main(["--tiny", "--workdir", str(tmp_path), "--executors", "local", "--json",
                            "--out", str(tmp_path / "result.json")])
    printed = capsys.readouterr().out  # training may print a line about the pool's corrupt samples first
    assert json.loads(printed[printed.index("{\n"):]) == json.loads((tmp_path / "result.json").read_text())
    for name in ("raw", "curated"):
        assert set(report[name]) >= {"zeroshot_acc1", "t2i_r1", "i2t_r1", "pool_size", "steps"}
    assert report["raw"]["pool_size"] == 160 > report["curated"]["pool_size"] > 0
    assert report["stages"]["decodable"] == {"targets": ["corrupt"], "dropped": 2, "precision": 1.0, "recall": 1.0}
    assert report["stages"]["exact_dedup"]["precision"] == 1.0
    assert report["executors"]["local"]["samples_per_s"] > 0 and isinstance(report["curated_wins"], bool)

"""benchmarks/batch_throughput.py --tiny: both local worker settings run, write the same ids and vectors."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_batch_throughput_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("batch_throughput", ROOT / "benchmarks" / "batch_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--tiny", "--workers", "0,1", "--batch-size", "16", "--workdir", str(tmp_path), "--json"])
    assert [run["images"] for run in report["runs"]] == [60, 60]
    assert all(run["same_ids_as_first"] and run["max_abs_diff_vs_first"] < 1e-5 for run in report["runs"])
    assert all(run["images_per_s"] > 0 for run in report["runs"])

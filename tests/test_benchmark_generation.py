"""benchmarks/generation_speed.py runs and reports tokens/s with and without the KV cache (tiny shapes)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "generation_speed.py"


def test_generation_speed_benchmark_reports_both_modes():
    tiny = ["model.vision.image_size=16", "model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2",
            "model.language.width=32", "model.language.layers=1", "model.language.heads=2", "tokenizer.vocab_size=300"]
    command = [sys.executable, str(SCRIPT), "--batch", "2", "--tokens", "3", "--rounds", "1", "--threads", "1",
               "--json"] + [item for value in tiny for item in ("--set", value)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["tokens_per_s_cache"] > 0 and result["tokens_per_s_no_cache"] > 0
    assert result["new_tokens"] == 3 and result["prefix_length"] > 4

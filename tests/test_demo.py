"""The demo job end to end at a tiny scale (the real one is `make demo`)."""
import json
from pathlib import Path

from vlmkit.demo import run_demo


def test_demo_writes_results_and_plots(tmp_path, tiny_overrides, capsys):
    results = run_demo(tmp_path / "demo", minutes=0.1, train_size=160, eval_size=60,
                       overrides=tiny_overrides + ["train.log_every=2"])
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["zeroshot"]["task"] == "zeroshot_classification"
    assert set(saved["zeroshot"]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert "image_retrieval_recall@10" in saved["retrieval"]["metrics"]
    assert saved["chance"]["zeroshot_acc1"] == 1 / 30
    for path in saved["paths"].values():
        assert (tmp_path / "demo").exists() and __import__("pathlib").Path(path).exists(), path
    out = capsys.readouterr().out
    assert "zero-shot top-1" in out and "text->image R@1" in out
    assert results["training"]["steps"] >= 1
    from vlmkit.search import SearchIndex

    index = SearchIndex.open(tmp_path / "demo" / "index")
    assert index.count == saved["index"]["images"] == 60 and "vlmkit serve --model" in saved["serve"]
    assert Path(index.model_spec) == Path(saved["paths"]["model"]).resolve()  # queries use the demo's model

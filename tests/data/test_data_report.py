"""BadSampleReport: counting, examples, merge, batches, summary, JSON."""
from __future__ import annotations

import json

from vlmkit.data import BadSampleReport


def test_empty_report():
    report = BadSampleReport()
    assert not report
    assert report.summary() == "no bad samples"
    assert report.total_skipped == 0 and report.total_converted == 0


def test_summary_lists_reasons_by_count_with_examples():
    report = BadSampleReport()
    report.skip("corrupt_image", "k1")
    report.skip("corrupt_image", "k2")
    report.skip("missing_file", "k3")
    report.convert("cmyk", "k4")
    for key in ("k5", "k6", "k7"):
        report.convert("palette", key)
    assert report
    assert report.summary() == ("skipped 3 samples: corrupt_image 2 (e.g. k1, k2), "
                                "missing_file 1 (e.g. k3); converted 4: palette 3, cmyk 1")


def test_examples_are_capped_at_five_and_deduplicated():
    report = BadSampleReport()
    for number in range(9):
        report.skip("truncated_image", f"k{number}")
    report.skip("truncated_image", "k0")
    assert report.skipped["truncated_image"] == 10
    assert report.skipped_examples["truncated_image"] == ["k0", "k1", "k2", "k3", "k4"]


def test_update_from_batch_and_merge():
    first, second = BadSampleReport(), BadSampleReport()
    first.update_from_batch({"bad": [("a", "empty_file")], "converted": [("b", "alpha")]})
    second.update_from_batch({"bad": [("c", "empty_file"), ("d", "too_large")],
                              "converted": []})
    second.update_from_batch({"images": None})  # keys absent: nothing recorded, no error
    first.merge(second)
    assert first.skipped == {"empty_file": 2, "too_large": 1}
    assert first.skipped_examples["empty_file"] == ["a", "c"]
    assert first.total_skipped == 3 and first.total_converted == 1


def test_as_dict_is_json_and_round_trips():
    report = BadSampleReport()
    report.skip("empty_caption", "x")
    report.convert("non_utf8", "y")
    data = json.loads(json.dumps(report.as_dict()))
    assert data["skipped"] == {"empty_caption": 1} and data["total_converted"] == 1
    assert BadSampleReport.from_dict(data).summary() == report.summary()


def test_single_sample_wording():
    report = BadSampleReport()
    report.skip("missing_file")
    assert report.summary() == "skipped 1 sample: missing_file 1"

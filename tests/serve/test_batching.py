"""The micro-batcher: concurrent requests share one call, within the window and the batch size; errors reach
every waiting request; window 0 turns batching off."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
import pytest

from vlmkit.serve.batching import MicroBatcher


class Recorder:
    """A batched function ``texts -> [len, 2]`` (length and first letter code) that records its calls."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        if self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        time.sleep(0.005)
        return np.array([[len(text), ord(text[0])] for text in texts], dtype=np.float32)


def run_concurrently(batcher: MicroBatcher, requests: list[list[str]]) -> list:
    async def main():
        results = await asyncio.gather(*(batcher.run(texts) for texts in requests), return_exceptions=True)
        await batcher.close()
        return results

    return asyncio.run(main())


@pytest.fixture()
def executor():
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def test_concurrent_requests_share_one_call_and_get_their_own_rows(executor):
    function = Recorder()
    batcher = MicroBatcher(function, executor, window_ms=20, max_batch=64)
    requests = [["a" * (index + 1)] for index in range(10)] + [["bb", "ccc"]]
    results = run_concurrently(batcher, requests)
    assert batcher.calls == 1 and len(function.batches) == 1 and len(function.batches[0]) == 12
    for texts, rows in zip(requests, results):
        np.testing.assert_array_equal(rows, function(texts))


def test_batches_are_cut_at_max_batch_without_splitting_a_request(executor):
    function = Recorder()
    batcher = MicroBatcher(function, executor, window_ms=50, max_batch=4)
    requests = [["x1", "x2", "x3"], ["y1", "y2"], ["z1"], ["w1", "w2", "w3", "w4", "w5"]]
    results = run_concurrently(batcher, requests)
    assert [len(batch) for batch in function.batches] == [3, 3, 5]  # 3 | 2+1 | 5 (too big for any batch: alone)
    assert [len(rows) for rows in results] == [3, 2, 1, 5]


def test_window_zero_calls_once_per_request(executor):
    function = Recorder()
    batcher = MicroBatcher(function, executor, window_ms=0)
    results = run_concurrently(batcher, [["a"], ["bb"], ["ccc"]])
    assert batcher.calls == 3 and sorted(map(len, function.batches)) == [1, 1, 1]
    assert [float(rows[0, 0]) for rows in results] == [1.0, 2.0, 3.0]


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on(executor):
    function = Recorder(fail_on="bad")
    batcher = MicroBatcher(function, executor, window_ms=20)

    async def main():
        first = await asyncio.gather(batcher.run(["ok"]), batcher.run(["bad"]), return_exceptions=True)
        second = await batcher.run(["fine"])
        await batcher.close()
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(result, ValueError) for result in first)
    assert second.shape == (1, 2)


def test_a_lone_request_waits_at_most_about_the_window(executor):
    batcher = MicroBatcher(Recorder(), executor, window_ms=30)

    async def main():
        started = time.perf_counter()
        await batcher.run(["a"])
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert 0.025 <= asyncio.run(main()) < 1.0


def test_bad_settings_are_refused(executor):
    with pytest.raises(ValueError, match="window"):
        MicroBatcher(Recorder(), executor, window_ms=-1)
    with pytest.raises(ValueError, match="batch"):
        MicroBatcher(Recorder(), executor, max_batch=0)

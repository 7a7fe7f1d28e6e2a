"""Micro-batching: concurrent requests that each need one row of a batched function share one call.

The service's text requests (``/v1/embed`` with texts, text ``/v1/search``) each need ``encode_text`` of one or a
few strings; on a CPU one call for 16 strings costs little more than a call for one, so gathering the requests
that arrive within a few milliseconds pays under load (``benchmarks/http_latency.py`` measures it).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Any, Callable, Sequence



@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    arrived: float  # the event loop's clock


class MicroBatcher:
    """Gathers calls of ``function(items) -> rows`` (an array or a list, one row per item) for up to ``window_ms``
    into one call.

    ``await batcher.run(items)`` gives the rows of ``function`` for ``items``. The first request of a batch waits at
    most ``window_ms`` for company; a batch is cut at ``max_batch`` items (a request is never split, so a single
    request larger than ``max_batch`` runs alone). Requests that arrive while a batch is being computed join the
    next one. ``function`` runs on ``executor`` (the service's model thread), never on the event loop.
    ``window_ms=0`` turns batching off: each request is its own call.
    """

    def __init__(self, function: Callable[[list[Any]], Sequence[Any]], executor: concurrent.futures.Executor, *,
                 window_ms: float = 5.0, max_batch: int = 64) -> None:
        if window_ms < 0:
            raise ValueError(f"the batch window must be >= 0 ms, not {window_ms}")
        if max_batch < 1:
            raise ValueError(f"the largest batch must be >= 1, not {max_batch}")
        self.function, self.executor = function, executor
        self.window_s, self.max_batch = window_ms / 1000.0, max_batch
        self.calls = 0  # how many times ``function`` ran: the batching the service did, for tests and benchmarks
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()  # the queue is not empty
        self._full = asyncio.Event()  # the queue holds at least max_batch items
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, items: Sequence[Any]) -> Sequence[Any]:
        """The rows of ``function(items)``, computed alone or together with concurrent requests."""
        items = list(items)
        loop = asyncio.get_running_loop()
        if self.window_s == 0:
            self.calls += 1
            return await loop.run_in_executor(self.executor, self.function, items)
        self._bind(loop)
        pending = _Pending(items, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._queued_items += len(items)
        self._arrived.set()
        if self._queued_items >= self.max_batch:
            self._full.set()
        return await pending.future

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the gathering task on this event loop (again, when a new loop serves the app, as in tests)."""
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._loop, self._arrived, self._full = loop, asyncio.Event(), asyncio.Event()
        self._queue, self._queued_items = collections.deque(), 0
        self._worker = loop.create_task(self._gather(), name="vlmkit-micro-batcher")

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            # The window runs from the oldest request's arrival: requests that queued during the previous
            # computation have waited already.
            remaining = self._queue[0].arrived + self.window_s - loop.time()
            if remaining > 0 and self._queued_items < self.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            batch = self._take_batch()
            if not self._queue:
                self._arrived.clear()
            await self._compute(batch)

    def _take_batch(self) -> list[_Pending]:
        """Whole requests from the queue's front, up to ``max_batch`` items (at least one request)."""
        batch, size = [], 0
        while self._queue and (not batch or size + len(self._queue[0].items) <= self.max_batch):
            pending = self._queue.popleft()
            batch.append(pending)
            size += len(pending.items)
        self._queued_items -= size
        if self._queued_items < self.max_batch:
            self._full.clear()
        return batch

    async def _compute(self, batch: list[_Pending]) -> None:
        live = [pending for pending in batch if not pending.future.done()]  # a cancelled request needs no rows
        if not live:
            return
        items = [item for pending in live for item in pending.items]
        self.calls += 1
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self.executor, self.function, items)
        except Exception as error:  # noqa: BLE001 - each waiting request gets the error, the batcher goes on
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        start = 0
        for pending in live:
            if not pending.future.done():
                pending.future.set_result(rows[start:start + len(pending.items)])
            start += len(pending.items)

    async def close(self) -> None:
        """Stop the gathering task (the app's shutdown); queued requests fail with CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.cancel()
        self._queue, self._queued_items, self._worker = collections.deque(), 0, None

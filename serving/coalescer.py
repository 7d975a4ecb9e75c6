"""Coalescing of concurrent engine calls: the batching behind /v1/profile and /v1/score (`serving.service`).

Concurrent /v1/profile and /v1/score requests are coalesced: while one batch is being answered, new requests queue,
and the next batch takes all of them, so they share one online-store read (and, for what must be computed again, one
call per model; see `Coalescer`). Batches grow with load and add no waiting when idle. This is BentoML's adaptive
batching without its HTTP round trip through a batchable API (a JSON encode and decode of every profile) and without
its 503 when a batch misses `max_latency_ms`.

Where a batch runs: on the event loop itself (`executor=None`, what the service does for profiles), or on an
executor's thread. A profile is mostly a read of what batch computed (~0.4 ms), and handing it to a thread costs more
than that under load: the engine thread and the event loop take turns on the GIL, and a thread that wants it back
waits up to the interpreter's switch interval (5 ms) at every read (measured on 2 cores, 16 clients: 424 requests/s
with the thread, ~3x that on the loop). A slow store then holds the loop for at most its timeout
(`serving.store_timeout_seconds`), after which the engine's circuit breaker answers at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable

COALESCE_MAX = 64  # customers per engine call when requests are coalesced; bounds one batch's latency
# Under load, how long a batch may wait for more clients (see Coalescer): none. It paid when an engine call scored
# every persona (~13 ms a call whatever its size); a profile is now mostly a read of what batch computed (~0.4 ms a
# call, ~0.1 ms a persona), so a wait only adds latency. Batches still form by themselves: the requests that arrive
# while a batch runs are the next batch.
COALESCE_WINDOW_S = 0.0


class Coalescer:
    """Concurrent calls of `run(items)` share one call of `run` on the engine thread: see the module docstring.

    Each call's items stay together and in order; a batch holds at most `max_items` unless one call alone is larger.
    An exception of the shared call is raised in every call of the batch. `observe`, if given, is told the size of
    each batch (the service's histogram of customers per engine call).

    With `window_s` > 0, under load a batch waits up to that long for the clients the previous batch just answered to
    send their next request, so the two halves of the traffic do not alternate in half-size batches: worth it only
    when an engine call has a large fixed cost (it had when every request scored everything: 16 clients on 2
    workers, 330 -> 495 requests/s with 10 ms). An idle service (previous batch of one) never waits.
    """

    def __init__(self, run: Callable[[list], list], executor: concurrent.futures.Executor | None, max_items: int,
                 window_s: float = COALESCE_WINDOW_S, observe: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.executor = executor
        self.max_items = max_items
        self.window_s = window_s
        self.observe = observe
        self._queue: collections.deque = collections.deque()
        self._task: asyncio.Task | None = None
        self._last = 0  # items in the previous batch

    async def __call__(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.append((items, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await done

    def _queued(self) -> int:
        return sum(len(items) for items, _ in self._queue)

    async def _drain(self) -> None:
        # On the loop (`executor=None`) no request can arrive while a batch runs: those the server read meanwhile reach
        # the queue on the next turns of the loop, before this task (or the next one) takes a batch.
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._last > 1 and self.window_s > 0:
                expected = min(self.max_items, self._last + self._queued())
                deadline = loop.time() + self.window_s
                while self._queued() < expected and loop.time() < deadline:
                    await asyncio.sleep(self.window_s / 8)
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_items):
                items, done = self._queue.popleft()
                if done.cancelled():  # the client went away while queued
                    continue
                batch.append((items, done))
                size += len(items)
            self._last = size
            if not batch:
                continue
            flat = [x for items, _ in batch for x in items]
            if self.observe is not None:
                self.observe(len(flat))
            try:
                if self.executor is None:
                    results = self.run(flat)
                else:
                    results = await loop.run_in_executor(self.executor, self.run, flat)
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            at = 0
            for items, done in batch:
                if not done.done():
                    done.set_result(results[at:at + len(items)])
                at += len(items)
        self._last = 0

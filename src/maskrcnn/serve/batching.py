"""Dynamic batching: one worker thread owns the model and runs queued requests in batches.

Requests are grouped by a key (the padded input size: images of one padded size make one
tensor without extra padding). The worker takes the group of the oldest waiting request and runs
it when it holds ``max_batch`` requests or when that oldest request has waited ``wait_s``
seconds, whichever comes first; so a lone request waits at most ``wait_s`` and concurrent ones of
one size run together. The queue is bounded: :meth:`Batcher.submit` raises :class:`QueueFull`
when ``max_queue`` requests are waiting (the HTTP layer answers 503 with ``Retry-After``), and
:class:`Draining` after :meth:`Batcher.close`, which runs everything already queued, then stops.

The batcher knows nothing of models: ``run_batch(items) -> results`` (one result per item, in
order) is called on the worker thread only, so a model that is not thread-safe is safe here.
A batch that raises is retried item by item, so one failing request does not fail the others.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batcher", "QueueFull", "Draining"]

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests; try again later."""


class Draining(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Job(Generic[T]):
    key: Hashable
    item: T
    queued_at: float
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher(Generic[T, R]):
    """Runs ``run_batch`` on batches of same-key items on one worker thread.

    Args:
        run_batch: items -> results (same length and order); called on the worker thread only.
        max_batch: most items per call.
        wait_s: how long the oldest waiting item may wait for others of its key.
        max_queue: most items waiting (not yet running); more raise :class:`QueueFull`.
        on_batch: called on the worker thread after each batch with ``(size, seconds)``.
        on_depth: called with the number of waiting items whenever it changes.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], *, max_batch: int = 8, wait_s: float = 0.005,
                 max_queue: int = 64, on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, name: str = "maskrcnn-serve-model") -> None:
        if max_batch < 1 or max_queue < 1 or wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._cond = threading.Condition()
        self._groups: dict[Hashable, collections.deque[_Job[T]]] = {}
        self._waiting = 0
        self._running = 0
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ state
    @property
    def waiting(self) -> int:
        """Items queued and not yet running."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Items queued or running."""
        return self._waiting + self._running

    @property
    def alive(self) -> bool:
        """True while the worker thread runs and new items are taken."""
        return self._thread.is_alive() and not self._closing

    # ------------------------------------------------------------------ submitting
    def submit(self, key: Hashable, item: T) -> concurrent.futures.Future:
        """Queue ``item`` under ``key``; a future of its result. Raises :class:`QueueFull` or :class:`Draining`."""
        job: _Job[T] = _Job(key, item, time.monotonic())
        with self._cond:
            if self._closing:
                raise Draining("the server is shutting down")
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting (the limit is {self.max_queue})")
            self._groups.setdefault(key, collections.deque()).append(job)
            self._waiting += 1
            depth = self._waiting
            self._cond.notify()
        self._report_depth(depth)
        return job.future

    async def run(self, key: Hashable, item: T) -> R:
        """``await`` the result of ``item`` (cancelling the await drops it if it has not started)."""
        return await asyncio.wrap_future(self.submit(key, item))

    # ------------------------------------------------------------------ stopping
    def close(self, timeout: float | None = None) -> bool:
        """Take no new items, run the queued ones, stop the worker; False when it is still
        running after ``timeout`` seconds."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker
    def _report_depth(self, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(depth)

    def _next_batch(self) -> list[_Job[T]] | None:
        """Block until a batch is due; None when closed and empty."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                key, queue = min(((k, q) for k, q in self._groups.items() if q), key=lambda kq: kq[1][0].queued_at)
                due = queue[0].queued_at + self.wait_s
                now = time.monotonic()
                if len(queue) >= self.max_batch or now >= due or self._closing:
                    jobs = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                    if not queue:
                        del self._groups[key]
                    self._waiting -= len(jobs)
                    self._running = len(jobs)
                    depth = self._waiting
                    break
                self._cond.wait(due - now)
        self._report_depth(depth)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._next_batch()) is not None:
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self._run(live)
            finally:
                with self._cond:
                    self._running = 0

    def _run(self, jobs: list[_Job[T]]) -> None:
        """One model call on ``jobs``; the batch is counted (``on_batch``) before any request gets
        its result, so a client never sees its answer before the metrics include its batch."""
        start = time.perf_counter()
        try:
            results = list(self.run_batch([j.item for j in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} items")
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:  # find the item that fails; the others still get their results
                self._run([job])
            return
        if self._on_batch is not None:
            self._on_batch(len(jobs), time.perf_counter() - start)
        for job, result in zip(jobs, results):
            job.future.set_result(result)


"""How many CPU threads torch trains with: 1 or ``max_threads``, whichever is faster right now.

On a machine shared with other busy processes, OpenMP threads that wait for each other can
make a training step 10-30 times slower than one thread (measured: 15 s instead of 0.5 s);
on an idle machine ``max_threads`` is faster. A whole training step is too expensive a probe,
so the choice comes from a micro-benchmark (ten small convolutions with 1, ``max_threads``,
then 1 thread again: ~40 ms on an idle machine, under a second on a busy one):
``max_threads`` is used when it is at least 25 % faster. The check runs before the first
step, every ``every_s`` seconds while ``max_threads`` wins (the interval doubles, up to
4 x ``every_s``, while it loses), and at once when a ``max_threads`` step takes over twice
the recent median (someone else started working). :class:`maskrcnn.engine.hooks.ThreadTuning`
runs it in the training loop.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

__all__ = ["ThreadTuner"]


class ThreadTuner:
    """Trains with 1 torch thread or ``max_threads``, whichever is faster right now (see the module doc).

    Attributes:
        current: the thread count in use.
        checks: ``(step, threads chosen, ms with 1 thread, ms with max_threads)`` of every check.
        steps_per_threads: optimizer steps run with each thread count.
    """

    def __init__(self, max_threads: int, every_s: float = 20.0) -> None:
        self.max_threads = max(1, int(max_threads))
        self.every_s = every_s
        self.interval = every_s
        self.current = 0
        self.times: list[float] = []
        self.steps = 0
        self.next_check = 0.0
        self.checks: list[tuple[int, int, float, float]] = []
        self.steps_per_threads: dict[int, int] = {}
        g = torch.Generator().manual_seed(0)
        self._x = torch.randn(2, 16, 64, 64, generator=g)
        self._w = torch.randn(16, 16, 3, 3, generator=g)
        self._set(1)

    def _set(self, n: int) -> None:
        if n != self.current:
            self.current = n
            torch.set_num_threads(n)
            self.times.clear()

    def _bench(self, n: int, reps: int = 10) -> float:
        torch.set_num_threads(n)
        with torch.no_grad():
            F.conv2d(self._x, self._w, padding=1)
            t = time.perf_counter()
            for _ in range(reps):
                F.conv2d(self._x, self._w, padding=1)
            return time.perf_counter() - t

    def check(self) -> int:
        """Run the micro-benchmark and switch to the faster setting; returns the thread count."""
        if self.max_threads == 1:
            self._set(1)
            return 1
        t1 = self._bench(1)
        tn = self._bench(self.max_threads)
        t1 = min(t1, self._bench(1))
        best = self.max_threads if tn < 0.75 * t1 else 1
        self.current = 0  # force set_num_threads (the benchmark changed it)
        self._set(best)
        self.checks.append((self.steps, best, round(t1 * 1e3, 1), round(tn * 1e3, 1)))
        self.interval = self.every_s if best > 1 else min(2 * self.interval, 4 * self.every_s)
        self.next_check = time.perf_counter() + self.interval
        return best

    def update(self, seconds: float, now: float) -> None:
        """Record one training step of ``seconds`` ending at ``now`` (perf_counter); maybe re-check."""
        self.steps += 1
        self.steps_per_threads[self.current] = self.steps_per_threads.get(self.current, 0) + 1
        hist = self.times
        hist.append(seconds)
        del hist[:-6]
        med = sorted(hist[:-1])[(len(hist) - 1) // 2] if len(hist) > 1 else float("inf")
        spike = self.current > 1 and len(hist) >= 4 and seconds > 2.0 * med
        if spike or now >= self.next_check:
            self.check()

    def summary(self) -> str:
        """``"2 threads: 800 steps, 1 thread: 300 steps"``."""
        return ", ".join(f"{n} thread{'s' if n > 1 else ''}: {k} steps"
                         for n, k in sorted(self.steps_per_threads.items(), reverse=True))

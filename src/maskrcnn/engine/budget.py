"""A wall-clock training budget (``Config.max_train_minutes``).

Users on a CPU or a shared GPU often know how long they can train, not how many epochs fit. With
a budget the trainer

* measures each optimizer step (the median of the last 20, so one slow step does not move it),
* re-fits the learning-rate schedule after every step to end at the step the remaining time
  allows (a cosine schedule reaches its minimum when the budget does; step milestones fall at
  their fractions of the fitted run), never longer than ``epochs`` would take, and
* ends after the step that finishes closest to the budget, then validates and saves as at the end
  of a normal run.

The time spent is kept in checkpoints, so a resumed run only gets what is left. The fitted
schedule depends on measured step times, so a budgeted run is not bit-reproducible; a
``max_steps`` budget (tests, experiments) is.
"""

from __future__ import annotations

import math
import statistics
import time

__all__ = ["TimeBudget"]


class TimeBudget:
    """When to stop training and how many optimizer steps are left.

    Args:
        seconds: the budget. Everything from :meth:`start` on counts: steps, data loading, and
            validations between epochs (final validation and the last checkpoint come after).
        spent: seconds already used by earlier runs of the same training (see :meth:`resume_from`).
        max_steps: stop after this many steps of this object instead, whatever the time.
    """

    def __init__(self, seconds: float, spent: float = 0.0, max_steps: int | None = None) -> None:
        if not seconds > 0:
            raise ValueError(f"budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.spent_before = float(spent)
        self.max_steps = max_steps
        self.step_times: list[float] = []
        self._t0 = time.perf_counter()

    def resume_from(self, state: dict | None) -> None:
        """Continue a budget from :meth:`state` of an earlier run (time spent, step duration)."""
        state = state or {}
        self.spent_before = float(state.get("spent_s") or 0.0)
        if state.get("step_s"):
            self.step_times = [float(state["step_s"])]

    def state(self) -> dict:
        """JSON-serialisable progress: seconds spent and the typical step duration."""
        return {"spent_s": self.elapsed, "step_s": self.step_seconds() if self.step_times else None}

    def start(self) -> None:
        """Start (or restart) the clock; call right before the first step."""
        self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds of the budget used so far, earlier runs included."""
        return self.spent_before + time.perf_counter() - self._t0

    @property
    def remaining(self) -> float:
        """Seconds left (0 when spent)."""
        return max(0.0, self.seconds - self.elapsed)

    def step_done(self, seconds: float) -> None:
        """Record the duration of the optimizer step that just ended."""
        self.step_times.append(float(seconds))

    def step_seconds(self) -> float:
        """The typical step duration: median of the last 20 steps (inf before the first)."""
        return statistics.median(self.step_times[-20:]) if self.step_times else float("inf")

    def steps_left(self) -> int:
        """Optimizer steps that still fit after the ones recorded: the next step is taken when it
        ends at most half a (median) step past the budget. Before the first step: 1 while time is left."""
        if self.max_steps is not None:
            return max(0, self.max_steps - len(self.step_times))
        if not self.step_times:
            return 0 if self.remaining <= 0 else 1
        # continue while the next step ends at most half a step past the budget
        return max(0, math.ceil(round(self.remaining / self.step_seconds() + 0.5, 9)) - 1)  # round: minutes * 60 is inexact

    def exhausted(self) -> bool:
        """True when the next step would end more than half a step past the budget."""
        return self.steps_left() == 0

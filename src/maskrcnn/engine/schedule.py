"""Learning-rate schedules defined per optimizer step.

The run length is a number of epochs (passes over the data); the trainer turns it into a number
of optimizer steps (``total_steps``) once the epoch lengths are known, and the schedule is a pure
function of the optimizer step index ``s`` (0-based)::

    lr(s) = base_lr * warmup(s) * decay(s)

    warmup(s) = warmup_factor + (1 - warmup_factor) * s / warmup_iters   for s < warmup_iters, else 1
    decay(s)  = lr_gamma ** #{m in milestones : m <= s}                  (step;
                milestones = round(f * total_steps) for f in lr_steps)
              = 0.5 * (1 + cos(pi * s / total_steps))                    (cosine)
              = 1                                                        (constant)

The state is a single integer (the next step), so it is stored in JSON without pickle.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config

__all__ = ["LRSchedule", "WarmupScheduler", "build_scheduler"]


@dataclass(frozen=True)
class LRSchedule:
    """The multiplier of the base learning rate as a function of the optimizer step."""

    total_steps: int
    kind: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0

    @classmethod
    def from_config(cls, config: Config, total_steps: int) -> "LRSchedule":
        """The schedule of ``config`` for a run of ``total_steps`` optimizer steps."""
        total_steps = max(1, int(total_steps))
        milestones = tuple(sorted(int(round(f * total_steps)) for f in config.lr_steps))
        return cls(
            total_steps=total_steps,
            kind=config.lr_schedule,
            milestones=milestones if config.lr_schedule == "step" else (),
            gamma=config.lr_gamma,
            warmup_iters=max(0, config.warmup_iters),
            warmup_factor=config.warmup_factor,
        )

    def warmup(self, step: int) -> float:
        """Linear warmup multiplier at ``step``."""
        if step >= self.warmup_iters:
            return 1.0
        alpha = step / self.warmup_iters
        return self.warmup_factor + (1.0 - self.warmup_factor) * alpha

    def decay(self, step: int) -> float:
        """Multiplier of the schedule after warmup at ``step``."""
        if self.kind == "step":
            return self.gamma ** bisect_right(self.milestones, step)
        if self.kind == "cosine":
            progress = min(step, self.total_steps) / self.total_steps
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
        return self.warmup(step) * self.decay(step)


class WarmupScheduler:
    """Sets the learning rate of every parameter group from an :class:`LRSchedule`.

    Call :meth:`step` after each ``optimizer.step()``; the rate applied to optimizer step ``s`` is
    ``group["initial_lr"] * schedule.factor(s)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.next_step = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def _apply(self) -> None:
        f = self.schedule.factor(self.next_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        """Advance to the next optimizer step."""
        self.next_step += 1
        self._apply()

    def set_schedule(self, schedule: LRSchedule) -> None:
        """Continue from the current step on another schedule (a time budget re-fits the run length)."""
        self.schedule = schedule
        self._apply()

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each parameter group."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.next_step = int(state["next_step"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, total_steps: int) -> WarmupScheduler:
    """The scheduler of ``config`` for ``total_steps`` optimizer steps."""
    return WarmupScheduler(optimizer, LRSchedule.from_config(config, total_steps))

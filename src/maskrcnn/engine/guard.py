"""Stop a run at the first NaN/Inf loss or gradient, saying which term, where, and why it may be.

The trainer checks every step's loss terms (after the all-reduce under DDP, so every rank stops
together) and the global gradient norm. Nothing is saved after a non-finite value, so the last
good checkpoint is never overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..errors import MaskRCNNError

__all__ = ["NonFiniteLossError", "find_nonfinite", "nonfinite_message", "check_losses"]


class NonFiniteLossError(MaskRCNNError, FloatingPointError):
    """A loss term or the gradient became NaN or Inf; the message names it and the likely causes."""

    def __init__(self, message: str, term: str, step: int) -> None:
        super().__init__(message)
        self.term = term
        self.step = step


def find_nonfinite(values: Mapping[str, float | torch.Tensor]) -> tuple[str, float] | None:
    """The first (name, value) that is NaN or Inf, or None."""
    for name, value in values.items():
        v = float(value.detach().float().sum()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            return name, v
    return None


def nonfinite_message(
    term: str,
    value: float,
    step: int,
    epoch: int,
    lr: float,
    total_batch: int,
    amp: str,
    last_checkpoint: str | None = None,
    images: Sequence[str] = (),
) -> str:
    """One line naming the term, the step and the likely causes."""
    causes = [
        f"learning rate {lr:.3g} too high for the total batch of {total_batch} images "
        "(lower learning_rate or raise base_batch_size/warmup_iters)",
        "degenerate boxes (zero width or height) or tiny masks in the data (run `maskrcnn check-data`)",
    ]
    if amp == "fp16":
        causes.insert(0, "fp16 overflow (use amp=bf16 or amp=none)")
    else:
        causes.append("fp16 overflow if amp=fp16")
    where = f"optimizer step {step} (epoch {epoch})"
    parts = [f"{term} is {value} at {where}", "likely causes: " + "; ".join(causes)]
    if images:
        parts.append("batch: " + ", ".join(images[:8]) + (" ..." if len(images) > 8 else ""))
    parts.append(
        f"last good checkpoint kept: {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    )
    return "non-finite loss: " + "; ".join(parts)


def check_losses(
    losses: Mapping[str, float | torch.Tensor],
    step: int,
    epoch: int,
    lr: float,
    total_batch: int,
    amp: str,
    last_checkpoint: str | None = None,
    images: Sequence[str] = (),
) -> None:
    """Raise :class:`NonFiniteLossError` if any value of ``losses`` is NaN or Inf."""
    bad = find_nonfinite(losses)
    if bad is None:
        return
    term, value = bad
    raise NonFiniteLossError(
        nonfinite_message(term, value, step, epoch, lr, total_batch, amp, last_checkpoint, images),
        term=term,
        step=step,
    )

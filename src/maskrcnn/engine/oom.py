"""Surviving an out-of-memory error in a training step: free, split the batch, retry, remember.

When a forward or backward pass of a training step raises ``torch.OutOfMemoryError`` (CUDA; any
device whose allocator raises it), :func:`run_with_oom_fallback`:

1. leaves the ``except`` block (so the exception's traceback, and with it every activation of the
   failed pass, is released), runs the caller's ``cleanup`` (the trainer zeroes the gradients the
   failed attempt may have accumulated in part), collects garbage and empties the CUDA cache;
2. halves the number of images per forward pass (:class:`MicroBatchSplit`), e.g. 8 -> 4 -> 2 -> 1;
3. runs the whole step again from the start with the same loader batches, each split into
   micro-batches whose losses are weighted by their share of the batch's images
   (:func:`chunk_weights`), so the accumulated gradient is the gradient of the whole batch (exactly
   so for losses that are means over images) and the effective batch is unchanged;
4. keeps the smaller split for every following step (no second out-of-memory error at the same
   place), and reports each change through ``on_split`` (the trainer logs it).

Nothing is skipped: the step that failed is the step that is retried, so no data and no
optimizer step is lost. With one image per pass there is nothing left to split and the error is
raised as :class:`~maskrcnn.errors.MaskRCNNError` naming the remedies. In multi-process (DDP)
training a rank cannot retry alone (its gradient all-reduce would no longer match the other
ranks'), so there the error is raised at once with the same remedies.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import MaskRCNNError, first_line

__all__ = ["MicroBatchSplit", "is_oom", "free_memory", "chunk_bounds", "chunk_weights", "run_with_oom_fallback",
           "OOM_ADVICE"]

T = TypeVar("T")

OOM_ADVICE = ("lower images_per_gpu (keep the total batch with grad_accumulation), or run `maskrcnn plan --config C "
              "--memory SIZE` for settings that fit (gradient_checkpointing, amp, train_rois_per_image, ...)")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of a device allocator."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "cuda" in str(exc).lower()


def free_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and give the CUDA caching allocator's free blocks back."""
    gc.collect()
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def chunk_bounds(n: int, size: int | None) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive micro-batches of at most ``size`` items (one chunk when ``size`` is None)."""
    if n <= 0:
        return []
    if size is None or size >= n:
        return [(0, n)]
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def chunk_weights(bounds: list[tuple[int, int]]) -> list[float]:
    """Each micro-batch's share of the images: the weight of its (per-image mean) losses."""
    n = sum(b - a for a, b in bounds)
    return [(b - a) / n for a, b in bounds]


@dataclass
class MicroBatchSplit:
    """The largest number of images per forward pass known to fit (None: whole loader batches).

    Attributes:
        size: images per pass, or None before any out-of-memory error.
        events: out-of-memory errors survived so far.
    """

    size: int | None = None
    events: int = 0

    def shrink(self, batch_images: int) -> int | None:
        """Halve the pass size after an out-of-memory error on a batch of ``batch_images``;
        returns the new size, or None when a pass already held a single image."""
        current = batch_images if self.size is None else min(self.size, batch_images)
        if current <= 1:
            return None
        self.size = max(1, math.ceil(current / 2))
        self.events += 1
        return self.size


def run_with_oom_fallback(
    step: Callable[[int | None], T],
    split: MicroBatchSplit,
    batch_images: int,
    *,
    cleanup: Callable[[], None] | None = None,
    on_split: Callable[[int, int, str], None] | None = None,
    device: torch.device | str | None = None,
    distributed: bool = False,
) -> T:
    """Run ``step(images_per_pass)``; after an out-of-memory error, retry it with smaller passes.

    Args:
        step: runs the whole step (forward and backward of every micro-batch) with at most
            ``images_per_pass`` images per forward pass (None: whole batches); it must start from
            a clean state, or ``cleanup`` must restore one (zero the gradients).
        split: the run's :class:`MicroBatchSplit`, updated in place and used by later steps.
        batch_images: images in the largest loader batch of the step.
        on_split: ``(old_size, new_size, error_line)`` after each reduction (for the log).
        distributed: True in multi-process training: no retry (see the module doc).
    """
    while True:
        size = split.size
        try:
            return step(size)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, others re-raised
            if not is_oom(exc):
                raise
            first = first_line(exc, "out of memory")
            old = batch_images if size is None else min(size, batch_images)
            if distributed:
                raise MaskRCNNError(f"out of memory in a training step with {old} image(s) per forward pass on one "
                                    f"of several processes (a step cannot be split on one rank alone): {OOM_ADVICE}") from exc
            new = split.shrink(batch_images)
            if new is None:
                raise MaskRCNNError(f"out of memory in a training step even with 1 image per forward pass ({first[:160]}); "
                                    f"{OOM_ADVICE}") from exc
        # outside the except block: the failed pass's traceback and tensors are released
        if cleanup is not None:
            cleanup()
        free_memory(device)
        if on_split is not None:
            on_split(old, new, first)


def split_batch(images: list[Any], targets: list[Any], size: int | None) -> list[tuple[list[Any], list[Any], float]]:
    """``(images, targets, weight)`` of each micro-batch of at most ``size`` images."""
    bounds = chunk_bounds(len(images), size)
    return [(images[a:b], targets[a:b], w) for (a, b), w in zip(bounds, chunk_weights(bounds))]


__all__.append("split_batch")

"""One training step: the function the trainer, the planner's measurement and the demo all run.

A step takes the loader batches of one optimizer step (``grad_accumulation`` of them) and does

1. for every batch (each split into micro-batches of at most ``images_per_pass`` images once an
   out-of-memory error has been survived, :mod:`.oom`): the forward pass under autocast
   (``Config.amp`` resolved by :func:`.runtime.resolve_amp`; the dense layers in bf16/fp16, the
   heads' outputs cast back to fp32 before the losses, see :func:`.runtime.autocast`), the sum
   of the model's loss dict, the non-finite check (:mod:`.guard`) and the backward pass of
   ``sum * scale / len(batches) * share`` (gradient accumulation; ``share`` is the micro-batch's
   share of its batch's images, so the gradient is the whole batch's);
2. unscale (fp16 grad scaler), clip the global gradient norm (``Config.gradient_clip_norm``),
   the optimizer step and the scaler update.

Losses: the model in train mode returns a dict of already weighted terms named ``loss_*``
(each head applies its own ``Config.loss_weights`` entry); the step sums every value and
reports each by its key, so the engine knows no loss names. Under DDP the terms are averaged
over the ranks before the check, so every rank stops together.

The learning-rate schedule, the time budget and the logging are the loop's (:mod:`.trainer`,
:mod:`.hooks`); a step only changes the weights, the gradients and the optimizer state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import MaskRCNNError
from ..structures import Batch
from . import distributed as du
from .guard import check_losses
from .loader import move_to_device
from .oom import MicroBatchSplit, run_with_oom_fallback, split_batch
from .runtime import autocast

__all__ = ["StepOutput", "TrainStep", "LossCheck", "loss_terms", "sum_losses", "TOTAL"]

#: key of the total (the sum of the terms) in :attr:`StepOutput.losses` and the metrics.
TOTAL = "loss"

#: ``check(values, targets)``: raises when a value (a loss term, ``"total loss"`` or ``"gradient
#: norm"``) is NaN or Inf; ``targets`` are the batch's (for the image names in the message).
LossCheck = Callable[[Mapping[str, torch.Tensor], Sequence[dict]], None]


@dataclass
class StepOutput:
    """What one optimizer step did.

    Attributes:
        losses: every loss term by the model's key plus ``"loss"`` (their sum), the mean over the
            step's loader batches, averaged over the ranks.
        grad_norm: the global gradient norm before clipping.
        images: images that contributed on this process.
        lr: learning rate of the first parameter group during the step.
        stop: some process asked to stop (``stop_requested`` was True on a rank during the step).
    """

    losses: dict[str, float] = field(default_factory=dict)
    grad_norm: float = float("nan")
    images: int = 0
    lr: float = 0.0
    stop: bool = False


def loss_terms(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The terms the step sums: the model's loss dict (already weighted by its heads), as fp32 tensors."""
    if not losses:
        raise MaskRCNNError("the model returned no losses in train mode; it must return a dict of loss_* tensors")
    return {k: v.float() for k, v in losses.items()}


def sum_losses(terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The total loss: the sum of every term (scalar fp32)."""
    return torch.stack(list(terms.values())).sum()


def _default_check(values: Mapping[str, torch.Tensor], targets: Sequence[dict]) -> None:
    check_losses(values, step=0, epoch=0, lr=float("nan"), total_batch=0, amp="none")


class TrainStep:
    """Runs optimizer steps of ``model``; call it with the step's loader batches.

    Args:
        model: the network in train mode (or its DDP wrapper).
        optimizer: its optimizer (SGD / AdamW of :mod:`.optim`).
        device: where the passes run (batches are moved there pass by pass).
        params: the trainable parameters (default: those of ``optimizer``) whose norm is clipped.
        amp_dtype: autocast dtype, or None (fp32). The caller converts the model to channels-last
            for it (:func:`.runtime.use_channels_last`) before wrapping it in DDP.
        scaler: the grad scaler (fp16); None or disabled: plain backward.
        clip_norm: maximum global gradient norm (None: measured, not clipped).
        oom_split: the run's :class:`MicroBatchSplit`: out-of-memory errors split the passes and
            retry the step (:func:`.oom.run_with_oom_fallback`); None: the error propagates (the
            planner measures it).
        on_oom_split: ``(old, new, error_line)`` after each reduction (the trainer's log line).
        check: the non-finite guard (default: :func:`.guard.check_losses` without context).
        stop_requested: polled once per pass; its value is reduced over the ranks with the losses.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device | str = "cpu",
        *,
        params: Sequence[torch.Tensor] | None = None,
        amp_dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        clip_norm: float | None = None,
        oom_split: MicroBatchSplit | None = None,
        on_oom_split: Callable[[int, int, str], None] | None = None,
        check: LossCheck | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        self.amp_dtype = amp_dtype
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(self.device.type, enabled=False)
        self.clip_norm = clip_norm
        self.oom_split = oom_split
        self.on_oom_split = on_oom_split
        self.check = check or _default_check
        self.stop_requested = stop_requested or (lambda: False)

    def __call__(self, batches: Sequence[tuple[Batch, float] | None]) -> StepOutput:
        """One optimizer step over ``batches``: ``(batch, scale)`` per loader batch (scale 0: the
        batch only joins the DDP all-reduce), or None for a batch with nothing to learn from (it
        still counts in the accumulation's divisor)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.oom_split is None:
            sums, keys, images, stop = self._passes(batches, None)
        else:
            largest = max((len(item[0].images) for item in batches if item is not None), default=1)
            sums, keys, images, stop = run_with_oom_fallback(
                lambda size: self._passes(batches, size), self.oom_split, largest,
                cleanup=lambda: self.optimizer.zero_grad(set_to_none=True),  # partial gradients go before the retry
                on_split=self.on_oom_split, device=self.device, distributed=du.is_distributed())
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = self.clip_norm if self.clip_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # the scaler skips such steps itself
            self.check({"gradient norm": torch.tensor(grad_norm)}, [])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        n = max(1, len(batches))
        losses = {k: float(sums[i]) / n for i, k in enumerate(keys)}
        return StepOutput(losses=losses, grad_norm=grad_norm, images=images, lr=lr, stop=stop)

    def _passes(self, batches: Sequence[tuple[Batch, float] | None],
                size: int | None) -> tuple[torch.Tensor, list[str], int, bool]:
        """Zero the gradients, then forward and backward every batch in passes of at most ``size``
        images; returns the summed (rank-averaged) terms and total, their keys, the images and the stop flag."""
        self.optimizer.zero_grad(set_to_none=True)
        micro = len(batches)
        sums: torch.Tensor | None = None
        keys: list[str] = []
        images, stop = 0, False
        for m, item in enumerate(batches):
            if item is None:
                continue
            batch, scale = item
            last = m == micro - 1 or all(x is None for x in batches[m + 1:])
            sync = self.model.no_sync() if (du.is_distributed() and not last and hasattr(self.model, "no_sync")) \
                else contextlib.nullcontext()
            with sync:
                batch_sum = None
                for part_images, part_targets, share in split_batch(batch.images, batch.targets, size):
                    part = move_to_device(Batch(part_images, part_targets, batch.skipped), self.device)
                    with autocast(self.device, self.amp_dtype):
                        terms = loss_terms(self.model(part.images, part.targets))
                    total = sum_losses(terms)
                    keys = list(terms) + [TOTAL]
                    flag = torch.tensor([1.0 if self.stop_requested() else 0.0], device=self.device)
                    values = torch.cat([torch.stack(list(terms.values())).detach(), total.detach().view(1), flag])
                    reduced = du.all_reduce_mean(values).cpu()
                    named = {k: reduced[i] for i, k in enumerate(keys)}
                    named["total loss"] = named.pop(TOTAL)
                    self.check(named, part.targets)
                    stop = stop or bool(reduced[-1] > 0)
                    self.scaler.scale(total * (scale / micro * share)).backward()
                    part_sum = reduced[:-1] * share
                    batch_sum = part_sum if batch_sum is None else batch_sum + part_sum
                    del terms, total
            if batch_sum is not None:
                sums = batch_sum * scale if sums is None else sums + batch_sum * scale
            images += len(batch.images) if scale else 0
        if sums is None:
            sums = torch.zeros(len(keys))
        return sums, keys, images, stop

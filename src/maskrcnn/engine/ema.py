"""An exponential moving average (EMA) of the weights, the model that validation and checkpoints hold.

After every optimizer step ``w_ema <- d_t * w_ema + (1 - d_t) * w`` for every floating-point
parameter and buffer (BatchNorm statistics included), with a decay that ramps up from 0, as
Ultralytics' ``ModelEMA`` does::

    d_t = ema_decay * (1 - exp(-t / ema_warmup_steps))      t = updates so far (1, 2, ...)

so the average follows the model closely early in training (when old weights are bad) and
averages over about ``1 / (1 - ema_decay)`` steps later. Integer buffers (``num_batches_tracked``)
are copied. The average is a separate copy of the model in eval mode, never trained; the
trainer validates it, writes it as the checkpoint weights (what ``maskrcnn.load``, ``evaluate``
and ``export`` read) and keeps the raw training weights in the state file for resume
(:mod:`.state`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["ModelEMA", "ema_decay_at"]


def ema_decay_at(decay: float, warmup_steps: int, updates: int) -> float:
    """The decay of update number ``updates`` (1-based): ``decay * (1 - exp(-updates / warmup_steps))``;
    ``warmup_steps`` 0 means no ramp."""
    if warmup_steps <= 0:
        return decay
    return decay * (1.0 - math.exp(-updates / warmup_steps))


class ModelEMA:
    """The moving average of ``model``'s weights (a deep copy, eval mode, no gradients).

    Args:
        model: the model being trained (a DDP wrapper is unwrapped); copied once here.
        decay: the final decay ``ema_decay`` in (0, 1), e.g. 0.999.
        warmup_steps: steps of the ramp (``ema_warmup_steps``).
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int) -> None:
        self.model = copy.deepcopy(getattr(model, "module", model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup_steps = float(decay), int(warmup_steps)
        self.updates = 0
        self._source: tuple[tuple, tuple] | None = None  # (which tensors they were made of, the tensor pairs)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """(average, source) floating-point tensors, and the other (integer) tensor pairs, by state-dict
        name; made again only when ``model`` or the storage of either model's tensors changed (loading
        weights copies into the same storage; ``.to()`` to another device or layout does not)."""
        model = getattr(model, "module", model)
        key = (id(model), *(next(m.parameters()).data_ptr() for m in (model, self.model)))
        if self._source is None or self._source[0] != key:
            src = model.state_dict()
            avg, cur, other = [], [], []
            for name, t in self.model.state_dict().items():
                s = src[name].detach()
                if t.is_floating_point():
                    avg.append(t)
                    cur.append(s)
                else:
                    other.append((t, s))
            self._source = (key, (avg, cur, other))
        return self._source[1]

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model``'s current weights; returns the decay used."""
        self.updates += 1
        d = ema_decay_at(self.decay, self.warmup_steps, self.updates)
        avg, cur, other = self._pairs(model)
        if avg:
            torch._foreach_lerp_(avg, [c.to(a.dtype) for a, c in zip(avg, cur)], 1.0 - d)  # avg + (1 - d) * (cur - avg)
        for t, s in other:
            t.copy_(s)
        return d

    @torch.no_grad()
    def load(self, weights: Mapping[str, torch.Tensor], updates: int) -> None:
        """Set the average to ``weights`` (a state dict) after ``updates`` updates (resume)."""
        self.model.load_state_dict(dict(weights), strict=True)
        self.updates = int(updates)

    def state(self) -> dict[str, float | int]:
        """What the state file records besides the weights."""
        return {"updates": self.updates, "decay": self.decay, "warmup_steps": self.warmup_steps}

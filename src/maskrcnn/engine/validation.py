"""Validation during training: the loss terms on the validation set and the best result so far.

Validation losses come from the model in train mode with frozen BatchNorm statistics and no
gradients, with the global RNG forked and seeded (the RPN/RoI sampling draws from it), so a
validation changes nothing in the run it is part of. They are summed exactly as the training
step sums them (:func:`.step.loss_terms`, :func:`.step.sum_losses`) and averaged over images and ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from . import distributed as du
from .loader import move_to_device, unpack_batch
from .optim import set_train_mode
from .runtime import autocast
from .step import TOTAL, loss_terms, sum_losses

__all__ = ["validation_losses", "better_result"]


def validation_losses(module: nn.Module, loader: Iterable, device: torch.device, *, seed: int,
                      amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean of every loss term and of their sum (``"loss"``) per validation image, over all ranks.

    ``module`` is left in train mode with frozen BatchNorm; the caller restores its own mode.
    """
    set_train_mode(module, train_bn=False)  # losses need train mode; statistics stay untouched
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros(1, device=device)
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for raw in loader:
            batch = unpack_batch(raw)
            if not batch.images:
                continue
            batch = move_to_device(batch, device)
            with autocast(device, amp_dtype):
                terms = loss_terms(module(batch.images, batch.targets))
            n = len(batch.images)
            terms[TOTAL] = sum_losses(terms)
            for k, v in terms.items():
                sums[k] = sums.get(k, torch.zeros((), device=device)) + v * n
            count += n
    keys = list(sums)
    reduced = du.all_reduce_mean(torch.cat([torch.stack([sums[k] for k in keys]).view(-1), count]) if keys else count).cpu()
    total = max(float(reduced[-1]), 1.0)
    return {k: float(reduced[i]) / total for i, k in enumerate(keys)} or {TOTAL: float("nan")}


def better_result(best: dict[str, Any] | None, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The new best when validation ``record`` beats ``best`` (None: it does not).

    The metric is ``mask_ap`` when the record has a valid one (ties: the lower loss wins), else
    the validation loss; once the best is an AP, a record without AP (a failed evaluation) is
    not comparable and never wins.
    """
    loss = record["loss"]
    ap = record.get("mask_ap")
    if isinstance(ap, float) and math.isfinite(ap) and ap >= 0:
        metric, value, key = "mask_ap", ap, (ap, -loss)
    elif best is not None and best["metric"] == "mask_ap":
        return None
    else:
        metric, value, key = "loss", loss, (-loss,)
    if not all(math.isfinite(k) for k in key):
        return None
    if best is None or best["metric"] != metric or key > tuple(best.get("key", (-math.inf,))):
        return {"metric": metric, "value": value, "epoch": record["epoch"], "key": list(key)}
    return None

"""Matching predictions to ground truth, and balanced positive/negative sampling."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Matcher", "sample_balanced", "BELOW_LOW", "BETWEEN"]

BELOW_LOW = -1
BETWEEN = -2


class Matcher:
    """Assign each prediction the GT of highest IoU.

    ``__call__(iou [G, P]) -> matches [P]``: the GT index, ``-1`` below ``low``, ``-2`` in
    ``[low, high)``. With ``allow_low_quality``, each GT's best predictions (all ties) keep their
    match even below ``high`` (Faster R-CNN's RPN rule).
    """

    def __init__(self, high: float, low: float, allow_low_quality: bool) -> None:
        if not low <= high:
            raise ValueError(f"Matcher: low threshold {low} above high threshold {high}")
        self.high, self.low, self.allow_low_quality = high, low, allow_low_quality

    def __call__(self, iou: Tensor) -> Tensor:
        matched_vals, matches = iou.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality else None
        below = matched_vals < self.low
        between = (matched_vals >= self.low) & (matched_vals < self.high)
        matches[below] = BELOW_LOW
        matches[between] = BETWEEN
        if all_matches is not None:
            best_per_gt, _ = iou.max(dim=1)
            pred_inds = torch.where(iou == best_per_gt[:, None])[1]
            matches[pred_inds] = all_matches[pred_inds]
        return matches


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample up to ``batch_size`` indices: positives (``labels >= 1``) up to the fraction, negatives
    (``labels == 0``) fill the rest; ``-1`` is ignored. Returns ``(pos_idx, neg_idx)`` int64 tensors.
    """
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)
    perm1 = torch.randperm(positive.numel(), device=positive.device, generator=generator)[:num_pos]
    perm2 = torch.randperm(negative.numel(), device=negative.device, generator=generator)[:num_neg]
    return positive[perm1], negative[perm2]

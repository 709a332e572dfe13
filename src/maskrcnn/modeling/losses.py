"""Loss helpers shared by the heads: the box-regression loss and the ``loss_*`` naming and weighting.

Each head computes its own terms and returns them through :func:`weighted_losses`, so the model in
train mode returns ``{"loss_<term>": weight * value}`` with Matterport's term names
(``rpn_class, rpn_bbox, mrcnn_class, mrcnn_bbox, mrcnn_mask``) and ``Config.loss_weights[term]``
as the weight; the training loop only sums the values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_PREFIX", "box_regression_loss", "weighted_losses"]

#: Prefix of every key the model returns in train mode.
LOSS_PREFIX = "loss_"


def box_regression_loss(deltas: Tensor, targets: Tensor, normalizer: int) -> Tensor:
    """Smooth-L1 (beta 1/9) of ``deltas [P, 4]`` against ``targets [P, 4]``, summed and divided by
    ``max(normalizer, 1)`` (the number of sampled anchors or RoIs, positives and negatives; as
    torchvision's RPN and Fast R-CNN losses)."""
    return F.smooth_l1_loss(deltas, targets, beta=1 / 9, reduction="sum") / max(normalizer, 1)


def weighted_losses(terms: Mapping[str, Tensor], weights: Mapping[str, float] | None) -> dict[str, Tensor]:
    """``{"loss_" + term: value * weights[term]}``; a term missing from ``weights`` (or ``weights``
    None) keeps weight 1. ``weights`` is ``Config.loss_weights`` (keys without the prefix)."""
    out = {}
    for term, value in terms.items():
        w = 1.0 if weights is None else float(weights.get(term, 1.0))
        out[LOSS_PREFIX + term] = value if w == 1.0 else value * w
    return out

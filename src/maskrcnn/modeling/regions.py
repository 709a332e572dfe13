"""Ignore regions (COCO crowd areas): the fraction of a box covered by an ignore mask."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["integral_image", "box_ignore_fraction"]


def integral_image(mask: Tensor) -> Tensor:
    """Summed-area table ``[H+1, W+1]`` (float64) of a ``[H, W]`` mask."""
    ii = torch.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=torch.float64, device=mask.device)
    ii[1:, 1:] = mask.to(torch.float64).cumsum(0).cumsum(1)
    return ii


def box_ignore_fraction(boxes: Tensor, ignore: Tensor) -> Tensor:
    """Fraction ``[N]`` of each box ``[N, 4]`` (x1, y1, x2, y2 pixels) covered by ``ignore [H, W]``.

    Boxes are clipped to the mask and rounded to whole pixels; a box of zero area scores 0.
    """
    h, w = ignore.shape[-2:]
    ii = integral_image(ignore)
    x1 = boxes[:, 0].floor().clamp(0, w).long()
    y1 = boxes[:, 1].floor().clamp(0, h).long()
    x2 = boxes[:, 2].ceil().clamp(0, w).long()
    y2 = boxes[:, 3].ceil().clamp(0, h).long()
    inside = ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]
    area = ((x2 - x1) * (y2 - y1)).to(torch.float64)
    return torch.where(area > 0, inside / area.clamp(min=1), torch.zeros_like(area)).to(boxes.dtype)

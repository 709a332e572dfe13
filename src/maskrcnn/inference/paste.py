"""Mask pasting: per-box mask probabilities -> masks in the image.

Exactly torchvision's geometry (the ``M x M`` mask padded by one cell to ``M+2``, its box scaled
about the centre by ``(M+2)/M`` and truncated to integers, bilinear resize to
``(y2 - y1 + 1, x2 - x1 + 1)``), but each mask is resized only inside its own box and written
as bool (or float for parity checks): no full-size float image per detection.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks", "expand_boxes"]


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``[N, 4]`` xyxy boxes about their centres (torchvision's arithmetic)."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                threshold: float | None = 0.5) -> Tensor:
    """Paste ``mask_probs [N, M, M]`` into ``[N, H, W]`` at ``boxes [N, 4]`` (x1, y1, x2, y2 pixels of that image).

    ``threshold=None`` returns float probabilities (torchvision's output, for parity); otherwise a
    bool mask of pixels with probability ``>= threshold``.
    """
    n = mask_probs.shape[0]
    h, w = image_size
    dtype = torch.float32 if threshold is None else torch.bool
    if mask_probs.device.type == "cpu":
        # calloc'd memory: the OS supplies zero pages lazily, so only the pages inside the boxes are
        # touched and the cost grows with the box areas, not with N x H x W
        out = torch.from_numpy(np.zeros((n, h, w), dtype=np.float32 if threshold is None else np.bool_))
    else:
        out = torch.zeros((n, h, w), dtype=dtype, device=mask_probs.device)
    if n == 0:
        return out
    m = mask_probs.shape[-1]
    padded = F.pad(mask_probs.float(), (1, 1, 1, 1))
    ib = expand_boxes(boxes.float(), float(m + 2) / m).to(torch.int64).tolist()
    for i, (x1, y1, x2, y2) in enumerate(ib):
        bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        x0c, x1c = max(x1, 0), min(x2 + 1, w)
        y0c, y1c = max(y1, 0), min(y2 + 1, h)
        if x1c <= x0c or y1c <= y0c:
            continue
        res = F.interpolate(padded[i][None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
        crop = res[y0c - y1: y1c - y1, x0c - x1: x1c - x1]
        out[i, y0c:y1c, x0c:x1c] = crop if threshold is None else crop >= threshold
    return out

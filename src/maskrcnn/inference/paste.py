"""Mask pasting: per-box mask probabilities -> masks in the image.

Two geometries (``Config.mask_paste``):

* ``subpixel`` (default): the ``M x M`` map covers its box ``(x1, y1, x2, y2)`` exactly, in
  continuous pixel coordinates (pixel ``k`` spans ``[k, k + 1)``, cell ``j`` of the map spans
  ``[x1 + j w / M, x1 + (j + 1) w / M)``), and each image pixel takes the bilinear sample of the map
  at its centre, zero outside the map: Detectron2's ``paste_masks_in_image``. The model asks its
  mask head for the frame that makes this true (``RoIHeads.mask_frame_shift``).
* ``torchvision``: exactly torchvision's geometry (the map padded by one cell to ``M+2``, its box
  scaled about the centre by ``(M+2)/M`` and truncated to integers, bilinear resize to
  ``(y2 - y1 + 1, x2 - x1 + 1)``). Truncation plus the ``+1`` make masks about one pixel wider and
  taller than their box, and torchvision's heads predict a frame half a pixel off the box.

Both write each mask only inside its own box, as bool (or float for parity checks): no full-size
float image per detection.
"""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import MaskPaste

__all__ = ["paste_masks", "expand_boxes", "PASTE_MODES"]

#: ``Config.mask_paste`` values.
PASTE_MODES: tuple[str, ...] = get_args(MaskPaste)


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
                threshold: float | None = 0.5, mode: str = "subpixel") -> Tensor:
    """Paste ``mask_probs [N, M, M]`` into ``[N, H, W]`` at ``boxes [N, 4]`` (x1, y1, x2, y2 pixels of that image).

    ``mode``: ``subpixel`` or ``torchvision`` (module doc). ``threshold=None`` returns float
    probabilities; otherwise a bool mask of pixels with probability ``>= threshold``.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"mask paste mode {mode!r}; expected one of {PASTE_MODES}")
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
    if mode == "subpixel":
        paste_one, rows = _paste_subpixel, boxes.float().tolist()
    else:  # torchvision's integer boxes, computed for all boxes at once
        paste_one, rows = _paste_torchvision, expand_boxes(boxes.float(), float(m + 2) / m).to(torch.int64).tolist()
    for i, box in enumerate(rows):
        placed = paste_one(padded[i], box, m, h, w)
        if placed is not None:
            (y0, y1, x0, x1), res = placed
            out[i, y0:y1, x0:x1] = res if threshold is None else res >= threshold
    return out


Placed = tuple[tuple[int, int, int, int], Tensor] | None


def _paste_torchvision(padded: Tensor, box: list[int], m: int, h: int, w: int) -> Placed:
    """torchvision's geometry for one ``[M+2, M+2]`` zero-padded map at its expanded integer ``box``:
    ``((y0, y1, x0, x1), values)``."""
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    x0c, x1c = max(x1, 0), min(x2 + 1, w)
    y0c, y1c = max(y1, 0), min(y2 + 1, h)
    if x1c <= x0c or y1c <= y0c:
        return None
    res = F.interpolate(padded[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    return (y0c, y1c, x0c, x1c), res[y0c - y1: y1c - y1, x0c - x1: x1c - x1]


def _paste_subpixel(padded: Tensor, box: list[float], m: int, h: int, w: int) -> Placed:
    """The map covering ``box`` exactly, sampled at the centres of the pixels the box touches."""
    x1, y1, x2, y2 = box
    # every pixel whose centre lies within half a cell of the box samples a non-zero value
    hx, hy = 0.5 * max(x2 - x1, 0.0) / m, 0.5 * max(y2 - y1, 0.0) / m
    x0c, x1c = max(math.floor(x1 - hx), 0), min(math.ceil(x2 + hx), w)
    y0c, y1c = max(math.floor(y1 - hy), 0), min(math.ceil(y2 + hy), h)
    if x1c <= x0c or y1c <= y0c:
        return None
    wy = _bilinear_weights(y1, y2, y0c, y1c, m, padded.device)
    wx = _bilinear_weights(x1, x2, x0c, x1c, m, padded.device)
    return (y0c, y1c, x0c, x1c), wy @ padded @ wx.T


def _bilinear_weights(lo: float, hi: float, start: int, stop: int, m: int, device: torch.device) -> Tensor:
    """``[stop - start, M + 2]`` weights that sample a zero-padded ``M``-cell axis spanning
    ``[lo, hi)`` at the pixel centres ``start + 0.5 ... stop - 0.5`` (bilinear, zero outside:
    ``grid_sample(align_corners=False, padding_mode="zeros")`` along one axis). Built in numpy:
    a few dozen values, where torch's per-op overhead would dominate."""
    u = (np.arange(start, stop, dtype=np.float32) + np.float32(0.5) - np.float32(lo)) \
        * np.float32(m / max(hi - lo, 1e-6)) - np.float32(0.5)
    i0 = np.floor(u)
    frac = u - i0
    cols = i0.astype(np.int64) + 1  # index into the padded axis: cell j is column j + 1
    weights = np.zeros((u.size, m + 2), dtype=np.float32)
    rows = np.arange(u.size)
    for col, wt in ((cols, 1 - frac), (cols + 1, frac)):
        ok = (col >= 0) & (col <= m + 1)
        weights[rows[ok], col[ok]] = wt[ok]
    return torch.from_numpy(weights).to(device)

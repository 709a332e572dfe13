"""Mini-masks (Matterport's ``USE_MINI_MASK``): GT masks stored cropped to their box and resized.

Coordinate convention (continuous pixel coordinates, pixel ``(r, c)`` covers
``[c, c + 1) x [r, r + 1)``, its centre at ``(c + 0.5, r + 0.5)``):

A mini mask ``m`` of shape ``(mh, mw)`` for the integer box ``(x1, y1, x2, y2)`` (xyxy,
exclusive x2/y2, as produced by :func:`maskrcnn.data.augment.boxes_from_masks`) covers exactly
the rectangle ``[x1, x2) x [y1, y2)`` of the image; the box rectangle is divided into
``mh x mw`` equal cells and cell ``(i, j)`` covers::

    x in [x1 + j * bw / mw, x1 + (j + 1) * bw / mw),   bw = x2 - x1
    y in [y1 + i * bh / mh, y1 + (i + 1) * bh / mh),   bh = y2 - y1

i.e. an image point ``(x, y)`` sits at mini-mask coordinates
``u = (x - x1) * mw / bw``, ``v = (y - y1) * mh / bh`` (same corner convention, mini pixel
``(i, j)`` covering ``[j, j + 1) x [i, i + 1)``). The mini mask is the box crop resampled to
``(mh, mw)`` by :func:`maskrcnn.data.resize.resample_masks` (bilinear, ``align_corners=False``,
antialiased when shrinking, then ``>= 0.5``; :func:`expand_mask` resamples back the same way
without antialias). Outside the box the full mask is zero.

Mask targets for a proposal ``p = (px1, py1, px2, py2)`` matched to GT box ``b``:
:func:`mini_mask_rois` maps ``p`` into mini-mask coordinates by the formula above; RoIAlign with
``aligned=True`` on the mini masks then samples the same image points as RoIAlign with
``aligned=True`` on the full masks. To reproduce torchvision's ``aligned=False`` mask targets,
pass ``half_pixel_shift=True`` (the proposal is moved by +0.5 px before mapping) and still use
``aligned=True``. RoIAlign clamps samples in ``[-1, 0)`` to the edge value, while the full mask
is zero outside the box; :func:`pad_mini_masks` adds a one-pixel zero border (and
:func:`mini_mask_rois` has a matching ``border`` argument) to make that exact too.
"""

from __future__ import annotations

import numpy as np
import torch

from .resize import resample_masks

__all__ = ["minimize_masks", "expand_mask", "expand_masks", "mini_mask_rois", "pad_mini_masks"]


def _int_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """Integer xyxy box (floor of x1/y1, ceil of x2/y2) of at least one pixel."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = max(int(np.ceil(box[2])), x1 + 1), max(int(np.ceil(box[3])), y1 + 1)
    return x1, y1, x2, y2


def minimize_masks(masks: np.ndarray, boxes: np.ndarray, mini_shape: tuple[int, int] | list[int]) -> np.ndarray:
    """Crop each mask ``[N, H, W]`` to its xyxy box ``[N, 4]`` and resize to ``[N, mh, mw]`` uint8.

    Boxes should be the integer boxes of :func:`~maskrcnn.data.augment.boxes_from_masks`;
    fractional ones are widened to whole pixels (floor x1/y1, ceil x2/y2). Parts of a box outside
    the image count as zero.
    """
    masks = np.asarray(masks)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {boxes.shape[0]} boxes")
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    h, w = masks.shape[1:]
    out = np.zeros((masks.shape[0], mh, mw), dtype=np.uint8)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = _int_box(box)
        crop = np.zeros((1, y2 - y1, x2 - x1), dtype=np.uint8)
        cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, h), min(x2, w)
        if cy2 > cy1 and cx2 > cx1:
            crop[0, cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1] = masks[i, cy1:cy2, cx1:cx2] != 0
        out[i] = resample_masks(crop, (mh, mw), antialias=True)[0]
    return out


def expand_mask(mini: np.ndarray, box: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Paste one mini mask ``[mh, mw]`` back into a ``[H, W]`` uint8 mask at its xyxy ``box``.

    Inverse of :func:`minimize_masks` up to resampling (for checks and visualisation).
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    x1, y1, x2, y2 = _int_box(np.asarray(box, dtype=np.float64))
    full = np.zeros((h, w), dtype=np.uint8)
    m = resample_masks(np.asarray(mini)[None], (y2 - y1, x2 - x1))[0]
    cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, h), min(x2, w)
    if cy2 > cy1 and cx2 > cx1:
        full[cy1:cy2, cx1:cx2] = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
    return full


def expand_masks(minis: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """:func:`expand_mask` for ``[N, mh, mw]`` and ``[N, 4]`` -> ``[N, H, W]`` uint8."""
    out = np.zeros((len(minis), int(image_shape[0]), int(image_shape[1])), dtype=np.uint8)
    for i, (m, b) in enumerate(zip(minis, np.asarray(boxes).reshape(-1, 4))):
        out[i] = expand_mask(m, b, image_shape)
    return out


def mini_mask_rois(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    mini_shape: tuple[int, int] | list[int],
    *,
    half_pixel_shift: bool = False,
    border: int = 0,
) -> torch.Tensor:
    """Map proposals ``[K, 4]`` (image xyxy) into the mini-mask coordinates of their GT boxes ``[K, 4]``.

    Returns ``[K, 4]`` xyxy boxes to use with ``roi_align(mini_masks, ..., aligned=True)``.
    ``half_pixel_shift=True`` reproduces torchvision's full-mask ``aligned=False`` targets.
    ``border`` is the zero border added by :func:`pad_mini_masks` (coordinates shift by it).
    GT boxes are rounded outwards to whole pixels as in :func:`minimize_masks`.
    """
    p = proposals.to(torch.float32)
    g = gt_boxes.to(torch.float32)
    gx1, gy1 = torch.floor(g[:, 0]), torch.floor(g[:, 1])
    gx2 = torch.maximum(torch.ceil(g[:, 2]), gx1 + 1)
    gy2 = torch.maximum(torch.ceil(g[:, 3]), gy1 + 1)
    sx = float(mini_shape[1]) / (gx2 - gx1)
    sy = float(mini_shape[0]) / (gy2 - gy1)
    shift = 0.5 if half_pixel_shift else 0.0
    x1 = (p[:, 0] + shift - gx1) * sx + border
    y1 = (p[:, 1] + shift - gy1) * sy + border
    x2 = (p[:, 2] + shift - gx1) * sx + border
    y2 = (p[:, 3] + shift - gy1) * sy + border
    return torch.stack([x1, y1, x2, y2], dim=1)


def pad_mini_masks(minis: torch.Tensor, border: int = 1) -> torch.Tensor:
    """Add a zero border of ``border`` pixels to ``[N, mh, mw]`` mini masks (see the module doc)."""
    return torch.nn.functional.pad(minis, (border, border, border, border))

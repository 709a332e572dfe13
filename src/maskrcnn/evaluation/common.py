"""Helpers shared by the metrics: the evaluation error, COCO RLE conversion and RLE IoU.

RLE here always means COCO's compressed run-length encoding (``{"size": [H, W], "counts": str}``,
column-major), as produced by :mod:`pycocotools.mask`. Masks stay RLE as long as possible so
that evaluating thousands of images needs memory for one dense image at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import MaskRCNNError

__all__ = [
    "EvaluationError",
    "ann_to_rle",
    "decode_rle",
    "masks_to_rles",
    "rle_iou",
]


class EvaluationError(MaskRCNNError, ValueError):
    """Ground truth or predictions cannot be evaluated; the message names the field and the fix."""


def ann_to_rle(ann: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """Compressed RLE of a COCO annotation or result's ``segmentation``.

    Accepts polygons (list of ``[x1, y1, x2, y2, ...]``), uncompressed RLE (``counts`` a list)
    and compressed RLE (``counts`` a str or bytes), exactly like ``COCO.annToRLE``.
    """
    segm = ann.get("segmentation")
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        # No mask: an empty one of the image's size (pycocotools would fail on it).
        return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, height, width)
        return mask_utils.merge(rles)
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    return segm


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one compressed RLE to a bool mask ``[H, W]``."""
    with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def masks_to_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode bool masks ``[N, H, W]`` to N compressed RLEs with ``counts`` as ``str`` (JSON-safe)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise EvaluationError(
            f"masks: expected an array [N, H, W], got shape {tuple(masks.shape)}; stack the instance masks first"
        )
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(fortran)
    for rle in rles:
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
    return rles


def rle_iou(dt: Sequence[dict[str, Any]], gt: Sequence[dict[str, Any]], iscrowd: Sequence[int] | None = None) -> np.ndarray:
    """IoU matrix ``[len(dt), len(gt)]`` float64 between RLE masks (pycocotools ``maskUtils.iou``).

    For ``gt`` marked crowd the value is ``|dt & gt| / |dt|`` (COCO's crowd convention).
    Empty inputs give an empty matrix of the right shape instead of pycocotools' ``[]``.
    """
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)), dtype=np.float64)
    crowd = [0] * len(gt) if iscrowd is None else [int(c) for c in iscrowd]
    return np.asarray(mask_utils.iou(list(dt), list(gt), crowd), dtype=np.float64).reshape(len(dt), len(gt))

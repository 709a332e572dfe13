"""Helpers shared by the metrics: the evaluation error, COCO RLE conversion and RLE IoU.

RLE here always means COCO's compressed run-length encoding (``{"size": [H, W], "counts": str}``,
column-major), as produced by :mod:`pycocotools.mask`. Masks stay RLE as long as possible so
that evaluating thousands of images needs memory for one dense image at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..data import rle as rle_codec
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
    """Compressed RLE of a COCO annotation or result's ``segmentation`` (polygons, uncompressed or
    compressed RLE; none: an empty mask), like ``COCO.annToRLE`` (:func:`maskrcnn.data.rle.from_segmentation`)."""
    return rle_codec.from_segmentation(ann.get("segmentation"), height, width)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one RLE to a bool mask ``[H, W]``."""
    return rle_codec.decode(rle)


def masks_to_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode bool masks ``[N, H, W]`` to N compressed RLEs with ``counts`` as ``str`` (JSON-safe)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise EvaluationError(
            f"masks: expected an array [N, H, W], got shape {tuple(masks.shape)}; stack the instance masks first"
        )
    return rle_codec.encode_masks(masks)


def rle_iou(dt: Sequence[dict[str, Any]], gt: Sequence[dict[str, Any]], iscrowd: Sequence[int] | None = None) -> np.ndarray:
    """IoU matrix ``[len(dt), len(gt)]`` float64 between RLE masks (pycocotools ``maskUtils.iou``).

    For ``gt`` marked crowd the value is ``|dt & gt| / |dt|`` (COCO's crowd convention).
    Empty inputs give an empty matrix of the right shape instead of pycocotools' ``[]``.
    """
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)), dtype=np.float64)
    crowd = [0] * len(gt) if iscrowd is None else [int(c) for c in iscrowd]
    return np.asarray(mask_utils.iou(list(dt), list(gt), crowd), dtype=np.float64).reshape(len(dt), len(gt))

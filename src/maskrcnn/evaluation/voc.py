"""Matterport's per-image VOC-style average precision on masks (``utils.compute_ap``).

Same algorithm and numbers as Matterport's ``compute_matches`` / ``compute_ap``:

1. drop all-zero (padding) rows of the boxes, sort predictions by score (``np.argsort(scores)[::-1]``);
2. mask IoU between predictions and ground truth;
3. each prediction, in score order, takes the unmatched ground truth of its class with the highest
   IoU, if that IoU is >= ``iou_threshold`` (looking down its IoU-sorted list and stopping at the
   first IoU below the threshold);
4. precision/recall after each prediction, padded with (recall 0, precision 0) in front and
   (recall 1, precision 0) at the end, precision made monotonically decreasing from the right,
   AP = sum over recall steps of (delta recall) x precision.

Classes are not averaged separately: one AP per image over all its classes (as Matterport), and
``compute_map`` is the mean over images. Only deviation: an image without ground truth has an
undefined AP; Matterport returns 0 (no predictions) or NaN with a division warning (predictions);
here it is NaN without warning, and ``compute_map`` leaves such images out of the mean.

Masks are Matterport's ``[H, W, N]`` by default; pass ``mask_layout="NHW"`` for ``[N, H, W]``
(this project's ``Detections.masks``). Boxes are only used to find padding rows, in any
coordinate order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from .common import EvaluationError

__all__ = [
    "ap_from_matches",
    "compute_ap",
    "compute_ap_range",
    "compute_map",
    "compute_matches",
    "compute_overlaps_masks",
    "matches_from_overlaps",
    "mean_ap",
]

MaskLayout = Literal["HWN", "NHW"]


def _hwn(masks: np.ndarray, layout: MaskLayout, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise EvaluationError(f"{name}: expected masks with 3 dimensions ({layout}), got shape {tuple(masks.shape)}")
    if layout == "NHW":
        return np.moveaxis(masks, 0, -1)
    if layout != "HWN":
        raise EvaluationError(f"mask_layout: unknown value {layout!r}; use 'HWN' (Matterport) or 'NHW'")
    return masks


def _trim_zeros(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [rows, columns] that are not all zero (Matterport's padding removal)."""
    x = np.asarray(x)
    if x.size == 0:
        return np.zeros((0, 4))
    x = x.reshape(len(x), -1)
    return x[~np.all(x == 0, axis=1)]


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """IoU ``[N1, N2]`` between masks ``[H, W, N1]`` and ``[H, W, N2]`` (thresholded at 0.5, float32 sums)."""
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    m1 = np.reshape(masks1 > 0.5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > 0.5, (-1, masks2.shape[-1])).astype(np.float32)
    area1 = np.sum(m1, axis=0)
    area2 = np.sum(m2, axis=0)
    intersections = np.dot(m1.T, m2)
    union = area1[:, None] + area2[None, :] - intersections
    return intersections / union


def matches_from_overlaps(
    overlaps: np.ndarray,
    gt_class_ids: np.ndarray,
    pred_class_ids: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Matterport's greedy matching, predictions already sorted by decreasing score.

    Args:
        overlaps: ``[P, G]`` IoU, rows in decreasing score order.
        gt_class_ids: ``[G]``; pred_class_ids: ``[P]`` (same order as ``overlaps`` rows).
        score_threshold: IoUs below it are not considered (Matterport's name for it).

    Returns:
        ``(gt_match [G], pred_match [P])`` float arrays: the matched index on the other side, or -1.
    """
    overlaps = np.asarray(overlaps).reshape(len(pred_class_ids), len(gt_class_ids))
    pred_match = -1 * np.ones([overlaps.shape[0]])
    gt_match = -1 * np.ones([overlaps.shape[1]])
    for i in range(overlaps.shape[0]):
        sorted_ixs = np.argsort(overlaps[i])[::-1]
        low_score_idx = np.where(overlaps[i, sorted_ixs] < score_threshold)[0]
        if low_score_idx.size > 0:
            sorted_ixs = sorted_ixs[: low_score_idx[0]]
        for j in sorted_ixs:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match


def compute_matches(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    *,
    mask_layout: MaskLayout = "HWN",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matterport's ``compute_matches``: ``(gt_match [G], pred_match [P], overlaps [P, G])``.

    ``pred_match`` and ``overlaps`` rows follow the predictions sorted by decreasing score.
    """
    gt_masks = _hwn(gt_masks, mask_layout, "gt_masks")
    pred_masks = _hwn(pred_masks, mask_layout, "pred_masks")
    gt_boxes = _trim_zeros(gt_boxes)
    gt_masks = gt_masks[..., : gt_boxes.shape[0]]
    pred_boxes = _trim_zeros(pred_boxes)
    pred_scores = np.asarray(pred_scores)[: pred_boxes.shape[0]]
    indices = np.argsort(pred_scores)[::-1]
    pred_class_ids = np.asarray(pred_class_ids)[indices]
    pred_masks = pred_masks[..., indices]
    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    gt_match, pred_match = matches_from_overlaps(
        overlaps, np.asarray(gt_class_ids)[: gt_boxes.shape[0]], pred_class_ids, iou_threshold, score_threshold
    )
    return gt_match, pred_match, overlaps


def ap_from_matches(gt_match: np.ndarray, pred_match: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Matterport's interpolated AP from the matches: ``(ap, precisions, recalls)`` (padded curves).

    ``ap`` is NaN when there is no ground truth (see the module docstring).
    """
    pred_match = np.asarray(pred_match)
    n_gt = len(gt_match)
    if n_gt == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
    recalls = np.cumsum(pred_match > -1).astype(np.float32) / n_gt
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])
    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    ap = np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices])
    return float(ap), precisions, recalls


def compute_ap(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
    iou_threshold: float = 0.5,
    *,
    mask_layout: MaskLayout = "HWN",
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Matterport's ``compute_ap`` for one image: ``(ap, precisions, recalls, overlaps)``.

    Args:
        gt_boxes: ``[G, 4]``; gt_class_ids: ``[G]``; gt_masks: ``[H, W, G]`` bool (or ``[G, H, W]``
            with ``mask_layout="NHW"``).
        pred_boxes: ``[P, 4]``; pred_class_ids, pred_scores: ``[P]``; pred_masks like gt_masks.
        iou_threshold: mask IoU needed for a match (>=).
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold, mask_layout=mask_layout,
    )  # fmt: skip
    ap, precisions, recalls = ap_from_matches(gt_match, pred_match)
    return ap, precisions, recalls, overlaps


def compute_ap_range(
    gt_boxes: np.ndarray,
    gt_class_ids: np.ndarray,
    gt_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_class_ids: np.ndarray,
    pred_scores: np.ndarray,
    pred_masks: np.ndarray,
    iou_thresholds: Sequence[float] | None = None,
    *,
    mask_layout: MaskLayout = "HWN",
) -> float:
    """Matterport's ``compute_ap_range``: mean of :func:`compute_ap` over IoU 0.50:0.05:0.95."""
    thresholds = np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else iou_thresholds
    args = (gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks)
    aps = [compute_ap(*args, float(t), mask_layout=mask_layout)[0] for t in thresholds]
    return float(np.mean(aps))


def compute_map(
    gt_boxes: Sequence[np.ndarray],
    gt_class_ids: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    pred_boxes: Sequence[np.ndarray],
    pred_class_ids: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    *,
    mask_layout: MaskLayout = "HWN",
) -> float:
    """Mean of :func:`compute_ap` over images (each argument a per-image list, as compute_ap's).

    Images without ground truth are left out; NaN if no image has ground truth.
    """
    lists = (gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks)
    if len({len(x) for x in lists}) != 1:
        raise EvaluationError(f"compute_map: per-image lists differ in length ({', '.join(str(len(x)) for x in lists)})")
    aps = [compute_ap(*args, iou_threshold=iou_threshold, mask_layout=mask_layout)[0] for args in zip(*lists)]
    return mean_ap(aps)


def mean_ap(aps: Sequence[float]) -> float:
    """Mean of per-image APs, leaving out NaN (images without ground truth); NaN if none is left."""
    values = np.asarray(aps, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")

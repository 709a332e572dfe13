"""Instance-level confusion matrix with a background row and column.

Per image, predictions (at or above a score threshold) are matched to ground-truth instances by
mask IoU, class-agnostically: in decreasing score order, each prediction takes the still
unmatched ground truth with the highest IoU, if that IoU is >= ``iou_threshold`` (0.5).

* matched pair                 -> ``matrix[gt_label, pred_label] += 1`` (diagonal if classes agree)
* unmatched ground truth       -> ``matrix[gt_label, 0] += 1``  (missed: predicted "background")
* unmatched prediction         -> ``matrix[0, pred_label] += 1`` (false positive on background)
* unmatched prediction lying on a crowd region (``|pred & crowd| / |pred| >= iou_threshold``)
  is not counted, as COCO ignores it.

Rows are ground truth, columns predictions; label 0 is background, 1..K the classes.
"""

from __future__ import annotations

import numpy as np

from .common import EvaluationError

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Accumulates ``matrix`` ``[K + 1, K + 1]`` int64 over images (see the module docstring)."""

    def __init__(self, num_classes: int, iou_threshold: float = 0.5) -> None:
        """``num_classes`` K counts the object classes only (labels 1..K); 0 is background."""
        if num_classes < 1:
            raise EvaluationError(f"num_classes: must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.iou_threshold = float(iou_threshold)
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(
        self,
        iou: np.ndarray,
        gt_labels: np.ndarray,
        pred_labels: np.ndarray,
        pred_scores: np.ndarray,
        crowd_iou: np.ndarray | None = None,
    ) -> None:
        """Add one image.

        Args:
            iou: ``[P, G]`` mask IoU between predictions and (non-crowd) ground truth.
            gt_labels: ``[G]`` in 1..K; pred_labels, pred_scores: ``[P]`` (labels in 1..K).
            crowd_iou: optional ``[P, C]``: ``|pred & crowd| / |pred|`` for the crowd regions.
        """
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        pred_labels = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        iou = np.asarray(iou, dtype=np.float64).reshape(len(pred_labels), len(gt_labels))
        for name, labels in (("gt_labels", gt_labels), ("pred_labels", pred_labels)):
            if labels.size and (labels.min() < 1 or labels.max() > self.num_classes):
                raise EvaluationError(f"{name}: labels must lie in 1..{self.num_classes}, got {labels.min()}..{labels.max()}")
        gt_taken = np.zeros(len(gt_labels), dtype=bool)
        order = np.argsort(-np.asarray(pred_scores, dtype=np.float64), kind="stable")
        for p in order:
            candidates = np.where(gt_taken, -1.0, iou[p])
            g = int(np.argmax(candidates)) if candidates.size else -1
            if g >= 0 and candidates[g] >= self.iou_threshold:
                gt_taken[g] = True
                self.matrix[gt_labels[g], pred_labels[p]] += 1
            elif crowd_iou is not None and np.size(crowd_iou) and np.max(np.asarray(crowd_iou)[p]) >= self.iou_threshold:
                continue
            else:
                self.matrix[0, pred_labels[p]] += 1
        for g in np.flatnonzero(~gt_taken):
            self.matrix[gt_labels[g], 0] += 1

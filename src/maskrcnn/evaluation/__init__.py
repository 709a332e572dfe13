"""Evaluation: COCO metrics (pycocotools-equal), Matterport's VOC AP, the DSB 2018 score,
a confusion matrix, PR-curve / confusion plots and report files.

Ground truth is a COCO dict, predictions a list of COCO result dicts (see docs/design.md,
"Predictions contract"); :class:`Evaluator` also accepts per-image arrays. A model's class ids
meet the ground truth's categories through :func:`match_classes` (by id, else by name).
"""

from .classes import ClassMatch, match_classes
from .coco import evaluate_coco
from .common import EvaluationError
from .confusion import ConfusionMatrix
from .dsb import dsb_image_score, dsb_score, remove_overlaps, rle_decode, rle_encode
from .evaluator import Evaluator
from .plots import plot_confusion_matrix, plot_pr_curves
from .report import format_table, write_report
from .run import NothingEvaluated, evaluate_model
from .voc import compute_ap, compute_map

__all__ = [
    "ClassMatch",
    "ConfusionMatrix",
    "EvaluationError",
    "Evaluator",
    "compute_ap",
    "compute_map",
    "dsb_image_score",
    "dsb_score",
    "evaluate_coco",
    "evaluate_model",
    "format_table",
    "match_classes",
    "NothingEvaluated",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "remove_overlaps",
    "rle_decode",
    "rle_encode",
    "write_report",
]

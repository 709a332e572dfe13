"""PNG plots of evaluation results: precision-recall curves and the confusion matrix.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend
change), so it works on headless machines and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.files import atomic_write
from .common import EvaluationError

__all__ = ["plot_confusion_matrix", "plot_pr_curves"]

_MAX_LEGEND = 20

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    """A new figure on an Agg canvas (matplotlib is imported here, on first use only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    return atomic_write(path, partial(fig.savefig, dpi=dpi, format="png"))


def plot_pr_curves(
    metrics: dict[str, Any],
    path: str | Path,
    iou: float = 0.5,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Precision-recall curves per class plus the mean over classes, at one IoU threshold.

    Args:
        metrics: one IoU type's entry of :func:`maskrcnn.evaluation.coco.evaluate_coco`'s result
            (uses ``precision`` ``[T, R, K]``, ``recall_thresholds``, ``iou_thresholds``,
            ``category_names``). Classes without ground truth (precision -1) are not drawn.
        path: output PNG (640x480 pixels at the default dpi).
        iou: one of ``iou_thresholds`` (0.5 and 0.75 are the usual ones).
    """
    precision = np.asarray(metrics["precision"], dtype=np.float64)
    rec = np.asarray(metrics["recall_thresholds"], dtype=np.float64)
    ious = np.asarray(metrics["iou_thresholds"], dtype=np.float64)
    hits = np.flatnonzero(np.isclose(ious, iou))
    if hits.size == 0:
        raise EvaluationError(f"iou: {iou} is not one of the evaluated IoU thresholds {ious.round(2).tolist()}")
    curves = precision[hits[0]]  # [R, K]
    names: Sequence[str] = metrics["category_names"]

    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    valid = [k for k in range(curves.shape[1]) if np.any(curves[:, k] > -1)]
    for k in valid:
        ap = float(np.mean(curves[:, k]))
        ax.plot(rec, curves[:, k], linewidth=1.0, label=f"{names[k]} (AP {ap:.3f})" if len(valid) <= _MAX_LEGEND else None)
    if valid:
        mean_curve = curves[:, valid].mean(axis=1)
        ax.plot(rec, mean_curve, color="black", linewidth=2.5, label=f"all classes (AP {float(mean_curve.mean()):.3f})")
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"precision-recall at IoU {iou:.2f}")
    if valid:
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_confusion_matrix(
    confusion: dict[str, Any],
    path: str | Path,
    normalize: bool = False,
    dpi: int = 100,
) -> Path:
    """The confusion matrix as a heat map with counts (rows ground truth, columns predictions).

    Args:
        confusion: ``{"labels": [...], "matrix": [[int]]}`` (the Evaluator report's
            ``confusion_matrix``; ``labels[0]`` is the background).
        normalize: show each row as fractions of its ground-truth count instead of counts.
    """
    matrix = np.asarray(confusion["matrix"], dtype=np.float64)
    labels = list(confusion["labels"])
    if matrix.ndim != 2 or matrix.shape != (len(labels), len(labels)):
        raise EvaluationError(f"confusion: matrix of shape {matrix.shape} does not fit {len(labels)} labels")
    shown = matrix
    if normalize:
        rows = matrix.sum(axis=1, keepdims=True)
        shown = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(labels)
    side = max(4.8, 0.55 * n + 2.5)
    fig = _figure(side, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 30:
        top = shown.max() if shown.size else 0.0
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="white" if top and shown[i, j] > 0.6 * top else "black")  # fmt: skip
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    fig.tight_layout()
    return _save(fig, path, dpi)

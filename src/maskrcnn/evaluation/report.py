"""Save an evaluation report (JSON + arrays + PNG plots) and format it for the console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.files import atomic_write_text
from .coco import COCO_MAX_DETS, SUMMARY_KEYS, capped_note
from .plots import plot_confusion_matrix, plot_pr_curves

__all__ = ["format_table", "to_jsonable", "write_report"]

_ARRAY_KEYS = ("precision", "recall")


def _coco_part(report: dict[str, Any]) -> dict[str, Any]:
    """The ``{iou_type: metrics}`` part of an Evaluator report, or the report itself if it is one."""
    if "coco" in report:
        return report["coco"] or {}
    return {k: v for k, v in report.items() if k in ("bbox", "segm") and isinstance(v, dict)}


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dump`` accepts: numpy scalars to Python, NaN/inf to None,
    and the large ``precision`` / ``recall`` arrays left out (they go to ``pr_arrays.npz``)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not (k in _ARRAY_KEYS and isinstance(v, np.ndarray))}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``pr_arrays.npz`` and the PNGs into ``out_dir``; return the paths.

    Args:
        report: ``Evaluator.evaluate()``'s dict (or ``evaluate_coco``'s).
        out_dir: created if needed; existing files of the same names are replaced.

    Files: ``report.json``; ``pr_arrays.npz`` (``<iou_type>_precision`` ``[T, R, K]`` and
    ``<iou_type>_recall`` ``[T, K]``); ``pr_<iou_type>_iou50.png`` and ``pr_<iou_type>_iou75.png``
    per IoU type; ``confusion_matrix.png`` when the report has one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    path = out / "report.json"
    atomic_write_text(path, json.dumps(to_jsonable(report), indent=2) + "\n")
    written.append(path)

    coco = _coco_part(report)
    arrays = {f"{t}_{k}": np.asarray(m[k]) for t, m in coco.items() for k in _ARRAY_KEYS if k in m}
    if arrays:
        path = out / "pr_arrays.npz"
        np.savez_compressed(path, **arrays)
        written.append(path)
    for iou_type, metrics in coco.items():
        for iou in (0.5, 0.75):
            name = f"pr_{iou_type}_iou{round(iou * 100)}.png"
            written.append(plot_pr_curves(metrics, out / name, iou, title=f"{iou_type}: precision-recall at IoU {iou:.2f}"))
    if report.get("confusion_matrix"):
        written.append(plot_confusion_matrix(report["confusion_matrix"], out / "confusion_matrix.png"))
    return written


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "-" if v == -1 else f"{v:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """A compact text table: the 12 COCO numbers per IoU type, per-class AP, VOC mAP and DSB."""
    coco = _coco_part(report)
    types = list(coco)
    lines = []
    if types:
        lines.append(f"{'metric':<10}" + "".join(f"{t:>10}" for t in types))
        max_dets = coco[types[0]].get("max_dets", COCO_MAX_DETS)
        for key in SUMMARY_KEYS:
            label = f"AR{max_dets}" if key == "AR100" else key
            lines.append(f"{label:<10}" + "".join(f"{_fmt(coco[t][key]):>10}" for t in types))
        names = coco[types[0]].get("category_names", [])
        if names:
            width = max(10, *(len(n) + 2 for n in names))
            lines.append("")
            lines.append(f"{'class AP':<{width}}" + "".join(f"{t:>10}" for t in types))
            for n in names:
                lines.append(f"{n:<{width}}" + "".join(f"{_fmt(coco[t]['per_class_AP'].get(n)):>10}" for t in types))
    extras = [("VOC mAP@0.5 (masks, Matterport)", report.get("voc_map50")), ("DSB 2018 score", report.get("dsb_score"))]
    extra_lines = [f"{label}: {_fmt(v)}" for label, v in extras if label and v is not None]
    if extra_lines:
        lines.append("")
        lines.extend(extra_lines)
    note = capped_note(coco[types[0]].get("capped"), max_dets, "--max-dets") if types else None
    if note:
        lines.extend(["", "note: " + note])
    return "\n".join(lines)

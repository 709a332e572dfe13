"""What every model of ``benchmarks/nuclei.py`` shares: the result row, the load average and the
scoring of a peer's predictions with this project's :class:`~maskrcnn.evaluation.Evaluator`."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from maskrcnn.config import Config
from maskrcnn.data.dataset import Dataset

__all__ = ["loadavg", "make_row", "report_metrics", "evaluate_predictions", "COLUMNS"]

#: one image's predictions at its original size: boxes ``[N, 4]`` xyxy pixels, scores ``[N]``,
#: class ids ``[N]`` (1 = nucleus) and bool masks ``[N, H, W]``
Predictions = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


#: detections per image scored by the "all" columns: every nucleus of the densest val image (151)
ALL_DETS = 400


def evaluate_predictions(val_ds: Dataset, predict: Callable[[list[int]], list[Predictions]],
                         batch: int = 2) -> tuple[dict[str, Any], float]:
    """Score ``predict`` (image ids -> :data:`Predictions` per image) on every image of ``val_ds`` with
    the Evaluator ``maskrcnn evaluate`` uses (DSB score on predictions with score >= 0.5);
    returns the report and the seconds it took (prediction included). COCO scores 100 detections
    per image, fewer than two val images hold; ``report["coco_all"]`` is COCO at :data:`ALL_DETS`."""
    from maskrcnn.data.convert import dataset_to_coco
    from maskrcnn.evaluation import Evaluator

    t0 = time.perf_counter()
    ids = [int(i) for i in val_ds.image_ids]
    evaluator = Evaluator(dataset_to_coco(val_ds, ids), None, score_threshold=0.5)
    for s in range(0, len(ids), batch):
        chunk = ids[s:s + batch]
        for image_id, (boxes, scores, labels, masks) in zip(chunk, predict(chunk)):
            if len(masks) == 0:
                masks = np.zeros((0, *val_ds.load_image(image_id).shape[:2]), bool)
            evaluator.add_arrays(image_id, boxes, scores, labels, masks)
    report = evaluator.evaluate()
    report["coco_all"] = evaluator.evaluate_coco(ALL_DETS)
    return report, time.perf_counter() - t0


def make_row(label: str, config: Config | None, n_params: int, steps: int, images: int, times: list[float], train_s: float,
             eval_s: float, report: dict[str, Any], n_train: int, load_before: Any, load_after: Any,
             last_loss: float | None) -> dict[str, Any]:
    """One model's result (the table's and the JSON's row)."""
    model = None
    if config is not None:
        model = (f"ours {config.backbone}" + (f" w{config.backbone_width}" if config.backbone_width != 64 else "")
                 + f" {config.architecture}, FPN {config.fpn_channels}, {config.image_resize_mode} {config.image_min_dim}"
                 + (f" x{config.image_min_scale:g}" if config.image_min_scale else "") + f", batch {config.images_per_gpu}")
    return {
        "name": label,
        "model": model,
        "params_m": n_params / 1e6,
        "steps": steps,
        "images": images,
        "epochs": images / max(1, n_train),
        "train_s": train_s,
        "s_per_step": train_s / max(1, steps),
        "median_s_per_step": statistics.median(times) if times else float("nan"),
        "images_per_s": images / max(train_s, 1e-9),
        "eval_s": eval_s,
        **report_metrics(report),
        "last_loss": last_loss,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def report_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The scores of an :func:`evaluate_predictions` report, as the row holds them."""
    segm, bbox = report["coco"]["segm"], report["coco"]["bbox"]
    return {
        "mask_ap": float(segm["AP"]),
        "mask_ap50": float(segm["AP50"]),
        "mask_ap_all": float(report["coco_all"]["segm"]["AP"]),  # every nucleus scored (ALL_DETS per image)
        "mask_ap50_all": float(report["coco_all"]["segm"]["AP50"]),
        "mask_ap75": float(segm["AP75"]),
        "box_ap": float(bbox["AP"]),
        "box_ap50": float(bbox["AP50"]),
        "dsb": float(report["dsb_score"]),
        "max_dets": segm.get("max_dets"),  # COCO's 100 per image; "capped": the val images with more nuclei
        "capped": segm.get("capped"),
        "predictions": int(report["num_predictions"]),
    }


COLUMNS = [("name", "model", "s"), ("params_m", "params M", ".1f"), ("steps", "steps", "d"), ("epochs", "epochs", ".1f"),
           ("s_per_step", "s/step", ".2f"), ("images_per_s", "img/s", ".2f"), ("train_s", "train s", ".0f"),
           ("eval_s", "eval s", ".0f"), ("mask_ap", "mask AP", ".3f"), ("mask_ap50", "AP50", ".3f"),
           ("mask_ap75", "AP75", ".3f"), ("mask_ap50_all", "AP50 all", ".3f"), ("box_ap", "box AP", ".3f"), ("dsb", "DSB", ".3f")]

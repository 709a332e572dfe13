"""Validation metrics during training: mask and box AP of the model on a validation dataset.

:func:`mask_ap_evaluator` builds the ``evaluate_fn`` the trainer calls after each validation. It
runs :func:`maskrcnn.evaluation.evaluate_model` (the same detection and metrics as
``maskrcnn evaluate``) with the dataset's COCO ground truth built once for the whole run. A
failure (e.g. an unreadable validation image) is logged by the trainer, which then continues
with validation losses only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["mask_ap_evaluator"]


def mask_ap_evaluator(dataset: Any, max_images: int | None = None, batch_size: int = 2) -> Callable[[nn.Module, Any], dict[str, float]]:
    """An ``evaluate_fn(model, _) -> {"mask_ap", "mask_ap50", "box_ap", "box_ap50"}`` over ``dataset``.

    Args:
        dataset: a prepared :class:`maskrcnn.data.Dataset` (the validation set).
        max_images: evaluate on the first N images only (None: all).
        batch_size: images per detection batch.
    """
    cache: dict[str, Any] = {}

    def evaluate(model: nn.Module, _dataset: Any = None) -> dict[str, float]:
        from ..data.convert import dataset_to_coco
        from ..evaluation import evaluate_model

        if "gt" not in cache:
            ids = [int(i) for i in dataset.image_ids][:max_images]
            cache["gt"] = dataset_to_coco(dataset, ids)
        report = evaluate_model(_validation_predictor(model), dataset, batch_size=batch_size, max_images=max_images,
                                gt_coco=cache["gt"])
        coco = report["coco"]
        return {"mask_ap": float(coco["segm"]["AP"]), "mask_ap50": float(coco["segm"]["AP50"]),
                "box_ap": float(coco["bbox"]["AP"]), "box_ap50": float(coco["bbox"]["AP50"])}

    return evaluate


def _validation_predictor(model: nn.Module) -> Any:
    """The predictor that validates ``model`` (resizing per its ``Config.detect_resize_mode``)."""
    from ..inference.predictor import Predictor

    return Predictor(model, device=next(model.parameters()).device)

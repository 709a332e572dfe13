"""Evaluate a model on a dataset: detection, then every metric in one streaming pass.

This is what ``maskrcnn evaluate`` and the trainer's per-epoch validation call.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import Dataset
from ..errors import DataError
from .evaluator import Evaluator

__all__ = ["evaluate_model"]


def evaluate_model(model: Any, dataset: Dataset, *, batch_size: int = 2, score_threshold: float = 0.5,
                   max_images: int | None = None, progress: bool = False, device: str | torch.device | None = None,
                   gt_coco: dict | None = None) -> dict[str, Any]:
    """COCO box/mask AP (pycocotools-equal), VOC mAP@0.5, DSB score and confusion matrix of ``model`` on ``dataset``.

    ``model`` is a :class:`~maskrcnn.inference.predictor.Predictor` or a
    :class:`~maskrcnn.modeling.MaskRCNN` (left in eval mode; the caller restores train mode).
    The model's class ids are the dataset's internal ids (as when it was trained on it).
    Images are read, detected and scored one batch at a time; only RLEs are kept. An unreadable
    image is reported in ``report["skipped_images"]`` and counts as an image without predictions.
    """
    from ..data.convert import dataset_to_coco
    from ..inference.predictor import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor(model, device=device or next(model.parameters()).device)
    ids = [int(i) for i in dataset.image_ids][: max_images]
    gt = gt_coco if gt_coco is not None else dataset_to_coco(dataset, ids)
    evaluator = Evaluator(gt, None, score_threshold=score_threshold)
    it = range(0, len(ids), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, unit="batch", desc="evaluate")
    skipped: list[dict[str, str]] = []
    for start in it:
        chunk, images = [], []
        for i in ids[start:start + batch_size]:
            try:
                images.append(predictor.to_array(dataset.load_image(i), dataset.image_reference(i)))
                chunk.append(i)
            except DataError as exc:  # report and skip: the image scores as "no predictions"
                skipped.append({"image": dataset.image_reference(i), "error": str(exc)})
        if not images:
            continue
        for image_id, det in zip(chunk, predictor.detect(images, batch_size=batch_size)):
            evaluator.add_arrays(image_id, det.boxes, det.scores, det.class_ids, det.masks)
    report = evaluator.evaluate()
    report["skipped_images"] = skipped
    return report

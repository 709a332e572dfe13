"""Evaluate a model on a dataset: detection, then every metric in one streaming pass.

This is what ``maskrcnn evaluate`` and the trainer's per-epoch validation call.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import Dataset
from ..errors import DataError
from .classes import dataset_categories, match_classes, model_class_names
from .coco import COCO_MAX_DETS
from .common import EvaluationError
from .evaluator import Evaluator

__all__ = ["NothingEvaluated", "evaluate_model"]


class NothingEvaluated(EvaluationError):
    """No image of the dataset could be read; ``skipped`` lists each one (``{"image", "error"}``)."""

    def __init__(self, message: str, skipped: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.skipped = skipped


def evaluate_model(model: Any, dataset: Dataset, *, batch_size: int = 2, score_threshold: float = 0.5,
                   max_images: int | None = None, progress: bool = False, device: str | torch.device | None = None,
                   gt_coco: dict | None = None, model_name: str = "the model", data_name: str = "the dataset",
                   max_dets: int = COCO_MAX_DETS) -> dict[str, Any]:
    """COCO box/mask AP (pycocotools-equal), VOC mAP@0.5, DSB score and confusion matrix of ``model`` on ``dataset``.

    ``model`` is a :class:`~maskrcnn.inference.predictor.Predictor` or a
    :class:`~maskrcnn.modeling.MaskRCNN` (left in eval mode; the caller restores train mode).
    Its class ids are paired with the dataset's categories by id where names agree, else by name
    (:mod:`maskrcnn.evaluation.classes`): COCO's 91-id weights score on a COCO file's own ids, a
    model trained on a dataset scores on it. Predictions of model classes that are not in the
    dataset are not scored (``report["class_match"]`` lists them and the dropped counts); a
    category no model class can pair with is a one-line :class:`EvaluationError` naming
    ``model_name`` and ``data_name``.

    Images are read, detected and scored one batch at a time; only RLEs are kept. An unreadable
    image is reported in ``report["skipped_images"]`` (``{"image", "error"}``) and counts as an
    image without predictions; when no image can be read, :class:`NothingEvaluated` is raised.
    ``gt_coco``: the ground truth when already built (``dataset_to_coco(dataset, ids)``, internal ids).
    ``max_dets``: COCO detections scored per image and class (see :class:`Evaluator`).
    """
    from ..data.convert import dataset_to_coco
    from ..inference.predictor import Predictor

    ids = [int(i) for i in dataset.image_ids][: max_images]
    if not ids:
        raise EvaluationError(f"{data_name}: has no images to evaluate; check the dataset path and the problems "
                              "`maskrcnn check-data` lists")
    match = match_classes(model_class_names(model), dataset_categories(dataset), model=model_name, data=data_name)
    predictor = model if isinstance(model, Predictor) else Predictor(model, device=device or next(model.parameters()).device)
    gt = gt_coco if gt_coco is not None else dataset_to_coco(dataset, ids)
    evaluator = Evaluator(gt, None, score_threshold=score_threshold, class_match=match, max_dets=max_dets)
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
    if len(skipped) == len(ids):
        raise NothingEvaluated(f"{data_name}: none of its {len(ids)} images could be read (first: {skipped[0]['error']}); "
                               "fix or remove the image files", skipped)
    report = evaluator.evaluate()
    report["skipped_images"] = skipped
    return report

"""``Evaluator``: accumulate per-image predictions, then compute every metric in one report.

    ev = Evaluator(gt_coco, class_names=config.class_names)
    for image_id, det in ...:
        ev.add_arrays(image_id, det.boxes, det.scores, det.class_ids, det.masks)
        # or: ev.add(image_id, det.to_coco(image_id))
    report = ev.evaluate()

Predictions are stored as COCO result dicts with compressed-RLE masks (a few hundred bytes per
instance), never as dense masks; ``evaluate`` decodes one image at a time.

The report (a dict; ``maskrcnn.evaluation.report.write_report`` saves it):

* ``coco``: :func:`maskrcnn.evaluation.coco.evaluate_coco` on all predictions, per IoU type
  (AP, AP50, ..., per-class AP, precision arrays for PR curves).
* ``voc_map50``: Matterport's ``compute_ap`` at mask IoU 0.5 per image (all predictions), averaged
  over the images that have ground truth.
* ``dsb_score``: the Data Science Bowl 2018 score (class-agnostic; predictions with score >=
  ``score_threshold``, overlaps removed by score; crowd annotations left out), mean over images.
* ``confusion_matrix``: :class:`maskrcnn.evaluation.confusion.ConfusionMatrix` on predictions
  with score >= ``score_threshold``; ``labels[0]`` is "background", rows ground truth.

* ``ignored_predictions``: predictions of classes that are not ground-truth categories (not scored);
  ``class_match`` (with ``class_names`` or ``class_match``): how model classes were paired with
  categories, the model classes that are not in the ground truth and their dropped predictions
  (:meth:`maskrcnn.evaluation.classes.ClassMatch.summary`).

Mask metrics (VOC, DSB, confusion) need masks, so they are ``None`` when ``iou_types`` has no
``"segm"``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .classes import ClassMatch, gt_categories, match_classes
from .coco import COCO_MAX_DETS, IOU_TYPES, _category_names, check_max_dets, evaluate_coco, prepare_ground_truth
from .common import EvaluationError, ann_to_rle, decode_rle, masks_to_rles, rle_iou
from .confusion import ConfusionMatrix
from .dsb import dsb_score_from_iou
from .voc import ap_from_matches, matches_from_overlaps, mean_ap

__all__ = ["Evaluator"]


def _disjoint_rles(rles: Sequence[dict[str, Any]], scores: np.ndarray, height: int, width: int) -> list[dict[str, Any]]:
    """The masks made disjoint by score (highest keeps contested pixels), empty ones dropped."""
    claimed = np.zeros((height, width), dtype=bool)
    out = []
    for i in np.argsort(-scores, kind="stable"):
        m = decode_rle(rles[i]) & ~claimed
        claimed |= m
        if m.any():
            out.extend(masks_to_rles(m[None]))
    return out


class Evaluator:
    """Collects predictions for the images of a COCO ground truth and computes the metrics."""

    def __init__(
        self,
        gt_coco: dict[str, Any],
        class_names: Sequence[str] | None = None,
        *,
        iou_types: Sequence[str] = IOU_TYPES,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        backend: str = "auto",
        class_match: ClassMatch | None = None,
        max_dets: int = COCO_MAX_DETS,
    ) -> None:
        """
        Args:
            gt_coco: COCO ground-truth dict (``maskrcnn.data.convert.dataset_to_coco``).
            class_names: the model's class names indexed by class id, ``class_names[0]`` being
                the background (``Dataset.class_names``); ids given to :meth:`add_arrays` are
                mapped to ground-truth categories by id where names agree, else by name
                (:func:`maskrcnn.evaluation.classes.match_classes`; every category needs a class).
                ``None``: class ids are category ids.
            iou_types: COCO IoU types to evaluate (``"bbox"``, ``"segm"``).
            score_threshold: minimum score of the predictions counted by the DSB score and the
                confusion matrix (COCO AP and VOC AP use all predictions).
            iou_threshold: mask IoU that makes a match in the confusion matrix.
            backend: COCO backend, see :func:`maskrcnn.evaluation.coco.evaluate_coco`.
            class_match: instead of ``class_names``, a pairing already made (e.g. by
                :func:`maskrcnn.evaluation.run.evaluate_model` against a dataset's own category
                ids); its category keys must be the ground truth's category ids.
            max_dets: COCO detections scored per image and class (100; raise it for images denser
                than that, see :func:`maskrcnn.evaluation.coco.capped_images`).
        """
        self._gt = prepare_ground_truth(gt_coco)
        self.iou_types = tuple(iou_types)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.backend = backend
        self.max_dets = check_max_dets(max_dets)  # a bad value fails here, not after every image is detected
        self._images = {img["id"]: img for img in self._gt["images"]}
        self._anns: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in self._gt["annotations"]:
            self._anns[ann["image_id"]].append(ann)
        self._cat_ids = sorted(c["id"] for c in self._gt["categories"])
        self._cat_label = {c: k + 1 for k, c in enumerate(self._cat_ids)}
        self._names = _category_names(self._gt["categories"])
        self._match = class_match if class_match is not None else self._map_classes(class_names)
        self._results: dict[Any, list[dict[str, Any]]] = {}
        self._ignored = 0

    def _map_classes(self, class_names: Sequence[str] | None) -> ClassMatch | None:
        if class_names is None:
            return None
        return match_classes(list(class_names), gt_categories(self._gt), model="class_names", data="the ground truth")

    # ------------------------------------------------------------------------------- input
    def add(self, image_id: Any, results: Iterable[dict[str, Any]]) -> None:
        """Add the predictions of one image as COCO result dicts (``bbox`` xywh, RLE ``segmentation``).

        Each image may be added once; images never added count as having no predictions.
        """
        if image_id not in self._images:
            raise EvaluationError(f"image_id: {image_id!r} is not an image of the ground truth; use the ids of gt['images']")
        if image_id in self._results:
            raise EvaluationError(f"image_id: predictions for image {image_id!r} were already added; add each image once")
        kept = []
        for i, res in enumerate(results):
            res = dict(res)
            if res.setdefault("image_id", image_id) != image_id:
                raise EvaluationError(f"results[{i}]: image_id {res['image_id']!r} differs from the image being added ({image_id!r})")
            if "category_id" not in res or "score" not in res:
                raise EvaluationError(f"results[{i}]: needs 'category_id' and 'score' (COCO result format)")
            if "segm" in self.iou_types and "segmentation" not in res:
                raise EvaluationError(f"results[{i}]: no 'segmentation'; use Evaluator(..., iou_types=('bbox',)) for boxes only")
            if res["category_id"] not in self._cat_label:
                self._ignored += 1
                continue
            segm = res.get("segmentation")
            if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
                res["segmentation"] = dict(segm, counts=segm["counts"].decode("ascii"))
            kept.append(res)
        self._results[image_id] = kept

    def add_results(self, results: Iterable[dict[str, Any]]) -> None:
        """Add COCO result dicts of any images (e.g. a loaded results JSON), grouped by ``image_id``."""
        grouped: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for i, res in enumerate(results):
            if "image_id" not in res:
                raise EvaluationError(f"results[{i}]: no 'image_id' (COCO result format)")
            grouped[res["image_id"]].append(res)
        for image_id, group in grouped.items():
            self.add(image_id, group)

    def add_arrays(
        self,
        image_id: Any,
        boxes: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
        masks: np.ndarray,
    ) -> None:
        """Add the predictions of one image as arrays.

        Args:
            boxes: ``[N, 4]`` float ``(x1, y1, x2, y2)`` in original image pixels.
            scores: ``[N]``; class_ids: ``[N]`` model class ids (see ``class_names``).
            masks: ``[N, H, W]`` bool, full image size (``H, W`` of the ground-truth image).
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(class_ids).reshape(-1).astype(np.int64)
        masks = np.asarray(masks, dtype=bool)
        n = len(boxes)
        if not (len(scores) == len(class_ids) == n and masks.ndim == 3 and masks.shape[0] == n):
            raise EvaluationError(
                f"add_arrays: image {image_id!r} has {n} boxes, {len(scores)} scores, {len(class_ids)} class ids and masks "
                f"{tuple(masks.shape)}; expected [N,4], [N], [N], [N,H,W]"
            )
        img = self._images.get(image_id)
        if img is not None and n and masks.shape[1:] != (img["height"], img["width"]):
            raise EvaluationError(
                f"add_arrays: masks of image {image_id!r} are {masks.shape[1]}x{masks.shape[2]} but the image is "
                f"{img['height']}x{img['width']}; paste masks at the original image size"
            )
        if self._match is not None:
            keep, cats = self._match.select(class_ids)
            self._ignored += int((~keep).sum())
            boxes, scores, masks, class_ids = boxes[keep], scores[keep], masks[keep], cats
        rles = masks_to_rles(masks)
        results = []
        for k in range(len(boxes)):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_ids[k]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(scores[k]),
                    "segmentation": rles[k],
                }
            )
        self.add(image_id, results)

    # ----------------------------------------------------------------------------- metrics
    def evaluate_coco(self, max_dets: int | None = None) -> dict[str, dict[str, Any]]:
        """The report's ``coco`` part alone (:func:`maskrcnn.evaluation.coco.evaluate_coco`), scoring
        ``max_dets`` detections per image and class (default: the evaluator's ``max_dets``)."""
        results = [r for lst in self._results.values() for r in lst]
        return evaluate_coco(self._gt, results, self.iou_types, self.backend, self.max_dets if max_dets is None else max_dets)

    def evaluate(self) -> dict[str, Any]:
        """Compute the report (see the module docstring); the evaluator can keep accumulating after."""
        results = [r for lst in self._results.values() for r in lst]
        report: dict[str, Any] = {
            "num_images": len(self._images),
            "num_images_with_predictions": len(self._results),
            "num_predictions": len(results),
            "ignored_predictions": self._ignored,
            "class_names": [self._names[c] for c in self._cat_ids],
            "settings": {"score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold, "backend": self.backend,
                         "max_dets": self.max_dets},
            "coco": self.evaluate_coco(),
            "voc_map50": None,
            "dsb_score": None,
            "confusion_matrix": None,
        }
        if self._match is not None:
            report["class_match"] = self._match.summary()
        if "segm" in self.iou_types:
            report.update(self._mask_metrics())
        return report

    def _mask_metrics(self) -> dict[str, Any]:
        cm = ConfusionMatrix(len(self._cat_ids), self.iou_threshold)
        aps, dsb = [], []
        for image_id, img in self._images.items():
            h, w = int(img["height"]), int(img["width"])
            anns = self._anns.get(image_id, [])
            gt = [a for a in anns if not a["iscrowd"]]
            gt_rles = [ann_to_rle(a, h, w) for a in gt]
            crowd_rles = [ann_to_rle(a, h, w) for a in anns if a["iscrowd"]]
            gt_cats = np.array([a["category_id"] for a in gt])
            preds = self._results.get(image_id, [])
            rles = [p["segmentation"] for p in preds]
            cats = np.array([p["category_id"] for p in preds])
            scores = np.array([p["score"] for p in preds], dtype=np.float64)

            order = np.argsort(scores)[::-1]  # Matterport's order
            overlaps = rle_iou([rles[i] for i in order], gt_rles)
            gt_match, pred_match = matches_from_overlaps(overlaps, gt_cats, cats[order], 0.5)
            aps.append(ap_from_matches(gt_match, pred_match)[0])

            keep = np.flatnonzero(scores >= self.score_threshold)
            kept = [rles[i] for i in keep]
            cm.update(
                rle_iou(kept, gt_rles),
                np.array([self._cat_label[c] for c in gt_cats], dtype=np.int64),
                np.array([self._cat_label[cats[i]] for i in keep], dtype=np.int64),
                scores[keep],
                rle_iou(kept, crowd_rles, [1] * len(crowd_rles)),
            )
            disjoint = _disjoint_rles(kept, scores[keep], h, w)
            dsb.append(dsb_score_from_iou(rle_iou(gt_rles, disjoint)))
        return {
            "voc_map50": mean_ap(aps),
            "dsb_score": float(np.mean(dsb)) if dsb else float("nan"),
            "confusion_matrix": {
                "labels": ["background", *(self._names[c] for c in self._cat_ids)],
                "matrix": cm.matrix.tolist(),
                "rows": "ground truth",
                "columns": "prediction",
                "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold,
            },
        }

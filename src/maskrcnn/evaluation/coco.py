"""COCO detection and instance-segmentation metrics, numerically equal to pycocotools' COCOeval.

``evaluate_coco(gt, results)`` takes the ground truth as a COCO dict (``images``, ``annotations``,
``categories``) and the predictions as a list of COCO result dicts (``image_id``,
``category_id``, ``score``, ``bbox`` as ``[x, y, w, h]`` and/or ``segmentation`` as compressed
RLE), runs COCOeval (``evaluate`` + ``accumulate``) with one of two backends, and summarises
exactly like ``COCOeval.summarize`` (the mean of the precision / recall entries that are not -1).

Backends: ``"pycocotools"`` (the reference) and ``"faster_coco_eval"`` (C++ evaluate/accumulate;
tested to give the same numbers to 1e-6; 2e-16 apart on 5,000 synthetic images). ``"auto"`` picks
faster_coco_eval when it is installed, pycocotools otherwise: on 5,000 small images with ~10k
instances, bbox + segm take ~1-1.7 s with faster_coco_eval and ~6-7 s with pycocotools
(``benchmarks/eval_speed.py``, 2 shared CPU cores).

Differences from calling pycocotools directly, all on inputs where pycocotools fails or is wrong:

* an empty result list gives AP/AR 0 for classes with ground truth (-1 where there is none), as
  COCOeval would, instead of an ``IndexError`` in ``loadRes``;
* results whose ``category_id`` is not a ground-truth category are dropped (with a warning and
  counted in ``ignored_results``) instead of being silently mixed in;
* ground-truth annotation ids are renumbered 1..N internally: pycocotools treats a match to an
  annotation with id 0 as "no match";
* missing ``iscrowd`` (-> 0), ``area`` (-> mask area, else box area) and ``bbox`` (-> mask box)
  of ground-truth annotations are filled in; the caller's dicts are never modified.

``-1`` in any metric means "undefined" (no ground truth in that class / area range), as in
pycocotools.

Detections scored per image and class: COCO scores the ``max_dets`` = 100 best of each image
and class (``COCOeval.params.maxDets = [1, 10, 100]``). Dense images (nuclei, cells, seeds) can
hold more objects than that, and then recall and AP cannot reach 1 whatever the model does:
``evaluate_coco`` reports such images (``capped``) and ``max_dets`` raises the limit
(``maxDets = [1, 10, max_dets]``; the AP keys and ``AR100`` are then at ``max_dets``, as in
Detectron2's ``max_dets_per_image``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ..data import rle as rle_codec

from .common import EvaluationError, ann_to_rle

__all__ = [
    "BACKENDS",
    "COCO_MAX_DETS",
    "IOU_TYPES",
    "SUMMARY_KEYS",
    "available_backends",
    "capped_images",
    "capped_note",
    "check_max_dets",
    "evaluate_coco",
    "prepare_ground_truth",
    "resolve_backend",
]

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("auto", "pycocotools", "faster_coco_eval")
#: COCO's detections scored per image and class (``COCOeval.params.maxDets[-1]``)
COCO_MAX_DETS = 100
# Preference order of "auto" (measured in benchmarks/eval_speed.py).
_AUTO_ORDER = ("faster_coco_eval", "pycocotools")

# (key, ap (1) or ar (0), iou threshold, area range, max detections): COCOeval._summarizeDets.
_SUMMARY: tuple[tuple[str, int, float | None, str, int], ...] = (
    ("AP", 1, None, "all", 100),
    ("AP50", 1, 0.5, "all", 100),
    ("AP75", 1, 0.75, "all", 100),
    ("APs", 1, None, "small", 100),
    ("APm", 1, None, "medium", 100),
    ("APl", 1, None, "large", 100),
    ("AR1", 0, None, "all", 1),
    ("AR10", 0, None, "all", 10),
    ("AR100", 0, None, "all", 100),
    ("ARs", 0, None, "small", 100),
    ("ARm", 0, None, "medium", 100),
    ("ARl", 0, None, "large", 100),
)
SUMMARY_KEYS = tuple(s[0] for s in _SUMMARY)


# --------------------------------------------------------------------------------- backends
def available_backends() -> list[str]:
    """Installed backends, in ``"auto"``'s order of preference."""
    found = []
    for name in _AUTO_ORDER:
        try:
            __import__(name)
        except ImportError:
            continue
        found.append(name)
    return found


def resolve_backend(backend: str) -> str:
    """The concrete backend for ``backend`` (``"auto"`` -> the first installed one)."""
    if backend not in BACKENDS:
        raise EvaluationError(f"backend: unknown value {backend!r}; use one of {', '.join(BACKENDS)}")
    found = available_backends()
    if backend == "auto":
        if not found:
            raise EvaluationError("backend: neither pycocotools nor faster-coco-eval is installed; pip install pycocotools")
        return found[0]
    if backend not in found:
        raise EvaluationError(f"backend: {backend} is not installed; pip install {backend.replace('_', '-')} or use backend='auto'")
    return backend


# ------------------------------------------------------------------------------ ground truth
def prepare_ground_truth(gt: dict[str, Any]) -> dict[str, Any]:
    """Check a COCO ground-truth dict and return a filled-in copy (the input is not modified).

    The copy has fresh annotation dicts with ids renumbered 1..N (in order), ``iscrowd``
    (default 0), ``bbox`` (default: the mask's box) and ``area`` (default: mask area, else
    box area). Raises :class:`EvaluationError` naming the field at fault.
    """
    if not isinstance(gt, dict):
        raise EvaluationError(f"ground truth: expected a COCO dict, got {type(gt).__name__}; load the JSON file first")
    for key in ("images", "categories"):
        if not isinstance(gt.get(key), list):
            raise EvaluationError(f"ground truth: missing list '{key}'; pass a COCO dict (images, annotations, categories)")
    if not gt["categories"]:
        raise EvaluationError("ground truth: 'categories' is empty; add one entry {id, name} per class")
    sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(gt["images"]):
        if not all(k in img for k in ("id", "height", "width")):
            raise EvaluationError(f"ground truth: images[{i}] needs 'id', 'height' and 'width'")
        if img["id"] in sizes:
            raise EvaluationError(f"ground truth: image id {img['id']} appears twice in 'images'; make image ids unique")
        sizes[img["id"]] = (int(img["height"]), int(img["width"]))
    cat_ids = set()
    for i, cat in enumerate(gt["categories"]):
        if "id" not in cat or "name" not in cat:
            raise EvaluationError(f"ground truth: categories[{i}] needs 'id' and 'name'")
        if cat["id"] in cat_ids:
            raise EvaluationError(f"ground truth: category id {cat['id']} appears twice; make category ids unique")
        cat_ids.add(cat["id"])

    anns = []
    for i, src in enumerate(gt.get("annotations") or []):
        ann = dict(src)
        if ann.get("image_id") not in sizes:
            raise EvaluationError(f"ground truth: annotations[{i}] has image_id {ann.get('image_id')!r} not in 'images'")
        if ann.get("category_id") not in cat_ids:
            raise EvaluationError(f"ground truth: annotations[{i}] has category_id {ann.get('category_id')!r} not in 'categories'")
        if "bbox" not in ann and "segmentation" not in ann:
            raise EvaluationError(f"ground truth: annotations[{i}] has neither 'bbox' nor 'segmentation'")
        ann["id"] = i + 1
        ann["iscrowd"] = int(ann.get("iscrowd", 0))
        if "bbox" not in ann or "area" not in ann:
            rle = ann_to_rle(ann, *sizes[ann["image_id"]]) if "segmentation" in ann else None
            if "bbox" not in ann:
                ann["bbox"] = rle_codec.bbox(rle)
            if "area" not in ann:
                ann["area"] = float(rle_codec.area(rle)) if rle is not None else float(ann["bbox"][2] * ann["bbox"][3])
        anns.append(ann)
    out = {k: v for k, v in gt.items() if k != "annotations"}
    out["annotations"] = anns
    return out


def check_max_dets(max_dets: Any) -> int:
    """``max_dets`` as an int, or a one-line :class:`EvaluationError` unless it is a whole number >= 10."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 10:
        raise EvaluationError(f"max_dets: got {max_dets!r}; give a whole number >= 10 (COCO scores 100 detections per "
                              "image and also reports recall at 1 and 10)")
    return int(max_dets)


def capped_images(gt: dict[str, Any], max_dets: int) -> dict[str, Any] | None:
    """The images with more non-crowd ground truth of one category than ``max_dets``: COCO scores
    at most ``max_dets`` detections of each image and class, so their recall (and AP) cannot reach 1.

    Returns ``None`` when there are none, else ``{"images": count, "instances_over": ground truth
    beyond the limit in all, "most": the largest count (the limit that scores them all),
    "image_id": its image}``.
    """
    counts: dict[tuple[Any, Any], int] = defaultdict(int)
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0):
            counts[(ann["image_id"], ann["category_id"])] += 1
    over = {k: n for k, n in counts.items() if n > max_dets}
    if not over:
        return None
    (image_id, _), most = max(over.items(), key=lambda kv: kv[1])
    return {"images": len({k[0] for k in over}), "instances_over": sum(n - max_dets for n in over.values()),
            "most": most, "image_id": image_id}


def capped_note(capped: dict[str, Any] | None, max_dets: int, flag: str = "max_dets") -> str | None:
    """One line on :func:`capped_images`' result for reports and logs (``None`` when nothing is capped)."""
    if not capped:
        return None
    return (f"{capped['images']} image(s) have more ground truth of one class than the {max_dets} detections COCO scores "
            f"per image (most: {capped['most']}, image {capped['image_id']}; {capped['instances_over']} instances "
            f"cannot be found), so recall and AP cannot reach 1; {flag} {capped['most']} scores them all")


def _category_names(categories: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Category id -> name; duplicate names get their id appended so that keys stay unique."""
    counts: dict[str, int] = {}
    for c in categories:
        counts[str(c["name"])] = counts.get(str(c["name"]), 0) + 1
    return {c["id"]: (str(c["name"]) if counts[str(c["name"])] == 1 else f"{c['name']} (id {c['id']})") for c in categories}


# ----------------------------------------------------------------------------------- results
def _prepare_results(
    results: Iterable[dict[str, Any]], gt: dict[str, Any], iou_types: Sequence[str]
) -> tuple[list[dict[str, Any]], int]:
    """Copies of the results fit for ``loadRes``, and the count dropped for unknown categories."""
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    out: list[dict[str, Any]] = []
    unknown: set[Any] = set()
    dropped = 0
    for i, res in enumerate(results):
        if not isinstance(res, dict):
            raise EvaluationError(f"predictions: results[{i}] is a {type(res).__name__}, not a COCO result dict")
        for key in ("image_id", "category_id", "score"):
            if key not in res:
                raise EvaluationError(f"predictions: results[{i}] has no '{key}'; COCO results need image_id, category_id, score")
        if res["image_id"] not in image_ids:
            raise EvaluationError(f"predictions: results[{i}] has image_id {res['image_id']!r}, not a ground-truth image")
        if res["category_id"] not in cat_ids:
            unknown.add(res["category_id"])
            dropped += 1
            continue
        if "segm" in iou_types and "segmentation" not in res:
            raise EvaluationError(f"predictions: results[{i}] has no 'segmentation' (mask); evaluate with iou_types=('bbox',)")
        if "bbox" in iou_types and "bbox" not in res and "segmentation" not in res:
            raise EvaluationError(f"predictions: results[{i}] has neither 'bbox' nor 'segmentation'")
        out.append(dict(res))
    if unknown:
        warnings.warn(
            f"predictions: {dropped} results have category ids {sorted(unknown, key=str)} that are not ground-truth "
            "categories; they are ignored",
            stacklevel=3,
        )
    # loadRes decides from the first result whether areas come from the box or the mask; give
    # every result a bbox if only some have one, so that the choice holds for all of them.
    with_bbox = sum("bbox" in r for r in out)
    if 0 < with_bbox < len(out):
        for r in out:
            if "bbox" not in r:
                r["bbox"] = rle_codec.bbox(r["segmentation"])
    return out, dropped


# ---------------------------------------------------------------------------- run a backend
def _run_pycocotools(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str, max_dets: int) -> tuple[dict, Any]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(gt, annotations=[dict(a) for a in gt["annotations"]])
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:  # loadRes fails on an empty list; an empty result set is still a valid evaluation
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]), "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev.eval, ev.params


def _run_faster(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str, max_dets: int) -> tuple[dict, Any]:
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_args: Any, **_kwargs: Any) -> None:
        return None

    coco_gt = COCO(dict(gt, annotations=[dict(a) for a in gt["annotations"]]), print_function=quiet)
    coco_dt = coco_gt.loadRes([dict(r) for r in results])
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=quiet)
    ev.params.maxDets = [1, 10, max_dets]
    ev.evaluate()
    ev.accumulate()
    return ev.eval, ev.params


_RUNNERS = {"pycocotools": _run_pycocotools, "faster_coco_eval": _run_faster}


# -------------------------------------------------------------------------------- summarize
def _mean_valid(s: np.ndarray) -> float:
    """COCOeval's summary statistic: mean of entries > -1, or -1 if there are none."""
    valid = s[s > -1]
    return -1.0 if valid.size == 0 else float(np.mean(valid))


def _summarize(ev: dict[str, Any], params: Any, names: dict[int, str]) -> dict[str, Any]:
    precision = np.asarray(ev["precision"], dtype=np.float64)  # [T, R, K, A, M]
    recall = np.asarray(ev["recall"], dtype=np.float64)  # [T, K, A, M]
    iou_thrs = np.asarray(params.iouThrs)
    area_lbl = list(params.areaRngLbl)
    max_dets = list(params.maxDets)
    out: dict[str, Any] = {}
    for key, is_ap, thr, area, mdet in _SUMMARY:  # the 100 of COCO's summary is the last maxDets
        a, m = area_lbl.index(area), (len(max_dets) - 1 if mdet == COCO_MAX_DETS else max_dets.index(mdet))
        if is_ap:
            s = precision if thr is None else precision[np.where(thr == iou_thrs)[0]]
            out[key] = _mean_valid(s[:, :, :, a, m])
        else:
            s = recall if thr is None else recall[np.where(thr == iou_thrs)[0]]
            out[key] = _mean_valid(s[:, :, a, m])
    cat_ids = [int(c) for c in params.catIds]
    a_all, m_last = area_lbl.index("all"), len(max_dets) - 1
    t50 = np.where(0.5 == iou_thrs)[0]
    out["per_class_AP"] = {names[c]: _mean_valid(precision[:, :, k, a_all, m_last]) for k, c in enumerate(cat_ids)}
    out["per_class_AP50"] = {names[c]: _mean_valid(precision[t50, :, k, a_all, m_last]) for k, c in enumerate(cat_ids)}
    out["category_ids"] = cat_ids
    out["category_names"] = [names[c] for c in cat_ids]
    out["iou_thresholds"] = [float(v) for v in iou_thrs]
    out["recall_thresholds"] = [float(v) for v in params.recThrs]
    out["precision"] = precision[:, :, :, a_all, m_last].copy()
    out["recall"] = recall[:, :, a_all, m_last].copy()
    return out


# ------------------------------------------------------------------------------------ public
def evaluate_coco(
    gt: dict[str, Any],
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "auto",
    max_dets: int = COCO_MAX_DETS,
) -> dict[str, dict[str, Any]]:
    """COCO metrics of ``results`` against ``gt``, per IoU type.

    Args:
        gt: COCO ground-truth dict (``images`` with ``id/height/width``, ``annotations``,
            ``categories`` with ``id/name``). Not modified.
        results: COCO result dicts: ``image_id``, ``category_id``, ``score``, ``bbox``
            ``[x, y, w, h]`` (pixels) and, for ``"segm"``, ``segmentation`` (compressed RLE).
            Not modified.
        iou_types: any of ``"bbox"``, ``"segm"``.
        backend: ``"auto"``, ``"pycocotools"`` or ``"faster_coco_eval"``.
        max_dets: detections scored per image and class (COCO: 100; at least 10).

    Returns:
        ``{iou_type: metrics}``; ``metrics`` has the floats ``AP, AP50, AP75, APs, APm, APl,
        AR1, AR10, AR100, ARs, ARm, ARl`` (COCOeval's ``stats`` in that order, -1 = undefined),
        ``per_class_AP`` and ``per_class_AP50`` (``{category name: float}``), ``category_ids``,
        ``category_names``, ``iou_thresholds`` [T=10], ``recall_thresholds`` [R=101],
        ``precision`` (ndarray ``[T, R, K]``: COCOeval's interpolated precision at area "all",
        ``max_dets`` detections, K in ``category_ids`` order, -1 where a class has no ground truth),
        ``recall`` (ndarray ``[T, K]``), ``num_results``, ``ignored_results``, ``backend``,
        ``max_dets`` (the AP keys and ``AR100`` are at this many detections) and ``capped``
        (:func:`capped_images`: the images whose recall ``max_dets`` limits, or ``None``).
    """
    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise EvaluationError(f"iou_types: unknown value {t!r}; use 'bbox' and/or 'segm'")
    max_dets = check_max_dets(max_dets)
    name = resolve_backend(backend)
    gt_prep = prepare_ground_truth(gt)
    res_prep, dropped = _prepare_results(results, gt_prep, iou_types)
    names = _category_names(gt_prep["categories"])
    capped = capped_images(gt_prep, max_dets)
    out: dict[str, dict[str, Any]] = {}
    for iou_type in iou_types:
        ev, params = _RUNNERS[name](gt_prep, res_prep, iou_type, max_dets)
        metrics = _summarize(ev, params, names)
        metrics.update(num_results=len(res_prep), ignored_results=dropped, backend=name, max_dets=max_dets, capped=capped)
        out[iou_type] = metrics
    return out

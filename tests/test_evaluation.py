"""Tests of maskrcnn.evaluation: COCO metrics vs pycocotools, DSB score and RLE, Matterport's
VOC AP, the confusion matrix, the Evaluator end to end, plots and report files."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.errors import MaskRCNNError
from maskrcnn.evaluation import (
    ConfusionMatrix,
    EvaluationError,
    Evaluator,
    compute_ap,
    compute_map,
    dsb_image_score,
    dsb_score,
    evaluate_coco,
    format_table,
    remove_overlaps,
    rle_decode,
    rle_encode,
    write_report,
)
from maskrcnn.evaluation.coco import SUMMARY_KEYS, available_backends, prepare_ground_truth
from maskrcnn.data.synthetic import synthetic_coco

BACKENDS = ["pycocotools", "faster_coco_eval"]


def _needs(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")


# ------------------------------------------------------------------------------ COCO metrics
@pytest.fixture(scope="module")
def synthetic() -> tuple[dict, list[dict]]:
    gt, results = synthetic_coco(num_images=24, num_classes=3, image_size=(160, 200), max_instances=6, seed=3)
    return gt, results


def _reference(gt: dict, results: list[dict], iou_type: str) -> COCOeval:
    """pycocotools used directly, the way its README does."""
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def test_synthetic_set_covers_the_hard_cases(synthetic: tuple[dict, list[dict]]) -> None:
    gt, results = synthetic
    anns = gt["annotations"]
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    assert any(a["iscrowd"] for a in anns)
    assert any(isinstance(a["segmentation"], list) for a in anns)  # polygons
    assert len({a["category_id"] for a in anns}) == 3
    with_pred = {r["image_id"] for r in results}
    with_gt = {a["image_id"] for a in anns}
    assert with_gt - with_pred, "some images with ground truth must have no predictions"
    assert {i["id"] for i in gt["images"]} - with_gt, "some images must have no ground truth"


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_metrics_equal_pycocotools(synthetic: tuple[dict, list[dict]], backend: str) -> None:
    _needs(backend)
    gt, results = synthetic
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    out = evaluate_coco(gt, results, ("bbox", "segm"), backend=backend)
    assert gt == gt_before and results == results_before, "inputs must not be modified"
    for iou_type in ("bbox", "segm"):
        ref = _reference(gt, results, iou_type)
        mine = out[iou_type]
        assert mine["backend"] == backend
        np.testing.assert_allclose([mine[k] for k in SUMMARY_KEYS], ref.stats, atol=1e-6, rtol=0)
        assert 0.05 < mine["AP"] < 0.95  # a non-trivial operating point
        prec = ref.eval["precision"][:, :, :, 0, -1]
        np.testing.assert_allclose(mine["precision"], prec, atol=1e-6, rtol=0)
        np.testing.assert_allclose(mine["recall"], ref.eval["recall"][:, :, 0, -1], atol=1e-6, rtol=0)
        for k, name in enumerate(mine["category_names"]):
            s = prec[:, :, k]
            assert mine["per_class_AP"][name] == pytest.approx(s[s > -1].mean(), abs=1e-6)
        assert mine["category_names"] == ["class1", "class2", "class3"]


def test_backends_agree(synthetic: tuple[dict, list[dict]]) -> None:
    for b in BACKENDS:
        _needs(b)
    gt, results = synthetic
    a = evaluate_coco(gt, results, backend="pycocotools")
    b = evaluate_coco(gt, results, backend="faster_coco_eval")
    for t in ("bbox", "segm"):
        np.testing.assert_allclose([a[t][k] for k in SUMMARY_KEYS], [b[t][k] for k in SUMMARY_KEYS], atol=1e-6)
        np.testing.assert_allclose(a[t]["precision"], b[t]["precision"], atol=1e-6)


def _dense_image(n: int, second_image: int = 3) -> tuple[dict, list[dict]]:
    """One image with ``n`` disjoint 6x6 boxes of one class (plus an image with a few), every box
    predicted exactly, scores falling with the index."""
    images = [{"id": 1, "height": 200, "width": 200}, {"id": 2, "height": 50, "width": 50}]
    anns, res = [], []
    for k in range(n):
        box = [float(10 * (k % 20)), float(10 * (k // 20)), 6.0, 6.0]
        anns.append({"image_id": 1, "category_id": 1, "bbox": box, "area": 36.0, "iscrowd": 0})
        res.append({"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0 - k / 1000})
    for k in range(second_image):
        box = [float(10 * k), 5.0, 6.0, 6.0]
        anns.append({"image_id": 2, "category_id": 1, "bbox": box, "area": 36.0, "iscrowd": 0})
        res.append({"image_id": 2, "category_id": 1, "bbox": box, "score": 0.5})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}, res


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_images_are_capped_at_100_and_max_dets_scores_them(backend: str) -> None:
    _needs(backend)
    gt, results = _dense_image(120)
    capped = evaluate_coco(gt, results, ("bbox",), backend=backend)["bbox"]
    # COCO scores the 100 best of image 1: 103 of 123 found with precision 1, recall 103/123 = 0.837,
    # so the 101-point AP is the share of recall thresholds 0, 0.01, ..., 0.83 (84 of 101)
    assert capped["max_dets"] == 100 and capped["AR100"] == pytest.approx(103 / 123)
    assert capped["AP50"] == pytest.approx(84 / 101) and capped["AP"] == pytest.approx(84 / 101)
    assert capped["capped"] == {"images": 1, "instances_over": 20, "most": 120, "image_id": 1}
    full = evaluate_coco(gt, results, ("bbox",), backend=backend, max_dets=120)["bbox"]
    assert (full["AP"], full["AP50"], full["AR100"], full["capped"]) == (pytest.approx(1.0), pytest.approx(1.0), 1.0, None)
    assert full["AR10"] == capped["AR10"] and full["max_dets"] == 120
    # pycocotools told the same maxDets gives the same numbers
    coco_gt = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.dataset = prepare_ground_truth(gt)
        coco_gt.createIndex()
        ref = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        ref.params.maxDets = [1, 10, 110]
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    mid = evaluate_coco(gt, results, ("bbox",), backend=backend, max_dets=110)["bbox"]
    # (its summarize() gives AP as -1 unless maxDets holds 100: it asks for AP at 100 by name)
    np.testing.assert_allclose([mid[k] for k in ("AP50", "AP75", "AR1", "AR10", "AR100")], ref.stats[[1, 2, 6, 7, 8]], atol=1e-6)
    assert mid["AP"] == mid["AP50"] == pytest.approx(92 / 101)  # 113 of 123 found: recall 0.919, thresholds 0..0.91


def test_max_dets_in_the_table_the_evaluator_and_its_errors() -> None:
    gt, results = _dense_image(130)
    ev = Evaluator(gt, None, iou_types=("bbox",))
    ev.add_results(results)
    table = format_table(ev.evaluate())
    # the COCO part alone at another limit, from the same predictions
    assert ev.evaluate_coco(130)["bbox"]["AP"] == pytest.approx(1.0) and ev.evaluate_coco()["bbox"]["max_dets"] == 100
    assert "AR100" in table and "note: 1 image(s) have more ground truth of one class than the 100 detections" in table
    assert "(most: 130, image 1; 30 instances cannot be found)" in table and "--max-dets 130 scores them all" in table
    ev = Evaluator(gt, None, iou_types=("bbox",), max_dets=130)
    ev.add_results(results)
    report = ev.evaluate()
    table = format_table(report)
    assert "AR130" in table and "AR100" not in table and "note:" not in table
    assert report["settings"]["max_dets"] == 130 and report["coco"]["bbox"]["AP"] == pytest.approx(1.0)
    for bad in (5, 0, 2.5, True, "400"):
        with pytest.raises(EvaluationError, match=r"max_dets: got .*; give a whole number >= 10"):
            evaluate_coco(gt, results, ("bbox",), max_dets=bad)
        with pytest.raises(EvaluationError, match=r"max_dets: got .*; give a whole number >= 10"):
            Evaluator(gt, None, iou_types=("bbox",), max_dets=bad)  # up front, before any prediction is added


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_empty_results_gives_zero_not_a_crash(synthetic: tuple[dict, list[dict]], backend: str) -> None:
    _needs(backend)
    gt = copy.deepcopy(synthetic[0])
    gt["categories"].append({"id": 9, "name": "never_annotated"})
    out = evaluate_coco(gt, [], backend=backend)
    for t in ("bbox", "segm"):
        for k in SUMMARY_KEYS:  # every area range has ground truth, so 0 (not -1) everywhere
            assert out[t][k] == 0.0, k
        assert out[t]["per_class_AP"]["class1"] == 0.0
        assert out[t]["per_class_AP"]["never_annotated"] == -1.0  # undefined, like pycocotools
        assert out[t]["num_results"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_unknown_categories_are_dropped(synthetic: tuple[dict, list[dict]], backend: str) -> None:
    _needs(backend)
    gt, results = synthetic
    extra = [dict(results[0], category_id=99), dict(results[1], category_id=99, score=0.99)]
    with pytest.warns(UserWarning, match="99"):
        out = evaluate_coco(gt, results + extra, ("bbox",), backend=backend)
    ref = evaluate_coco(gt, results, ("bbox",), backend=backend)
    assert out["bbox"]["ignored_results"] == 2
    assert out["bbox"]["AP"] == ref["bbox"]["AP"]


def test_coco_annotation_id_zero_still_matches() -> None:
    # pycocotools treats a match to annotation id 0 as "no match" (AP 0 here); ids are renumbered.
    gt = {
        "images": [{"id": 1, "height": 50, "width": 50}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}],
    }
    res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]
    for backend in available_backends():
        assert evaluate_coco(gt, res, ("bbox",), backend=backend)["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert _reference(gt, res, "bbox").stats[0] == 0.0  # the pycocotools bug being avoided


def test_coco_user_errors_are_one_line(synthetic: tuple[dict, list[dict]]) -> None:
    gt, results = synthetic
    cases = [
        (gt, [dict(results[0], image_id=12345)], "image_id 12345"),
        (gt, [{k: v for k, v in results[0].items() if k != "score"}], "'score'"),
        (gt, [{k: v for k, v in results[0].items() if k != "segmentation"}], "iou_types=('bbox',)"),
        ({"images": gt["images"]}, results, "'categories'"),
    ]
    for g, r, fragment in cases:
        with pytest.raises(MaskRCNNError) as info:
            evaluate_coco(g, r)
        assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EvaluationError, match="backend"):
        evaluate_coco(gt, results, backend="nope")


# ---------------------------------------------------------------------------- DSB and RLE
def test_rle_encode_known_strings() -> None:
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0 1 | 1 1 -> run from pixel 2, length 3
    assert rle_encode(mask) == "2 3"
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = True  # pixel 1
    mask[1:3, 2] = True  # pixels 8, 9
    mask[:, 3] = True  # pixels 10..12 -> joins the previous run
    assert rle_encode(mask) == "1 1 8 5"
    assert rle_encode(np.zeros((2, 2), bool)) == ""
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    np.testing.assert_array_equal(rle_decode("1 1 8 5", (3, 4)), mask)
    assert not rle_decode("", (2, 2)).any()


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_rle_round_trip(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


def test_rle_decode_rejects_bad_input() -> None:
    for bad, shape in [("1 2 3", (4, 4)), ("a b", (4, 4)), ("15 5", (4, 4)), ("0 2", (4, 4))]:
        with pytest.raises(EvaluationError):
            rle_decode(bad, shape)


def _box_mask(shape: tuple[int, int], y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


def test_dsb_edge_cases() -> None:
    empty = np.zeros((0, 8, 8), dtype=bool)
    one = _box_mask((8, 8), 0, 0, 4, 4)[None]
    assert dsb_image_score(empty, empty) == 1.0
    assert dsb_image_score(empty, one) == 0.0
    assert dsb_image_score(one, empty) == 0.0
    assert dsb_image_score(one, one) == 1.0


def test_dsb_partial_overlap_counts_thresholds_strictly() -> None:
    shape = (20, 20)
    true = _box_mask(shape, 0, 0, 10, 10)[None]  # 100 px
    pred = _box_mask(shape, 0, 0, 8, 10)[None]  # 80 px inside: IoU exactly 0.8
    # TP at t = 0.50 .. 0.75 (6 of 10); at 0.80 IoU is not *above* t; else TP=0, FP=1, FN=1 -> 0.
    assert dsb_image_score(true, pred) == pytest.approx(0.6, abs=1e-12)


def test_dsb_false_positive_and_miss() -> None:
    shape = (20, 20)
    a, b = _box_mask(shape, 0, 0, 5, 5), _box_mask(shape, 10, 10, 15, 15)
    fp = _box_mask(shape, 0, 12, 4, 18)
    # 2 true, 2 predicted, one exact match: TP=1, FP=1, FN=1 at every threshold -> 1/3.
    assert dsb_image_score(np.stack([a, b]), np.stack([a, fp])) == pytest.approx(1 / 3, abs=1e-12)
    # dataset score: mean over images (1/3 and 1)
    assert dsb_score([np.stack([a, b]), a[None]], [np.stack([a, fp]), a[None]]) == pytest.approx(2 / 3, abs=1e-12)


def test_dsb_removes_overlaps_by_score() -> None:
    shape = (10, 20)
    left, right = _box_mask(shape, 0, 0, 10, 10), _box_mask(shape, 0, 10, 10, 20)
    wide = _box_mask(shape, 0, 5, 10, 20)  # overlaps `left` in columns 5..9
    true = np.stack([left, right])
    # Highest score keeps the contested pixels: `wide` becomes exactly `right` -> perfect score.
    assert dsb_image_score(true, np.stack([wide, left]), np.array([0.8, 0.9])) == 1.0
    # The other way round, `left` loses columns 5..9 (IoU 0.5, not above 0.5) and `wide` matches
    # `right` at IoU 100/150: TP=1 for t in 0.50..0.65 (4 thresholds), 1/3 each; 0 above.
    assert dsb_image_score(true, np.stack([wide, left]), np.array([0.9, 0.8])) == pytest.approx(4 / 3 / 10, abs=1e-12)
    disjoint = remove_overlaps(np.stack([wide, left, left]), np.array([0.9, 0.8, 0.1]))
    assert disjoint.shape == (2, *shape)  # the fully covered third mask is dropped
    assert not (disjoint[0] & disjoint[1]).any()
    np.testing.assert_array_equal(disjoint[0], wide)


# --------------------------------------------------------------------------------- VOC AP
def _boxes_of(masks_nhw: np.ndarray) -> np.ndarray:
    out = []
    for m in masks_nhw:
        ys, xs = np.nonzero(m)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.array(out, dtype=np.int32).reshape(-1, 4)


def _voc(gt_nhw, gt_cls, pred_nhw, pred_cls, scores, iou=0.5):
    """compute_ap with Matterport's [H, W, N] masks."""
    return compute_ap(
        _boxes_of(gt_nhw), np.array(gt_cls), np.moveaxis(gt_nhw, 0, -1),
        _boxes_of(pred_nhw), np.array(pred_cls), np.array(scores, dtype=np.float32), np.moveaxis(pred_nhw, 0, -1),
        iou_threshold=iou,
    )  # fmt: skip


SHAPE = (30, 30)
G1 = _box_mask(SHAPE, 0, 0, 10, 10)
G2 = _box_mask(SHAPE, 15, 15, 25, 25)
FP = _box_mask(SHAPE, 0, 20, 8, 28)


def test_voc_ap_hand_made_cases() -> None:
    gts = np.stack([G1, G2])
    # perfect
    ap, precisions, recalls, _ = _voc(gts, [1, 2], gts, [1, 2], [0.9, 0.8])
    assert ap == 1.0
    # a false positive ranked first: precision 1/2 at recall 1/2, 2/3 at recall 1 -> interpolated
    # precision 2/3 over both recall steps -> AP = 2/3
    ap, precisions, recalls, _ = _voc(gts, [1, 2], np.stack([FP, G1, G2]), [1, 1, 2], [0.95, 0.9, 0.8])
    assert ap == pytest.approx(2 / 3, abs=1e-6)
    np.testing.assert_allclose(recalls, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(precisions, [2 / 3, 2 / 3, 2 / 3, 2 / 3, 0])
    # one of two found: recall 1/2 at precision 1, then Matterport's (recall 1, precision 0) pad
    ap, *_ = _voc(gts, [1, 2], G1[None], [1], [0.9])
    assert ap == pytest.approx(0.5)
    # right place, wrong class: no match
    ap, *_ = _voc(G1[None], [1], G1[None], [2], [0.9])
    assert ap == 0.0
    # IoU 0.8 counts at 0.5 but not at 0.9
    part = _box_mask(SHAPE, 0, 0, 8, 10)
    assert _voc(G1[None], [1], part[None], [1], [0.9])[0] == 1.0
    assert _voc(G1[None], [1], part[None], [1], [0.9], iou=0.9)[0] == 0.0


def test_voc_ap_greedy_matching_follows_score_order() -> None:
    # Two predictions on the same object: the higher score takes it, the other is a false positive
    # ranked second -> precisions 1, 1/2; recall reaches 1 at the first -> AP 1.
    near = _box_mask(SHAPE, 0, 0, 9, 10)
    assert _voc(G1[None], [1], np.stack([near, G1]), [1, 1], [0.8, 0.9])[0] == 1.0
    # Padding rows (all-zero boxes) are ignored, as in Matterport.
    boxes = np.vstack([_boxes_of(G1[None]), np.zeros((1, 4), np.int32)])
    masks = np.stack([G1, np.zeros(SHAPE, bool)], axis=-1)
    ap, *_ = compute_ap(boxes, np.array([1, 0]), masks, boxes[:1], np.array([1]), np.array([0.9]), masks[..., :1])
    assert ap == 1.0


def test_voc_map_mean_over_images_and_nhw_layout() -> None:
    gts = np.stack([G1, G2])
    args = dict(iou_threshold=0.5, mask_layout="NHW")
    m = compute_map(
        [_boxes_of(gts), _boxes_of(G1[None]), np.zeros((0, 4))], [np.array([1, 2]), np.array([1]), np.zeros(0)],
        [gts, G1[None], np.zeros((0, *SHAPE), bool)],
        [_boxes_of(gts), _boxes_of(FP[None]), _boxes_of(FP[None])], [np.array([1, 2]), np.array([1]), np.array([1])],
        [np.array([0.9, 0.8]), np.array([0.9]), np.array([0.5])],
        [gts, FP[None], FP[None]], **args,
    )  # fmt: skip
    assert m == pytest.approx(0.5)  # images: 1.0, 0.0, and the third has no ground truth (left out)


# ---------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_counts() -> None:
    cm = ConfusionMatrix(num_classes=2)
    # predictions: p0 (cls 1) on g0 (cls 1), p1 (cls 1) on g1 (cls 2), p2 (cls 2) on nothing,
    # p3 (cls 2) weakly on g2 (IoU 0.3 -> no match), p4 (cls 1) on a crowd region (ignored).
    iou = np.array([[0.9, 0.0, 0.0], [0.1, 0.7, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]])
    crowd = np.array([[0.0], [0.0], [0.0], [0.0], [0.8]])
    cm.update(iou, gt_labels=[1, 2, 1], pred_labels=[1, 1, 2, 2, 1], pred_scores=[0.9, 0.8, 0.7, 0.6, 0.5], crowd_iou=crowd)
    expected = np.array(
        [
            [0, 0, 2],  # false positives: p2, p3 (class 2)
            [1, 1, 0],  # class 1: g0 -> 1, g2 missed
            [0, 1, 0],  # class 2: g1 predicted as class 1
        ]
    )
    np.testing.assert_array_equal(cm.matrix, expected)
    # A higher-scoring prediction takes the object first, even with the lower IoU.
    cm = ConfusionMatrix(num_classes=2)
    cm.update(np.array([[0.6], [0.9]]), [1], [2, 1], [0.9, 0.5])
    np.testing.assert_array_equal(cm.matrix, [[0, 1, 0], [0, 0, 1], [0, 0, 0]])


# ------------------------------------------------------------------------------ Evaluator
def _tiny_gt() -> tuple[dict, dict[int, list[tuple[np.ndarray, int]]]]:
    """3 images 48x64, categories 'cat' (id 3, 3 instances) and 'dog' (id 7, 2 instances)."""
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    ellipse = ((yy - 30) / 10.0) ** 2 + ((xx - 40) / 14.0) ** 2 <= 1
    objects = {
        1: [(_box_mask((h, w), 2, 3, 20, 25), 3), (ellipse, 7)],
        2: [(_box_mask((h, w), 5, 5, 15, 15), 3), (_box_mask((h, w), 20, 30, 44, 60), 3)],
        3: [(_box_mask((h, w), 10, 10, 40, 50), 7)],
    }
    anns = []
    for image_id, objs in objects.items():
        for m, cat in objs:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})  # fmt: skip
    crowd = _box_mask((h, w), 40, 0, 48, 10)  # a crowd region in image 3, never predicted
    anns.append({"id": len(anns) + 1, "image_id": 3, "category_id": 3, "iscrowd": 1, "area": float(crowd.sum()),
                 "bbox": [0.0, 40.0, 10.0, 8.0], "segmentation": [[0, 40, 10, 40, 10, 48, 0, 48]]})  # fmt: skip
    gt = {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i in objects],
        "annotations": anns,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    return gt, objects


def _add_predictions(ev: Evaluator, objects: dict, skip: tuple[int, int] | None = None) -> None:
    class_of = {3: 1, 7: 2}  # model class ids: 1 = cat, 2 = dog (class_names below)
    for image_id, objs in objects.items():
        kept = [(m, c) for k, (m, c) in enumerate(objs) if (image_id, k) != skip]
        masks = np.stack([m for m, _ in kept]) if kept else np.zeros((0, 48, 64), bool)
        boxes = _boxes_of(masks)[:, [1, 0, 3, 2]].astype(float) if kept else np.zeros((0, 4))  # xyxy
        ev.add_arrays(image_id, boxes, np.linspace(0.9, 0.6, len(kept)), [class_of[c] for _, c in kept], masks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluator_perfect_predictions(backend: str) -> None:
    _needs(backend)
    gt, objects = _tiny_gt()
    ev = Evaluator(gt, class_names=["BG", "cat", "dog"], backend=backend)
    _add_predictions(ev, objects)
    report = ev.evaluate()
    for t in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AR100"):
            assert report["coco"][t][k] == pytest.approx(1.0, abs=1e-9), (t, k)
        assert report["coco"][t]["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 1.0}, abs=1e-9)
    assert report["voc_map50"] == 1.0
    assert report["dsb_score"] == 1.0
    assert report["confusion_matrix"]["labels"] == ["background", "cat", "dog"]
    assert report["confusion_matrix"]["matrix"] == [[0, 0, 0], [0, 3, 0], [0, 0, 2]]
    assert report["num_predictions"] == 5 and report["ignored_predictions"] == 0


def test_evaluator_one_missing_detection() -> None:
    gt, objects = _tiny_gt()
    ev = Evaluator(gt, class_names=["BG", "cat", "dog"])
    _add_predictions(ev, objects, skip=(2, 1))  # miss the second cat of image 2
    report = ev.evaluate()
    # cat: precision 1 up to recall 2/3 -> 67 of COCO's 101 recall points (0.00..0.66); dog: 1.
    expected_ap = (67 / 101 + 1.0) / 2
    for t in ("bbox", "segm"):
        m = report["coco"][t]
        for k in ("AP", "AP50", "AP75"):
            assert m[k] == pytest.approx(expected_ap, abs=1e-9)
        assert m["per_class_AP"]["cat"] == pytest.approx(67 / 101, abs=1e-9)
        assert m["AR100"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-9)
    # Matterport VOC per image: 1, 1/2 (recall 1/2 then the (1, 0) pad), 1
    assert report["voc_map50"] == pytest.approx((1 + 0.5 + 1) / 3)
    # DSB per image: 1, TP=1 FN=1 -> 1/2, 1
    assert report["dsb_score"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert report["confusion_matrix"]["matrix"] == [[0, 0, 0], [1, 2, 0], [0, 0, 2]]
    # cross-check the COCO numbers against pycocotools on the evaluator's own predictions
    results = [r for rs in ev._results.values() for r in rs]
    ref = _reference(gt, results, "segm")
    assert report["coco"]["segm"]["AP"] == pytest.approx(ref.stats[0], abs=1e-6)


def test_evaluator_score_threshold_and_results_input() -> None:
    gt, objects = _tiny_gt()
    ev = Evaluator(gt, score_threshold=0.5)  # class_names None: category ids are used directly
    fp = _box_mask((48, 64), 30, 0, 38, 8)
    rle = mask_utils.encode(np.asfortranarray(fp.astype(np.uint8)))
    results = [
        {"image_id": 3, "category_id": 7, "score": 0.4, "bbox": [0, 30, 8, 8], "segmentation": rle},  # below threshold
        {"image_id": 3, "category_id": 99, "score": 0.9, "bbox": [0, 30, 8, 8], "segmentation": rle},  # unknown class
    ]
    ev.add_results(results)
    report = ev.evaluate()
    assert report["ignored_predictions"] == 1
    assert report["confusion_matrix"]["matrix"] == [[0, 0, 0], [3, 0, 0], [2, 0, 0]]  # the 0.4 FP is not counted
    assert report["dsb_score"] == 0.0
    assert report["coco"]["segm"]["AP"] == 0.0


def test_evaluator_user_errors() -> None:
    gt, objects = _tiny_gt()
    ev = Evaluator(gt, class_names=["BG", "cat", "dog"])
    m = objects[1][0][0][None]
    with pytest.raises(EvaluationError, match="not an image"):
        ev.add_arrays(42, np.zeros((1, 4)), [0.9], [1], m)
    with pytest.raises(EvaluationError, match="original image size"):
        ev.add_arrays(1, np.zeros((1, 4)), [0.9], [1], np.zeros((1, 10, 10), bool))
    with pytest.raises(EvaluationError, match=r"\[N,4\]"):
        ev.add_arrays(1, np.zeros((2, 4)), [0.9], [1], m)
    ev.add_arrays(1, np.zeros((1, 4)), [0.9], [1], m)
    with pytest.raises(EvaluationError, match="already added"):
        ev.add_arrays(1, np.zeros((1, 4)), [0.9], [1], m)
    with pytest.raises(EvaluationError, match="class_names"):
        Evaluator(gt, class_names=["BG", "zebra"])


# ------------------------------------------------------------------------- plots, report
def _png_ok(path, size: tuple[int, int] | None = None) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        if size is not None:
            assert img.size == size
        arr = np.asarray(img.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20, f"{path} looks blank"
    assert (arr < 250).any(axis=-1).mean() > 0.02, f"{path} is almost all white"


def test_write_report_files_and_table(tmp_path, synthetic: tuple[dict, list[dict]]) -> None:
    gt, objects = _tiny_gt()
    ev = Evaluator(gt, class_names=["BG", "cat", "dog"])
    _add_predictions(ev, objects, skip=(2, 1))
    report = ev.evaluate()
    paths = write_report(report, tmp_path / "eval")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["report.json", "pr_arrays.npz", "pr_bbox_iou50.png", "pr_bbox_iou75.png", "pr_segm_iou50.png",
         "pr_segm_iou75.png", "confusion_matrix.png"]
    )  # fmt: skip
    for p in paths:
        if p.suffix == ".png":
            _png_ok(p, (640, 480) if p.name.startswith("pr_") else None)
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["coco"]["segm"]["AP"] == pytest.approx(report["coco"]["segm"]["AP"])
    assert saved["confusion_matrix"]["matrix"] == [[0, 0, 0], [1, 2, 0], [0, 0, 2]]
    assert "precision" not in saved["coco"]["segm"]
    arrays = np.load(tmp_path / "eval" / "pr_arrays.npz")
    assert arrays["segm_precision"].shape == (10, 101, 2)

    table = format_table(report)
    assert "AP50" in table and "cat" in table and "DSB" in table
    assert f"{report['coco']['segm']['AP']:.4f}" in table

    # PR plots straight from evaluate_coco on the larger synthetic set
    out = evaluate_coco(*synthetic, ("segm",))
    _png_ok(write_report(out, tmp_path / "coco")[-1], (640, 480))

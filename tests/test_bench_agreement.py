"""``benchmarks/common.agreement``: detections of a variant matched to exact mode's by class and box IoU."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import agreement  # noqa: E402


def dets(boxes: list[list[float]], classes: list[int], scores: list[float], size: int = 20) -> SimpleNamespace:
    """Detections whose masks fill their (integer) boxes in a ``size x size`` image."""
    masks = np.zeros((len(boxes), size, size), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[int(y1):int(y2), int(x1):int(x2)] = True
    return SimpleNamespace(boxes=np.array(boxes, np.float32).reshape(-1, 4), class_ids=np.array(classes, np.int64),
                           scores=np.array(scores, np.float32), masks=masks)


def test_identical_detections_agree_fully():
    a = dets([[0, 0, 10, 10], [5, 5, 15, 15]], [1, 2], [0.9, 0.8])
    r = agreement([a], [a])
    assert (r["reference"], r["other"], r["matched"]) == (2, 2, 2)
    assert r["mean_box_iou"] == pytest.approx(1.0) and r["mean_mask_iou"] == pytest.approx(1.0)


def test_matches_by_class_and_counts_unmatched_as_zero():
    ref = dets([[0, 0, 10, 10], [10, 10, 20, 20], [0, 10, 10, 20]], [1, 1, 2], [0.9, 0.9, 0.9])
    # box 1 shifted by 5 px (IoU 50/150 = 1/3), box 2 same place but class 3 (no match), box 3 below 0.5
    other = dets([[0, 5, 10, 15], [10, 10, 20, 20], [0, 10, 10, 20], [10, 10, 20, 20]], [1, 3, 2, 1],
                 [0.9, 0.9, 0.4, 0.7])
    r = agreement([ref], [other])
    assert (r["reference"], r["other"], r["matched"]) == (3, 3, 2)
    # ref 0 -> other 0 (1/3); ref 1 -> other 3 (same class, IoU 1); ref 2: its twin is below 0.5 -> 0
    assert r["mean_box_iou"] == pytest.approx((1 / 3 + 1 + 0) / 3, abs=1e-6)
    assert r["mean_mask_iou"] == pytest.approx((1 / 3 + 1 + 0) / 3, abs=1e-6)


def test_no_reference_detections_is_full_agreement_and_empty_other_is_none():
    empty = dets([], [], [])
    one = dets([[0, 0, 10, 10]], [1], [0.9])
    assert agreement([empty], [one])["mean_mask_iou"] == 1.0
    r = agreement([one], [empty])
    assert (r["matched"], r["mean_box_iou"], r["mean_mask_iou"]) == (0, 0.0, 0.0)

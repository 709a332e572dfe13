"""evaluate_model / `maskrcnn evaluate` plumbing: image ids, class ids and masks reach the metrics intact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maskrcnn.data import Dataset
from maskrcnn.evaluation import evaluate_model
from maskrcnn.inference.predictor import Predictor
from maskrcnn.inference.results import Detections


class Squares(Dataset):
    """3 images, 2 classes: squares (class 1) and bars (class 2) at fixed places."""

    def __init__(self) -> None:
        super().__init__()
        self.add_class("toy", 1, "square")
        self.add_class("toy", 2, "bar")
        for i in range(3):
            self.add_image("toy", i, None, height=40, width=50)
        self.prepare()

    def load_image(self, image_id: int) -> np.ndarray:
        return np.full((40, 50, 3), image_id, np.uint8)  # the oracle reads the id back

    def load_mask(self, image_id: int):
        m = np.zeros((40, 50, 2), bool)
        m[5 + image_id:15 + image_id, 5:15, 0] = True
        m[25:30, 10:40, 1] = True
        return m, np.array([1, 2], np.int32)


class Oracle(Predictor):
    """Returns the ground truth as detections, optionally without the bar of image 2."""

    def __init__(self, dataset: Squares, drop: bool) -> None:  # no model needed
        self.dataset, self.drop = dataset, drop

    def to_array(self, image, name="image"):
        return image

    def detect(self, images, *, batch_size=4, score_threshold=None, mask_threshold=None):
        out = []
        for image in images:
            i = int(image[0, 0, 0])
            m, c = self.dataset.load_mask(i)
            masks = m.transpose(2, 0, 1)
            if self.drop and i == 2:
                masks, c = masks[:1], c[:1]
            ys, xs = [np.where(k.any(1))[0] for k in masks], [np.where(k.any(0))[0] for k in masks]
            boxes = np.array([[x[0], y[0], x[-1] + 1, y[-1] + 1] for x, y in zip(xs, ys)], np.float32)
            out.append(Detections(boxes, c.astype(np.int64), np.full(len(c), 0.9, np.float32), masks,
                                  ["BG", "square", "bar"], (40, 50)))
        return out


def test_perfect_predictions_give_ap_one():
    ds = Squares()
    report = evaluate_model(Oracle(ds, drop=False), ds, batch_size=2)
    assert report["num_images"] == 3 and report["num_predictions"] == 6
    assert report["coco"]["segm"]["AP"] == pytest.approx(1.0)
    assert report["coco"]["bbox"]["AP50"] == pytest.approx(1.0)
    assert report["voc_map50"] == pytest.approx(1.0)


def test_missed_instance_lowers_recall_of_its_class_only():
    ds = Squares()
    report = evaluate_model(Oracle(ds, drop=True), ds, batch_size=2)
    segm = report["coco"]["segm"]
    assert segm["per_class_AP"]["square"] == pytest.approx(1.0)
    assert segm["per_class_AP"]["bar"] < 0.8
    assert segm["AR100"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_evaluate_cli_missing_data_is_one_line(tmp_path, capsys):
    from maskrcnn.cli import main

    code = main(["evaluate", "--weights", "coco", "--data", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.json" in err[0]


def test_unreadable_image_is_skipped_and_reported():
    from maskrcnn.errors import DataError

    class Broken(Squares):
        def load_image(self, image_id):
            if image_id == 1:
                raise DataError("img1.png: truncated file; re-export or remove it")
            return super().load_image(image_id)

    ds = Broken()
    report = evaluate_model(Oracle(ds, drop=False), ds, batch_size=2)
    assert report["skipped_images"] == [{"image": "toy:1", "error": "img1.png: truncated file; re-export or remove it"}]
    assert report["coco"]["segm"]["AR100"] == pytest.approx(2 / 3)

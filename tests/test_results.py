"""Detections and their conversions: COCO results (xywh boxes, RLE masks) and Matterport's dict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from maskrcnn import Config
from maskrcnn.inference.predictor import Predictor
from maskrcnn.inference.results import Detections
from maskrcnn.modeling import build_model


def _hand_made() -> Detections:
    h, w = 12, 16
    masks = np.zeros((3, h, w), dtype=bool)
    masks[0, 2:5, 3:9] = True       # a rectangle
    masks[1, 6:12, 0:4] = True       # touching the border
    masks[1, 8, 1] = False           # with a hole
    masks[2, 0, 15] = True           # one pixel in the corner
    boxes = np.array([[3, 2, 9, 5], [0, 6, 4, 12], [15.2, 0.4, 16, 1]], dtype=np.float32)
    return Detections(boxes=boxes, class_ids=np.array([2, 1, 2]), scores=np.array([0.9, 0.8, 0.3], np.float32),
                      masks=masks, class_names=["BG", "cat", "dog"], image_size=(h, w), file_name="pets.png")


def test_to_coco_fields_and_rle():
    det = _hand_made()
    res = det.to_coco(image_id=17)
    assert len(res) == 3
    json.dumps(res)  # plain JSON types only
    for r, box, mask, cid, score in zip(res, det.boxes, det.masks, det.class_ids, det.scores):
        assert r["image_id"] == 17 and r["file_name"] == "pets.png"
        assert r["category_id"] == cid and r["score"] == pytest.approx(float(score))
        x1, y1, x2, y2 = box.tolist()
        assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        seg = r["segmentation"]
        assert seg["size"] == [12, 16] and isinstance(seg["counts"], str)
        back = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        assert back.shape == (12, 16) and np.array_equal(back.astype(bool), mask)
        assert mask_utils.area(seg) == mask.sum()
    assert res[0]["bbox"] == [3.0, 2.0, 6.0, 3.0]
    # dataset category ids through a mapping, class name per detection
    mapped = det.to_coco(3, category_ids=[0, 11, 22])
    assert [r["category_id"] for r in mapped] == [22, 11, 22]
    assert det.names == ["dog", "cat", "dog"]


def test_to_matterport_layout():
    det = _hand_made()
    mp = det.to_matterport()
    assert mp["rois"].dtype == np.int32
    assert mp["rois"].tolist() == [[2, 3, 5, 9], [6, 0, 12, 4], [0, 15, 1, 16]]  # y1, x1, y2, x2
    assert mp["masks"].shape == (12, 16, 3) and mp["masks"].dtype == bool
    for i in range(3):
        assert np.array_equal(mp["masks"][:, :, i], det.masks[i])
    assert mp["class_ids"].tolist() == [2, 1, 2] and mp["scores"].dtype == np.float32


def test_empty_and_filter():
    det = _hand_made()
    kept = det.filter(0.5)
    assert len(kept) == 2 and kept.class_ids.tolist() == [2, 1] and kept.masks.shape == (2, 12, 16)
    none = det.filter(0.95)
    assert len(none) == 0 and none.to_coco(1) == []
    mp = none.to_matterport()
    assert mp["rois"].shape == (0, 4) and mp["masks"].shape == (12, 16, 0) and mp["class_ids"].shape == (0,)


def test_predictor_output_converts():
    """From a real model: COCO results decode back to the predictor's masks; Matterport rois match its boxes."""
    torch.manual_seed(0)
    config = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                    num_classes=3, image_min_dim=64, image_max_dim=96, detection_max_instances=8,
                    class_names=["BG", "cell", "debris"])
    model = build_model(config)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-4.0, 3.0, 3.0]))
    image = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    det = Predictor(model).detect(image)[0]
    assert len(det) == 8 and set(det.class_ids.tolist()) <= {1, 2} and det.masks.shape == (8, 50, 70)
    assert all(n in ("cell", "debris") for n in det.names)
    res = det.to_coco(5)
    for r, box, mask in zip(res, det.boxes, det.masks):
        assert np.array_equal(mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}), mask)
        assert r["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
    assert all("file_name" not in r for r in res)  # an array has no file name
    mp = det.to_matterport()
    np.testing.assert_array_equal(mp["rois"], np.round(det.boxes[:, [1, 0, 3, 2]]).astype(np.int32))
    assert mp["masks"].shape == (50, 70, 8)

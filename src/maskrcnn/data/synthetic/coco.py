"""Synthetic COCO ground truth and predictions, for tests and benchmarks of the metrics.

``synthetic_coco(num_images, ...)`` returns ``(gt, results)``: a COCO ground-truth dict and a
list of COCO result dicts that exercise every branch of COCOeval: several classes, rectangles
(as polygons) and ellipses (as RLE), crowd regions (uncompressed RLE, ``iscrowd=1``), objects in
all three COCO area ranges when the images are large enough, missed objects, wrong classes,
duplicates, false positives, and images without predictions. Deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import rle as rle_codec
from .instances import filled_ellipse

__all__ = ["synthetic_coco"]


def _shape_mask(rng: np.random.Generator, h: int, w: int, max_side: int) -> tuple[np.ndarray, str, tuple[int, int, int, int]]:
    """A random rectangle or ellipse ``[H, W]`` bool, its kind and its box (x1, y1, x2, y2)."""
    side = float(np.exp(rng.uniform(np.log(3), np.log(max_side))))
    bw = int(np.clip(side * rng.uniform(0.6, 1.4), 2, w - 1))
    bh = int(np.clip(side * rng.uniform(0.6, 1.4), 2, h - 1))
    x1 = int(rng.integers(0, w - bw + 1))
    y1 = int(rng.integers(0, h - bh + 1))
    mask = np.zeros((h, w), dtype=bool)
    if rng.random() < 0.5:
        mask[y1 : y1 + bh, x1 : x1 + bw] = True
        kind = "rect"
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, ry, rx = y1 + bh / 2, x1 + bw / 2, bh / 2, bw / 2
        mask = filled_ellipse(yy, xx, cy, cx, ry, rx)
        kind = "ellipse"
    return mask, kind, (x1, y1, x1 + bw, y1 + bh)


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (used for crowd regions): column-major run lengths from 0s."""
    flat = mask.T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = [int(c) for c in np.diff(bounds)]
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _jitter(rng: np.random.Generator, mask: np.ndarray, box: tuple[int, int, int, int], strength: float) -> np.ndarray:
    """The mask shifted by up to ``strength`` x its box side per axis, sometimes grown by a pixel."""
    side = min(box[2] - box[0], box[3] - box[1])
    amount = int(round(strength * side))
    dy, dx = (int(v) for v in rng.integers(-amount, amount + 1, size=2))
    out = np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    if rng.random() < 0.3:
        out = out | np.roll(out, 1, axis=0) | np.roll(out, 1, axis=1)
    return out


def synthetic_coco(
    num_images: int = 20,
    num_classes: int = 3,
    image_size: tuple[int, int] = (160, 200),
    max_instances: int = 6,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO ground-truth dict and matching noisy predictions.

    Args:
        num_images: number of images (ids 1..num_images).
        num_classes: categories ``class1..classK`` with ids 1..K.
        image_size: ``(H, W)`` of every image; objects reach ~0.8 * min(H, W) per side, so
            160x200 gives small, medium and large objects, 64x64 mostly small ones.
        max_instances: at most this many objects per image (0 is possible).
        seed: random seed.

    Returns:
        ``(gt, results)``; ``results`` carry ``bbox`` ``[x, y, w, h]`` and compressed-RLE
        ``segmentation`` (``counts`` a str).
    """
    h, w = image_size
    images = [{"id": i + 1, "file_name": f"{i + 1:06d}.png", "height": h, "width": w} for i in range(num_images)]
    categories = [{"id": k + 1, "name": f"class{k + 1}"} for k in range(num_classes)]
    maker = _CocoMaker(np.random.default_rng(seed), h, w, num_classes)
    for img in images:
        maker.add_image(img["id"], max_instances)
    gt = {"images": images, "annotations": maker.annotations, "categories": categories}
    return gt, maker.results


class _CocoMaker:
    """Draws the objects of each image and the predictions for them from one random generator.

    The draws happen in a fixed order (per image: object count, whether the image gets no
    predictions, then per object its shape, class, crowd flag and predictions; then the false
    positives), so the output is a function of the seed.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int, num_classes: int) -> None:
        self.rng, self.h, self.w, self.num_classes = rng, height, width, num_classes
        self.max_side = max(4, int(0.8 * min(height, width)))
        self.annotations: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def random_class(self) -> int:
        return int(self.rng.integers(1, self.num_classes + 1))

    def add_image(self, image_id: int, max_instances: int) -> None:
        """Up to ``max_instances`` objects with their predictions, and a few false positives."""
        rng = self.rng
        n = int(rng.integers(0, max_instances + 1))
        no_predictions = rng.random() < 0.1
        for _ in range(n):
            mask, kind, box = _shape_mask(rng, self.h, self.w, self.max_side)
            cat = self.random_class()
            self.add_annotation(image_id, mask, kind, box, cat)
            if not no_predictions:
                self.add_predictions(image_id, mask, box, cat)
        if no_predictions:
            return
        for _ in range(int(rng.integers(0, 3))):  # false positives
            mask, _, _ = _shape_mask(rng, self.h, self.w, self.max_side)
            self.add_result(image_id, mask, self.random_class(), (0.05, 0.7))

    def add_annotation(self, image_id: int, mask: np.ndarray, kind: str, box: tuple[int, int, int, int],
                       cat: int) -> None:
        """The ground truth of one object: a crowd region (uncompressed RLE), a polygon (rectangles)
        or a compressed RLE (ellipses)."""
        x1, y1, x2, y2 = box
        crowd = self.rng.random() < 0.08
        if crowd:
            segm: Any = _uncompressed_rle(mask)
        elif kind == "rect":
            segm = [[x1, y1, x2, y1, x2, y2, x1, y2]]
        else:
            segm = rle_codec.encode(mask)
        rle = rle_codec.from_segmentation(segm, self.h, self.w)
        self.annotations.append({
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": cat,
            "segmentation": segm,
            "area": float(rle_codec.area(rle)),
            "bbox": rle_codec.bbox(rle),
            "iscrowd": int(crowd),
        })

    def add_predictions(self, image_id: int, mask: np.ndarray, box: tuple[int, int, int, int], cat: int) -> None:
        """Most objects are detected (sometimes with the wrong class), some twice."""
        rng = self.rng
        if rng.random() < 0.85:  # detected, sometimes with the wrong class
            pred_cat = cat if rng.random() < 0.9 else self.random_class()
            self.add_result(image_id, _jitter(rng, mask, box, 0.15), pred_cat, (0.3, 1.0))
        if rng.random() < 0.15:  # duplicate
            self.add_result(image_id, _jitter(rng, mask, box, 0.3), cat, (0.05, 0.6))

    def add_result(self, image_id: int, mask: np.ndarray, cat: int, score_range: tuple[float, float]) -> None:
        """One prediction with a random score in ``score_range`` (none for an empty mask)."""
        if not mask.any():
            return
        rle = rle_codec.encode(mask)
        self.results.append({
            "image_id": image_id,
            "category_id": cat,
            "bbox": rle_codec.bbox(rle),
            "score": round(float(self.rng.uniform(*score_range)), 4),
            "segmentation": rle,
        })

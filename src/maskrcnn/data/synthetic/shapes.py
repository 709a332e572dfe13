"""Matterport's synthetic "shapes" dataset, generated deterministically and lazily.

Each image (default 128 x 128, RGB uint8) has a random background colour and 1-4 shapes
(square, circle, triangle) of random colour. A shape is ``(x, y, s)``: centre ``(x, y)`` with
``20 <= x <= W - 21`` and ``20 <= y <= H - 21`` (at least 20 px from the border) and half-size
``s`` in ``[20, H // 4]`` (``[20, 32]`` at 128 px). Heavy overlaps are removed by NMS at IoU 0.3
over the boxes ``(y - s, x - s, y + s, x + s)`` with later shapes preferred, as in Matterport.
Shapes are drawn in order, so later shapes occlude earlier ones and the masks are the visible
parts (a shape occluded entirely is left out, with its class id).

Rendering (pixel ``(r, c)`` with integer coordinates, as OpenCV does for these primitives):

* square: ``|c - x| <= s and |r - y| <= s`` (``cv2.rectangle`` filled, both corners inclusive);
* circle: ``(c - x)^2 + (r - y)^2 <= s^2``;
* triangle: the vertices ``(x, y - s)``, ``(x -/+ s / sin 60deg, y + s)`` truncated to int, pixels
  inside or on its edges.

Image ``i`` depends only on ``(seed, i)``; nothing is generated before it is loaded.
Matterport's settings for it: 4 classes with BG, anchors 8..128, 32 RoIs per image, 128 px images.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..dataset import Dataset

__all__ = ["ShapesDataset", "SHAPE_CLASSES"]

SHAPE_CLASSES = ("square", "circle", "triangle")
_BORDER = 20

Shape = tuple[str, tuple[int, int, int], tuple[int, int, int]]  # (name, colour, (x, y, s))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(y1, x1, y2, x2)`` box with ``[K, 4]`` boxes (Matterport's ``compute_iou``)."""
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Matterport's ``non_max_suppression``: indices kept, highest score first."""
    order = scores.argsort()[::-1]
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        iou = _iou(boxes[i], boxes[order[1:]])
        order = np.delete(order, np.concatenate([[0], np.where(iou > threshold)[0] + 1]))
    return np.array(keep, dtype=np.int64)


def random_shapes(rng: np.random.Generator, height: int, width: int) -> tuple[tuple[int, int, int], list[Shape]]:
    """Matterport's ``random_image``: background colour and the shapes kept after NMS."""
    bg = tuple(int(v) for v in rng.integers(0, 256, size=3))
    shapes: list[Shape] = []
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        name = SHAPE_CLASSES[int(rng.integers(0, 3))]
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        y = int(rng.integers(_BORDER, height - _BORDER))  # randint(buffer, height - buffer - 1)
        x = int(rng.integers(_BORDER, width - _BORDER))
        s = int(rng.integers(_BORDER, max(_BORDER, height // 4) + 1))
        shapes.append((name, colour, (x, y, s)))
        boxes.append([y - s, x - s, y + s, x + s])
    keep = set(_nms(np.array(boxes, dtype=np.float64), np.arange(len(shapes), dtype=np.float64), 0.3).tolist())
    return bg, [sh for i, sh in enumerate(shapes) if i in keep]


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.mgrid[0:height, 0:width]
    return r, c


def draw_shape(name: str, dims: tuple[int, int, int], height: int, width: int) -> np.ndarray:
    """The ``[H, W]`` bool silhouette of one shape (see the module docstring)."""
    x, y, s = dims
    out = np.zeros((height, width), dtype=bool)
    # work on the shape's bounding region only
    half_w = s / math.sin(math.radians(60)) if name == "triangle" else s
    r0, r1 = max(0, y - s), min(height, y + s + 1)
    c0, c1 = max(0, int(x - half_w) - 1), min(width, int(x + half_w) + 2)
    r, c = _grid(height, width)
    r, c = r[r0:r1, c0:c1], c[r0:r1, c0:c1]
    if name == "square":
        inside = (np.abs(c - x) <= s) & (np.abs(r - y) <= s)
    elif name == "circle":
        inside = (c - x) ** 2 + (r - y) ** 2 <= s * s
    elif name == "triangle":
        pts = np.array([(x, y - s), (x - half_w, y + s), (x + half_w, y + s)]).astype(np.int32)
        inside = _in_triangle(c, r, pts)
    else:
        raise ValueError(f"unknown shape {name!r}")
    out[r0:r1, c0:c1] = inside
    return out


def _in_triangle(c: np.ndarray, r: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points inside or on the edges of a triangle (either orientation)."""
    d = []
    for i in range(3):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % 3]
        d.append((x1 - x0) * (r - y0) - (y1 - y0) * (c - x0))
    d = np.stack(d)
    return np.all(d >= 0, axis=0) | np.all(d <= 0, axis=0)


class ShapesDataset(Dataset):
    """``count`` synthetic images of squares, circles and triangles (classes 1, 2, 3).

    Args:
        count: number of images.
        height, width: image size in pixels (Matterport: 128 x 128).
        seed: images are a function of ``(seed, image_id)``; two datasets with the same seed and
            size are identical, different seeds give independent images (use one for train, another
            for validation).
    """

    def __init__(self, count: int, height: int = 128, width: int = 128, seed: int = 0) -> None:
        super().__init__()
        if height < 2 * _BORDER + 1 or width < 2 * _BORDER + 1:
            raise ValueError(f"shapes images need at least {2 * _BORDER + 1} px per side, got {height}x{width}")
        self.height, self.width, self.seed = int(height), int(width), int(seed)
        for i, name in enumerate(SHAPE_CLASSES, start=1):
            self.add_class("shapes", i, name)
        for i in range(int(count)):
            self.add_image("shapes", image_id=i, path=None, height=self.height, width=self.width)
        self.prepare()

    def image_reference(self, image_id: int) -> str:
        return f"shapes:{self.image_info[image_id]['id']} (seed {self.seed})"

    def spec(self, image_id: int) -> tuple[tuple[int, int, int], list[Shape]]:
        """Background colour and shapes (``(name, colour, (x, y, s))``, drawing order) of an image."""
        rng = np.random.default_rng([self.seed, int(self.image_info[image_id]["id"])])
        return random_shapes(rng, self.height, self.width)

    def _render(self, image_id: int) -> tuple[np.ndarray, np.ndarray, list[Shape]]:
        bg, shapes = self.spec(image_id)
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:] = np.array(bg, dtype=np.uint8)
        silhouettes = np.zeros((len(shapes), self.height, self.width), dtype=bool)
        for i, (name, colour, dims) in enumerate(shapes):
            silhouettes[i] = draw_shape(name, dims, self.height, self.width)
            image[silhouettes[i]] = colour
        return image, silhouettes, shapes

    def load_image(self, image_id: int) -> np.ndarray:
        """``[H, W, 3]`` uint8."""
        return self._render(image_id)[0]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Visible parts ``[H, W, N]`` bool (later shapes occlude earlier ones) and class ids ``[N]`` int32."""
        _, sil, shapes = self._render(image_id)
        visible = sil.copy()
        covered = np.zeros((self.height, self.width), dtype=bool)
        for i in range(len(shapes) - 1, -1, -1):
            visible[i] &= ~covered
            covered |= sil[i]
        ids = np.array([SHAPE_CLASSES.index(name) + 1 for name, _, _ in shapes], dtype=np.int32)
        keep = visible.any(axis=(1, 2))
        return np.ascontiguousarray(np.moveaxis(visible[keep], 0, 2)), ids[keep]

    def load_ignore_mask(self, image_id: int) -> np.ndarray | None:
        return None

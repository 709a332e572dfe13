"""Vector shapes of annotation files and their rasterisation into ``[H, W]`` bool masks.

Coordinates are pixel-edge coordinates (COCO's and torchvision's convention): ``x`` runs along
columns, ``y`` along rows, ``(0, 0)`` is the top-left corner of the top-left pixel and pixel
``(row i, column j)`` has its centre at ``(x=j+0.5, y=i+0.5)``. The square with corners
``(0, 0)`` and ``(10, 10)`` therefore covers exactly pixels 0..9 in both directions.

A shape is a small JSON-like dict, so datasets can keep millions of them without rasterising:

* ``{"type": "polygon", "points": [x0, y0, x1, y1, ...]}`` (at least three points),
  rasterised with pycocotools exactly as COCO does;
* ``{"type": "ellipse", "cx", "cy", "rx", "ry", "theta"}`` (``theta`` in radians, clockwise in
  image coordinates as VIA stores it): the pixels whose centres lie inside;
* ``{"type": "rle", "rle": {"size": [h, w], "counts": str | bytes | list[int]}}`` (COCO RLE,
  compressed or not);
* ``{"type": "bitmap", "x": int, "y": int, "png": base64 str}``: a binary PNG pasted with its
  top-left pixel at column ``x``, row ``y`` (LabelMe's ``mask`` shapes).

An instance is a list of shapes whose union is its mask.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Iterable

import numpy as np

from .. import rle as rle_codec

Shape = dict[str, Any]

__all__ = [
    "Shape",
    "polygon",
    "rectangle",
    "ellipse",
    "rasterize",
    "polygon_area",
    "shape_bounds",
]


def polygon(xs: Iterable[float], ys: Iterable[float]) -> Shape:
    """A polygon shape from x and y vertex lists (pixel-edge coordinates)."""
    flat: list[float] = []
    for x, y in zip(xs, ys):
        flat.extend((float(x), float(y)))
    return {"type": "polygon", "points": flat}


def rectangle(x: float, y: float, width: float, height: float) -> Shape:
    """Axis-aligned rectangle with top-left corner ``(x, y)``; covers ``width * height`` pixels on integer input."""
    x2, y2 = x + width, y + height
    return {"type": "polygon", "points": [float(v) for v in (x, y, x2, y, x2, y2, x, y2)]}


def ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0) -> Shape:
    """Ellipse (a circle when ``rx == ry``) centred at ``(cx, cy)``."""
    return {"type": "ellipse", "cx": float(cx), "cy": float(cy), "rx": float(rx), "ry": float(ry), "theta": float(theta)}


def polygon_area(points: list[float]) -> float:
    """Absolute area of a flat ``[x0, y0, x1, y1, ...]`` polygon (shoelace formula)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def shape_bounds(shape: Shape) -> tuple[float, float, float, float] | None:
    """``(x1, y1, x2, y2)`` of a vector shape, or None for RLE/bitmap shapes."""
    kind = shape["type"]
    if kind == "polygon":
        p = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())
    if kind == "ellipse":
        r = max(shape["rx"], shape["ry"])
        return shape["cx"] - r, shape["cy"] - r, shape["cx"] + r, shape["cy"] + r
    return None


def rasterize(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Union of ``shapes`` as an ``[height, width]`` bool mask (parts outside the image are clipped)."""
    out = np.zeros((height, width), dtype=bool)
    polys = [s["points"] for s in shapes if s["type"] == "polygon"]
    if polys:
        out |= rle_codec.decode(rle_codec.from_polygons(polys, height, width))
    for s in shapes:
        kind = s["type"]
        if kind == "ellipse":
            _draw_ellipse(out, s)
        elif kind == "rle":
            out |= rle_codec.decode(s["rle"])
        elif kind == "bitmap":
            _paste_bitmap(out, s)
        elif kind != "polygon":
            raise ValueError(f"unknown shape type {kind!r}")
    return out


# --------------------------------------------------------------------------- helpers


def _draw_ellipse(out: np.ndarray, s: Shape) -> None:
    h, w = out.shape
    cx, cy, rx, ry, theta = s["cx"], s["cy"], s["rx"], s["ry"], s.get("theta", 0.0)
    if rx <= 0 or ry <= 0:
        return
    r = max(rx, ry)
    r0, r1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
    c0, c1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    cos, sin = math.cos(theta), math.sin(theta)
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    out[r0:r1, c0:c1] |= (u * u + v * v) <= 1.0 + 1e-9


def _paste_bitmap(out: np.ndarray, s: Shape) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(s["png"]))) as im:
        bm = np.asarray(im)
    if bm.ndim == 3:
        bm = bm.any(axis=2)
    bm = bm.astype(bool)
    h, w = out.shape
    x0, y0 = int(s["x"]), int(s["y"])
    ys0, xs0 = max(0, -y0), max(0, -x0)
    ys1, xs1 = min(bm.shape[0], h - y0), min(bm.shape[1], w - x0)
    if ys1 > ys0 and xs1 > xs0:
        out[y0 + ys0:y0 + ys1, x0 + xs0:x0 + xs1] |= bm[ys0:ys1, xs0:xs1]

"""COCO run-length encoding (RLE) in one place, wrapping :mod:`pycocotools.mask`.

An RLE is ``{"size": [H, W], "counts": ...}``: run lengths of 0s and 1s alternately, starting
with 0s, down the columns (column-major, "Fortran" order). ``counts`` is a ``str`` (COCO's
compressed form, what every function here returns, JSON-ready), ``bytes`` (what pycocotools
returns) or a ``list[int]`` (the uncompressed form COCO uses for crowd regions).

pycocotools is fast but unforgiving: an uncompressed count that is negative or over 2**32
raises ``OverflowError``, counts that do not add up to ``H * W`` raise "Invalid RLE mask
representation" only when decoded, and a polygon vertex far outside the image (1e12) crashes
the interpreter. So every user-supplied RLE goes through :func:`validate` first, and polygons
are clipped to the image (plus a margin) by :func:`from_polygons` before pycocotools sees them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "encode",
    "encode_masks",
    "decode",
    "from_counts",
    "from_polygons",
    "from_segmentation",
    "area",
    "bbox",
    "validate",
    "clip_polygon",
    "MIN_POLYGON_MARGIN",
]

#: Polygons are clipped to the image grown on every side by its own larger side, and at least by
#: this many pixels (see :func:`clip_polygon`).
MIN_POLYGON_MARGIN = 64.0
_MAX_COUNT = 2 ** 32 - 1


def _str_counts(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _for_pycocotools(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE with ``bytes`` counts, as pycocotools' C functions take it."""
    counts = rle["counts"]
    if isinstance(counts, list):
        h, w = (int(v) for v in rle["size"])
        return mask_utils.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode(mask: np.ndarray) -> dict[str, Any]:
    """``[H, W]`` mask (bool or 0/1) -> compressed RLE with ``counts`` as str."""
    return _str_counts(mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=bool).astype(np.uint8))))


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """``[N, H, W]`` masks -> N compressed RLEs with ``counts`` as str (``[]`` for N = 0)."""
    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(bool).astype(np.uint8))
    return [_str_counts(r) for r in mask_utils.encode(fortran)]


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Any RLE (compressed or uncompressed) -> ``[H, W]`` bool. Validate user input first."""
    with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(_for_pycocotools(rle)).astype(bool)


def from_counts(counts: Sequence[int], height: int, width: int) -> dict[str, Any]:
    """Uncompressed run lengths (summing to ``height * width``) -> compressed RLE (counts str)."""
    return _str_counts(mask_utils.frPyObjects({"counts": [int(c) for c in counts], "size": [height, width]},
                                              height, width))


def from_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> dict[str, Any]:
    """The union of flat ``[x0, y0, x1, y1, ...]`` polygons (pixel-edge coordinates) as one RLE.

    Rasterised exactly as COCO does (pycocotools); vertices outside the image are clipped first
    (:func:`clip_polygon`), so any finite coordinate is safe. Non-finite ones must be rejected
    by the caller.
    """
    parts = [p for p in (clip_polygon(poly, height, width) for poly in polygons) if len(p) >= 6]
    if not parts:
        return encode(np.zeros((height, width), dtype=bool))
    return _str_counts(mask_utils.merge(mask_utils.frPyObjects(parts, height, width)))


def from_segmentation(segm: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE; None or ``[]``: empty) as
    one compressed RLE, like ``COCO.annToRLE``."""
    if segm is None or (isinstance(segm, list) and len(segm) == 0):
        return encode(np.zeros((height, width), dtype=bool))
    if isinstance(segm, list):
        return from_polygons(segm if isinstance(segm[0], (list, tuple)) else [segm], height, width)
    if isinstance(segm.get("counts"), list):
        return from_counts(segm["counts"], height, width)
    return _str_counts(segm)


def area(rle: dict[str, Any]) -> int:
    """Pixel count of an RLE."""
    return int(mask_utils.area(_for_pycocotools(rle)))


def bbox(rle: dict[str, Any]) -> list[float]:
    """``[x, y, w, h]`` (pixel-edge coordinates) of an RLE's pixels; zeros when empty."""
    return [float(v) for v in mask_utils.toBbox(_for_pycocotools(rle))]


def validate(rle: Any, height: int, width: int) -> str | None:
    """Why ``rle`` is not a usable RLE of a ``height x width`` mask, or None when it is.

    Checks the structure, ``size``, the type, range and sum of uncompressed counts, and decodes a
    compressed one (pycocotools rejects counts that do not cover the mask exactly).
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return "an RLE needs 'size' and 'counts'"
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return f"RLE 'size' {size!r} is not [height, width]"
    if [int(size[0]), int(size[1])] != [height, width]:
        return f"RLE size {list(size)} differs from the image's [{height}, {width}] (height, width)"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            bad = next(c for c in counts if not isinstance(c, int) or isinstance(c, bool))
            return f"uncompressed RLE counts must be integers, found {bad!r}"
        if any(c < 0 or c > _MAX_COUNT for c in counts):
            bad = next(c for c in counts if c < 0 or c > _MAX_COUNT)
            return f"uncompressed RLE count {bad} is out of range (0..2**32-1)"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, not height*width={height * width}"
        return None
    if isinstance(counts, (str, bytes)):
        try:
            if isinstance(counts, str):
                counts.encode("ascii")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                mask_utils.decode(_for_pycocotools(rle))
        except (ValueError, UnicodeError, OverflowError):
            return "compressed RLE counts are invalid (they do not cover height*width pixels)"
        return None
    return f"RLE 'counts' must be a string or a list of integers, not {type(counts).__name__}"


def clip_polygon(points: Sequence[float], height: int, width: int) -> list[float]:
    """A flat polygon clipped to ``[-m, width + m] x [-m, height + m]``, ``m = max(height, width, 64)``.

    pycocotools rasterises by walking the outline on a 5x finer grid, so a vertex at 1e12
    overflows its buffers (a crash). Polygons inside that rectangle (every sensible annotation)
    are returned unchanged and rasterise exactly as in COCO. Others are cut by Sutherland-Hodgman
    against it: the part inside the image is the original polygon's; only the new vertices, far
    from the image, are rounded by pycocotools, which may move an edge by a hundredth of a
    pixel. The result may have fewer than 3 points (the polygon lay outside).
    """
    margin = float(max(height, width, MIN_POLYGON_MARGIN))
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lo_x, lo_y, hi_x, hi_y = -margin, -margin, width + margin, height + margin
    if len(p) == 0 or (p[:, 0].min() >= lo_x and p[:, 1].min() >= lo_y and p[:, 0].max() <= hi_x and p[:, 1].max() <= hi_y):
        return [float(v) for v in p.reshape(-1)]
    for axis, bound, keep_above in ((0, lo_x, True), (0, hi_x, False), (1, lo_y, True), (1, hi_y, False)):
        if len(p) == 0:
            break
        p = _clip_half_plane(p, axis, bound, keep_above)
    return [float(v) for v in p.reshape(-1)]


def _clip_half_plane(p: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """Sutherland-Hodgman step: the polygon ``p [K, 2]`` cut by the line ``p[:, axis] = bound``."""
    inside = p[:, axis] >= bound if keep_above else p[:, axis] <= bound
    out: list[np.ndarray] = []
    n = len(p)
    for i in range(n):
        cur, nxt = p[i], p[(i + 1) % n]
        cin, nin = inside[i], inside[(i + 1) % n]
        if cin:
            out.append(cur)
        if cin != nin:
            t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
            point = cur + t * (nxt - cur)
            point[axis] = bound
            out.append(point)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)

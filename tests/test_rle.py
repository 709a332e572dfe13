"""maskrcnn.data.rle: the one COCO RLE codec (encode/decode, validation, polygon clipping)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskrcnn.data import rle


def _mask(h: int = 7, w: int = 5) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[1:4, 2:5] = True
    m[6, 0] = True
    return m


def test_encode_decode_round_trip_str_counts_and_geometry() -> None:
    m = _mask()
    r = rle.encode(m)
    assert isinstance(r["counts"], str) and r["size"] == [7, 5] and json.loads(json.dumps(r)) == r
    assert np.array_equal(rle.decode(r), m)
    assert rle.area(r) == 10 and rle.bbox(r) == [0.0, 1.0, 5.0, 6.0]
    stacked = rle.encode_masks(np.stack([m, ~m]))
    assert [rle.area(x) for x in stacked] == [10, 25] and stacked[0] == r and rle.encode_masks(np.zeros((0, 7, 5))) == []
    # the same mask as uncompressed column-major runs (0s first), as COCO writes crowd regions
    counts = [6, 1, 8, 3, 4, 3, 4, 3, 3]
    assert sum(counts) == 35 and np.array_equal(rle.decode({"size": [7, 5], "counts": counts}), m)
    assert rle.from_counts(counts, 7, 5) == r and rle.from_segmentation({"size": [7, 5], "counts": counts}, 7, 5) == r


def test_from_segmentation_matches_pycocotools_for_polygons_and_empty() -> None:
    poly = [[0.5, 0.5, 4.5, 0.5, 4.5, 6.0, 0.5, 6.0], [1, 1, 2, 1, 2, 2]]
    want = mask_utils.merge(mask_utils.frPyObjects(poly, 7, 5))
    got = rle.from_segmentation(poly, 7, 5)
    assert got["counts"] == want["counts"].decode("ascii")
    assert rle.area(rle.from_segmentation(None, 7, 5)) == 0 and rle.area(rle.from_segmentation([], 7, 5)) == 0


@pytest.mark.parametrize("bad, fragment", [
    ({"counts": [35]}, "needs 'size' and 'counts'"),
    ({"size": [7], "counts": [35]}, "is not [height, width]"),
    ({"size": [8, 5], "counts": [40]}, "differs from the image's [7, 5]"),
    ({"size": [7, 5], "counts": [30, 4]}, "sum to 34"),
    ({"size": [7, 5], "counts": [-1, 36]}, "out of range"),
    ({"size": [7, 5], "counts": [2 ** 32, 1]}, "out of range"),
    ({"size": [7, 5], "counts": [35.0]}, "must be integers"),
    ({"size": [7, 5], "counts": "zz!!"}, "compressed RLE counts are invalid"),
    ({"size": [7, 5], "counts": 35}, "a string or a list"),
])
def test_validate_names_what_is_wrong(bad: dict, fragment: str) -> None:
    problem = rle.validate(bad, 7, 5)
    assert problem is not None and fragment in problem


def test_validate_accepts_good_rles() -> None:
    r = rle.encode(_mask())
    assert rle.validate(r, 7, 5) is None and rle.validate({"size": [7, 5], "counts": r["counts"].encode()}, 7, 5) is None
    assert rle.validate({"size": [7, 5], "counts": [35]}, 7, 5) is None


def test_clip_polygon_keeps_sensible_polygons_and_bounds_huge_ones() -> None:
    inside = [-30.0, -5.0, 60.0, 2.0, 10.0, 80.0]
    assert rle.clip_polygon(inside, 20, 30) == inside  # within the margin: unchanged, rasterised as COCO does
    huge = [2.0, 2.0, 1e12, 2.0, 1e12, 1e12, 2.0, 20.0]
    clipped = np.asarray(rle.clip_polygon(huge, 20, 30)).reshape(-1, 2)
    assert np.abs(clipped).max() <= 30 + 64 and len(clipped) >= 3
    # inside the image the clipped polygon is the original one: the same pixels as a far (but safe) version
    far = [2.0, 2.0, 1e4, 2.0, 1e4, 1e4, 2.0, 20.0]
    assert np.array_equal(rle.decode(rle.from_polygons([huge], 20, 30)), rle.decode(rle.from_polygons([far], 20, 30)))
    assert rle.clip_polygon([100.0, 100.0, 200.0, 100.0, 200.0, 200.0], 20, 30) == []
    assert rle.area(rle.from_polygons([[-1e15, -1e15, 1e15, -1e15, 1e15, 1e15, -1e15, 1e15]], 20, 30)) == 600

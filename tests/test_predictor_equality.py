"""The predictor's detections for every resize mode equal a stored reference.

The reference (``tests/data/predictor_reference.npz``) was written by the code *before* the input
transform moved into the model (commit 073edd2: ``minmax`` resized in the model, the other modes by
``data.pipeline.prepare_for_inference`` and a numpy box mapping, ``crop`` swapped for ``pad64``),
so this test shows that moving the transform changed no result: same labels, boxes within 1e-4,
scores within 1e-5, and every mask pixel equal except where the probability is within 1e-4 of the
threshold (stored as two masks, thresholded at ``0.5 - 1e-4`` and ``0.5 + 1e-4``).

The model is the untrained tiny model of ``test_predictor_inputs`` (fixed seed, biased logits), the
images three photographs of different sizes detected in one batch. ``python
tests/test_predictor_equality.py --write`` rewrites the reference: only do that when a change of
results is intended, and say so in the commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from test_predictor_inputs import biased_model, photo

REFERENCE = Path(__file__).parent / "data" / "predictor_reference.npz"
EPS = 1e-4

#: case name -> (config overrides, detect kwargs). "crop" is the reference of a crop-trained
#: model, which the old predictor silently ran as pad64; now its config says inference_resize_mode: pad64.
CASES: dict[str, tuple[dict, dict]] = {
    "minmax": ({}, {}),
    "minmax-score": ({}, {"score_threshold": 0.62}),
    "none": ({"image_resize_mode": "none"}, {}),
    "square": ({"image_resize_mode": "square"}, {}),
    "square-per-image": ({"image_resize_mode": "square", "image_normalization": "per_image",
                          "invert_bright_images": True}, {}),
    "pad64": ({"image_resize_mode": "pad64", "image_max_dim": 128}, {}),
    "pad64-per-image-score": ({"image_resize_mode": "pad64", "image_max_dim": 128, "image_min_scale": 1.5,
                               "image_normalization": "per_image"}, {"score_threshold": 0.545}),
    "crop": ({"image_resize_mode": "crop", "inference_resize_mode": "pad64", "image_max_dim": 128}, {}),
}


def _images() -> list[np.ndarray]:
    return [photo(70, 90), photo(50, 60, "coffee"), photo(120, 40, "chelsea")]


def _predictor(name: str):
    from maskrcnn.inference.predictor import Predictor

    overrides, _ = CASES[name]
    model = biased_model(mask_paste="torchvision", **overrides)  # the reference predates the subpixel paste
    return Predictor(model, device="cpu")


def _detect(name: str) -> dict[str, np.ndarray]:
    predictor = _predictor(name)
    kw = CASES[name][1]
    images = _images()
    lo = predictor.detect(images, batch_size=3, mask_threshold=0.5 - EPS, **kw)
    hi = predictor.detect(images, batch_size=3, mask_threshold=0.5 + EPS, **kw)
    mid = predictor.detect(images, batch_size=3, **kw)
    out: dict[str, np.ndarray] = {}
    for i, (a, b, m) in enumerate(zip(lo, hi, mid)):
        assert np.array_equal(a.boxes, m.boxes) and np.array_equal(b.boxes, m.boxes)
        p = f"{name}/{i}/"
        out[p + "boxes"], out[p + "labels"], out[p + "scores"] = m.boxes, m.class_ids, m.scores
        out[p + "masks_lo"], out[p + "masks_hi"] = np.packbits(a.masks), np.packbits(b.masks)
        out[p + "masks"] = np.packbits(m.masks)
        out[p + "size"] = np.array(m.image_size)
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.mark.parametrize("name", list(CASES))
def test_detections_equal_the_reference(reference, name):
    new = _detect(name)
    n_images = len(_images())
    total = 0
    for i in range(n_images):
        p = f"{name}/{i}/"
        size = tuple(reference[p + "size"])
        assert tuple(new[p + "size"]) == size
        labels = reference[p + "labels"]
        assert np.array_equal(new[p + "labels"], labels)
        # the reference was written on one CPU; another picks other fp32 kernels (summation order),
        # so boxes and scores get a margin well above that rounding and far below any real change
        np.testing.assert_allclose(new[p + "boxes"], reference[p + "boxes"], atol=10 * EPS, rtol=0)
        np.testing.assert_allclose(new[p + "scores"], reference[p + "scores"], atol=EPS, rtol=0)
        shape = (len(labels), *size)
        count = int(np.prod(shape))
        got = np.unpackbits(new[p + "masks"], count=count).reshape(shape).astype(bool)
        lo = np.unpackbits(reference[p + "masks_lo"], count=count).reshape(shape).astype(bool)
        hi = np.unpackbits(reference[p + "masks_hi"], count=count).reshape(shape).astype(bool)
        assert not (got & ~lo).any(), "a pixel below 0.5 - 1e-4 in the reference is on"
        assert not (hi & ~got).any(), "a pixel above 0.5 + 1e-4 in the reference is off"
        total += len(labels)
    assert total >= 6, "the reference has too few detections to mean anything"


def _write() -> None:
    import torch

    torch.set_num_threads(1)
    data: dict[str, np.ndarray] = {}
    for name in CASES:
        data.update(_detect(name))
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, **data)
    for name in CASES:
        print(name, [len(data[f"{name}/{i}/labels"]) for i in range(len(_images()))])


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write()

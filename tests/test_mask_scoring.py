"""Maskness rescoring (``mask_scoring: maskness``): the mean mask probability over the mask's own
cells, multiplied into the box score, re-sorted and thresholded after the product."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.inference.predictor import Predictor
from maskrcnn.inference.scoring import maskness, rescore_by_maskness
from test_predictor_inputs import biased_model, photo


def test_maskness_on_hand_made_maps():
    probs = torch.full((3, 4, 4), 0.2)
    probs[0, :2, :2] = 0.9  # four cells at 0.9 ...
    probs[0, 2:, 2:] = 0.6  # ... and four at 0.6: (3.6 + 2.4) / 8
    probs[1, 1:3, 1:3] = 1.0
    # probs[2]: no cell reaches the threshold
    torch.testing.assert_close(maskness(probs, 0.5), torch.tensor([0.75, 1.0, 0.0]))
    torch.testing.assert_close(maskness(probs, 0.7), torch.tensor([0.9, 1.0, 0.0]))
    torch.testing.assert_close(maskness(probs, 0.2), torch.tensor([(3.6 + 2.4 + 8 * 0.2) / 16, (4 + 12 * 0.2) / 16, 0.2]))


def test_rescore_sorts_and_thresholds_the_product():
    probs = torch.zeros(3, 4, 4)
    probs[0, :2] = 0.55  # maskness 0.55
    probs[1, :2] = 1.0  # 1.0
    probs[2, :2] = 0.8  # 0.8
    raw = {"boxes": torch.arange(12.0).view(3, 4), "scores": torch.tensor([0.9, 0.6, 0.7]),
           "labels": torch.tensor([1, 2, 1]), "mask_probs": probs}
    out = rescore_by_maskness(raw, 0.5)
    torch.testing.assert_close(out["scores"], torch.tensor([0.6, 0.56, 0.495]))  # 0.6*1, 0.7*0.8, 0.9*0.55
    assert out["labels"].tolist() == [2, 1, 1]
    assert torch.equal(out["boxes"], raw["boxes"][[1, 2, 0]])
    assert torch.equal(out["mask_probs"], probs[[1, 2, 0]])
    kept = rescore_by_maskness(raw, 0.5, score_threshold=0.5)
    torch.testing.assert_close(kept["scores"], torch.tensor([0.6, 0.56]))  # 0.9 was above, its product is not


@pytest.mark.parametrize("cut", [False, True])
def test_predictor_scores_are_box_score_times_maskness(cut):
    image = photo(70, 90)
    plain = Predictor(biased_model(), device="cpu")
    rescored = Predictor(biased_model(mask_scoring="maskness"), device="cpu")
    from maskrcnn.data.images import to_float_tensor

    raw = plain._detect_raw([to_float_tensor(image)], None)[0]
    want = (raw["scores"] * maskness(raw["mask_probs"], 0.5)).numpy()
    assert len(want) >= 5 and not np.allclose(want, raw["scores"].numpy())  # the test can tell them apart
    # a threshold between two products that box scores alone would place elsewhere
    score_threshold = float(np.median(want)) if cut else None
    got = rescored.detect([image], score_threshold=score_threshold)[0]
    order = np.argsort(-want, kind="stable")
    if score_threshold is not None:
        order = order[want[order] >= score_threshold]
        assert 0 < len(order) < len(want)
    np.testing.assert_allclose(got.scores, want[order], rtol=1e-6)
    np.testing.assert_allclose(got.boxes, raw["boxes"].numpy()[order], atol=1e-5)
    assert np.all(np.diff(got.scores) <= 0)
    base = plain.detect([image])[0]
    assert np.array_equal(got.masks, base.masks[np.argsort(-want, kind="stable")][: len(order)])

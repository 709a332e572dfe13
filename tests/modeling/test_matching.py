"""Matcher (thresholds, low-quality matches, ties) and sample_balanced (fraction, counts, seeds)."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.modeling.matching import BELOW_LOW, BETWEEN, Matcher, sample_balanced

# IoU [G=2, P=5]
IOU = torch.tensor([[0.9, 0.5, 0.2, 0.0, 0.1],
                    [0.1, 0.6, 0.35, 0.0, 0.6]])


def test_thresholds_give_match_between_and_below() -> None:
    matches = Matcher(0.7, 0.3, allow_low_quality=False)(IOU.clone())
    assert matches.tolist() == [0, BETWEEN, BETWEEN, BELOW_LOW, BETWEEN]


def test_threshold_boundaries_are_inclusive_at_the_top() -> None:
    iou = torch.tensor([[0.5, 0.4999, 0.7, 0.3, 0.2999]])
    assert Matcher(0.5, 0.5, allow_low_quality=False)(iou.clone()).tolist() == [0, BELOW_LOW, 0, BELOW_LOW, BELOW_LOW]
    assert Matcher(0.7, 0.3, allow_low_quality=False)(iou.clone()).tolist() == [BETWEEN, BETWEEN, 0, BETWEEN, BELOW_LOW]


def test_low_quality_matches_keep_every_tied_best_prediction_of_each_gt() -> None:
    # GT 1's best IoU (0.6) is below 0.7 and tied between predictions 1 and 4: both keep GT 1
    matches = Matcher(0.7, 0.3, allow_low_quality=True)(IOU.clone())
    assert matches.tolist() == [0, 1, BETWEEN, BELOW_LOW, 1]


def test_a_low_quality_match_takes_the_prediction_s_best_gt() -> None:
    # prediction 0 is GT 1's best (0.4) but overlaps GT 0 more (0.45): it is matched to GT 0 (torchvision's rule)
    iou = torch.tensor([[0.45, 0.8], [0.4, 0.1]])
    assert Matcher(0.7, 0.3, allow_low_quality=True)(iou).tolist() == [0, 0]


def test_matcher_rejects_low_above_high() -> None:
    with pytest.raises(ValueError, match="low threshold 0.7 above high threshold 0.3"):
        Matcher(0.3, 0.7, allow_low_quality=False)


def _labels(pos: int, neg: int, ignored: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.randint(1, 4, (pos,), generator=g), torch.zeros(neg, dtype=torch.int64),
                        torch.full((ignored,), -1)])
    return labels[torch.randperm(labels.numel(), generator=g)]


@pytest.mark.parametrize("pos,neg,batch,fraction,want_pos,want_neg", [
    (10, 100, 64, 0.25, 10, 54),   # few positives: negatives fill the batch
    (40, 100, 64, 0.25, 16, 48),   # positives capped at the fraction
    (40, 5, 64, 0.25, 16, 5),      # few negatives: the batch is not filled
    (0, 30, 16, 0.5, 0, 16),       # no positives
    (7, 7, 10, 0.25, 2, 7),        # int(10 * 0.25) = 2 positives
])
def test_sample_counts(pos: int, neg: int, batch: int, fraction: float, want_pos: int, want_neg: int) -> None:
    labels = _labels(pos, neg, 5)
    p, n = sample_balanced(labels, batch, fraction, generator=torch.Generator().manual_seed(0))
    assert (p.numel(), n.numel()) == (want_pos, want_neg)
    assert bool((labels[p] >= 1).all()) and bool((labels[n] == 0).all())  # never an ignored (-1) index
    assert p.unique().numel() == p.numel() and n.unique().numel() == n.numel()


def test_sampling_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    labels = _labels(50, 200, 10)

    def draw(seed: int) -> tuple[list[int], list[int]]:
        p, n = sample_balanced(labels, 32, 0.25, generator=torch.Generator().manual_seed(seed))
        return sorted(p.tolist()), sorted(n.tolist())

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    torch.manual_seed(9)
    a = sample_balanced(labels, 32, 0.25)
    torch.manual_seed(9)
    b = sample_balanced(labels, 32, 0.25)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # without a generator: torch's global RNG

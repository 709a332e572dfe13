"""RegionProposalNetwork: proposal selection (top-k per level, clipping, size/score filters, NMS per
level, counts), anchor labels, and its losses on hand-made cases."""

from __future__ import annotations

import math

import torch

from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.rpn import RegionProposalNetwork, RPNHead


def _rpn(pre: int = 3, post: int = 4, score_thresh: float = 0.0, loss_weights: dict | None = None,
         batch: int = 256) -> RegionProposalNetwork:
    anchors = AnchorGenerator([32], [0.5, 1.0, 2.0])
    return RegionProposalNetwork(RPNHead(8, 3), anchors, fg_iou=0.7, bg_iou=0.3, batch_size_per_image=batch,
                                 positive_fraction=0.5, pre_nms_top_n={"training": pre, "testing": pre},
                                 post_nms_top_n={"training": post, "testing": post}, nms_thresh=0.7,
                                 weights=(1.0, 1.0, 1.0, 1.0), score_thresh=score_thresh, loss_weights=loss_weights)


# two levels: 4 anchors, then 2 (zero deltas: proposals are the anchors themselves)
ANCHORS = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50],
                        [0, 0, 10, 10], [0, 0, 0.0005, 10]], dtype=torch.float32)
LOGITS = torch.tensor([[3.0, 2.0, 1.0, 0.5, 2.5, 4.0]])
COUNTS = [4, 2]


def _select(rpn: RegionProposalNetwork, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    (out,) = rpn.eval().select_proposals(LOGITS, torch.zeros(1, 6, 4), ANCHORS, COUNTS, [size])
    return out


def test_proposals_top_k_per_level_nms_per_level_and_min_size() -> None:
    # level 0: top 3 = anchors 0, 1, 2 (3 is cut); 1 overlaps 0 (IoU 0.82) and goes in NMS;
    # level 1: anchor 5 is 0.0005 px wide (dropped), anchor 4 equals anchor 0 but NMS is per level
    out = _select(_rpn(pre=3, post=4))
    assert torch.equal(out, ANCHORS[[0, 4, 2]])  # by score: 3.0, 2.5, 1.0


def test_post_nms_top_n_and_score_threshold_limit_the_count() -> None:
    assert torch.equal(_select(_rpn(pre=3, post=2)), ANCHORS[[0, 4]])
    assert torch.equal(_select(_rpn(pre=3, post=4, score_thresh=1 / (1 + math.exp(-1.5)))), ANCHORS[[0, 4]])
    assert torch.equal(_select(_rpn(pre=4, post=9)), ANCHORS[[0, 4, 2, 3]])


def test_proposals_are_clipped_to_their_image() -> None:
    out = _select(_rpn(pre=4, post=9), size=(45, 48))  # (H, W)
    assert torch.equal(out[-1], torch.tensor([40.0, 40.0, 48.0, 45.0]))


def test_training_and_testing_limits_are_separate() -> None:
    rpn = _rpn()
    rpn.pre_nms_top_n, rpn.post_nms_top_n = {"training": 4, "testing": 1}, {"training": 9, "testing": 9}
    assert len(rpn.train().select_proposals(LOGITS, torch.zeros(1, 6, 4), ANCHORS, COUNTS, [(64, 64)])[0]) == 4
    # testing: one per level, and level 1's best (anchor 5) is too small
    assert torch.equal(rpn.eval().select_proposals(LOGITS, torch.zeros(1, 6, 4), ANCHORS, COUNTS, [(64, 64)])[0], ANCHORS[:1])


# one GT box; anchors: IoU 1 (positive), 0.83 (positive), 0 (negative), 0.33 (ignored, between 0.3 and 0.7)
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
LOSS_ANCHORS = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60], [5, 0, 15, 10]], dtype=torch.float32)


def test_anchor_labels() -> None:
    rpn = _rpn()
    labels, matched = rpn.label_anchors(LOSS_ANCHORS, {"boxes": GT})
    assert labels.tolist() == [1.0, 1.0, 0.0, -1.0] and torch.equal(matched[:2], GT.expand(2, 4))
    # a GT that no anchor covers at 0.7 still gets its best anchor (low-quality match)
    far = torch.tensor([[50.0, 50.0, 60.0, 70.0]])  # IoU 0.5 with anchor 2
    assert rpn.label_anchors(LOSS_ANCHORS, {"boxes": far})[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    # negatives covered more than half by an ignore region (crowd) are ignored
    ignore = torch.zeros(64, 64, dtype=torch.bool)
    ignore[50:60, 50:60] = True
    assert rpn.label_anchors(LOSS_ANCHORS, {"boxes": GT, "ignore": ignore})[0].tolist() == [1.0, 1.0, -1.0, -1.0]
    # no GT: everything is negative
    assert rpn.label_anchors(LOSS_ANCHORS, {"boxes": torch.zeros(0, 4)})[0].tolist() == [0.0] * 4


def test_losses_are_zero_for_a_perfect_prediction() -> None:
    rpn = _rpn()
    reg = rpn.box_coder.encode(GT.expand(4, 4), LOSS_ANCHORS)[None]  # exact deltas (the negatives' do not count)
    objectness = torch.tensor([[30.0, 30.0, -30.0, 123.0]])  # the ignored anchor's logit does not count
    losses = rpn.losses(objectness, reg, LOSS_ANCHORS, [{"boxes": GT}])
    assert set(losses) == {"loss_rpn_class", "loss_rpn_bbox"}
    assert float(losses["loss_rpn_bbox"]) == 0.0 and float(losses["loss_rpn_class"]) < 1e-12


def test_losses_known_values() -> None:
    # zero logits: BCE log 2 on each of the 3 sampled anchors; zero deltas: anchor 1's targets are
    # (0, -1/12, 0, log(10/12)), smooth-L1 (beta 1/9) summed, divided by the 3 sampled anchors
    rpn = _rpn()
    losses = rpn.losses(torch.zeros(1, 4), torch.zeros(1, 4, 4), LOSS_ANCHORS, [{"boxes": GT}])
    beta = 1 / 9
    box = (0.5 * (1 / 12) ** 2 / beta + (math.log(12 / 10) - 0.5 * beta)) / 3
    torch.testing.assert_close(losses["loss_rpn_class"], torch.tensor(math.log(2.0)))
    torch.testing.assert_close(losses["loss_rpn_bbox"], torch.tensor(box))


def test_loss_weights_multiply_each_term() -> None:
    plain = _rpn().losses(torch.zeros(1, 4), torch.zeros(1, 4, 4), LOSS_ANCHORS, [{"boxes": GT}])
    weighted = _rpn(loss_weights={"rpn_class": 2.0, "rpn_bbox": 0.25, "mrcnn_mask": 9.0}).losses(
        torch.zeros(1, 4), torch.zeros(1, 4, 4), LOSS_ANCHORS, [{"boxes": GT}])
    torch.testing.assert_close(weighted["loss_rpn_class"], 2.0 * plain["loss_rpn_class"])
    torch.testing.assert_close(weighted["loss_rpn_bbox"], 0.25 * plain["loss_rpn_bbox"])


def test_losses_over_two_images_sample_each_and_normalise_by_all_sampled() -> None:
    # image 1 has no GT: its 4 anchors are negatives; 3 + 4 anchors are sampled in all
    rpn = _rpn()
    losses = rpn.losses(torch.zeros(2, 4), torch.zeros(2, 4, 4), LOSS_ANCHORS,
                        [{"boxes": GT}, {"boxes": torch.zeros(0, 4)}])
    beta = 1 / 9
    torch.testing.assert_close(losses["loss_rpn_bbox"],
                               torch.tensor((0.5 * (1 / 12) ** 2 / beta + (math.log(12 / 10) - 0.5 * beta)) / 7))
    torch.testing.assert_close(losses["loss_rpn_class"], torch.tensor(math.log(2.0)))


def test_forward_gives_proposals_inside_each_image_and_losses_only_in_training() -> None:
    torch.manual_seed(0)
    rpn = _rpn(pre=50, post=20)
    feats = [torch.randn(2, 8, 8, 8)]
    sizes = [(64, 60), (50, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]])}, {"boxes": torch.tensor([[10.0, 8.0, 30.0, 44.0]])}]
    proposals, losses = rpn.train()(feats, (64, 64), sizes, targets)
    assert set(losses) == {"loss_rpn_class", "loss_rpn_bbox"} and all(v.requires_grad for v in losses.values())
    proposals, losses = rpn.eval()(feats, (64, 64), sizes)
    assert losses == {}
    for p, (h, w) in zip(proposals, sizes):
        assert 0 < len(p) <= 20
        assert bool((p[:, 0::2] >= 0).all() & (p[:, 0::2] <= w).all() & (p[:, 1::2] >= 0).all() & (p[:, 1::2] <= h).all())

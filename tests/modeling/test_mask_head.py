"""Mask head: output shapes, targets (full and mini masks), loss on hand-made targets, inference."""

from __future__ import annotations

import math

import torch

from maskrcnn.modeling.mask_head import MaskHead, MaskPredictor, mask_loss, mask_targets


def test_shapes_and_key_names() -> None:
    head = MaskHead(4, 8, convs=2, norm=True)
    assert [k for k in head.state_dict() if k.endswith("weight")] == ["0.0.weight", "0.1.weight", "1.0.weight", "1.1.weight"]
    feats = head.eval()(torch.randn(3, 4, 14, 14))
    assert feats.shape == (3, 8, 14, 14)
    pred = MaskPredictor(8, 6, num_classes=3)
    assert pred(feats).shape == (3, 3, 28, 28)


def test_inference_is_the_sigmoid_of_the_labelled_class() -> None:
    torch.manual_seed(0)
    pred = MaskPredictor(8, 6, num_classes=3).eval()
    x = torch.randn(4, 8, 7, 7)
    labels = torch.tensor([2, 1, 1, 2])
    with torch.no_grad():
        probs = pred.inference(x, labels)  # the matmul + pixel-shuffle path
    with torch.enable_grad():
        ref = pred(x)[torch.arange(4), labels].sigmoid()  # the transposed-conv path
    assert probs.shape == (4, 14, 14)
    torch.testing.assert_close(probs, ref.detach(), atol=1e-5, rtol=0)


def test_full_mask_targets_known_values() -> None:
    # top half of a 20 x 20 mask; RoI = the mask, 4 x 4 bins of 5 px sampled at 0.5, 1.5, ... (aligned=False):
    # bin row 1 samples y = 5.5 .. 9.5 and the last is half on (9.5 between rows 9 and 10): (4 + 0.5) / 5
    masks = torch.zeros(1, 20, 20, dtype=torch.uint8)
    masks[0, :10] = 1
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    got = mask_targets(box, torch.tensor([0]), masks, box, 4)
    assert torch.equal(got[0, :, 0], got[0, :, 3])  # constant along x
    torch.testing.assert_close(got[0, :, 0], torch.tensor([1.0, 0.9, 0.0, 0.0]))


def test_targets_follow_the_matched_gt() -> None:
    masks = torch.zeros(2, 20, 20, dtype=torch.uint8)
    masks[1] = 1
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    got = mask_targets(box.expand(3, 4), torch.tensor([1, 0, 1]), masks, box.expand(2, 4), 4)
    assert got.sum((1, 2)).tolist() == [16.0, 0.0, 16.0]
    assert mask_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), masks, box, 4).shape == (0, 4, 4)


def test_mini_mask_targets_match_full_mask_targets() -> None:
    # a 30 x 20 rectangle; its mini-mask (cropped to the box) is all ones
    full = torch.zeros(1, 40, 40, dtype=torch.uint8)
    full[0, 8:28, 4:34] = 1
    box = torch.tensor([[4.0, 8.0, 34.0, 28.0]])
    rois = torch.tensor([[4.0, 8.0, 34.0, 28.0], [0.0, 0.0, 20.0, 20.0], [10.0, 12.0, 40.0, 30.0]])
    matched = torch.zeros(3, dtype=torch.int64)
    a = mask_targets(rois, matched, full, box, 8)
    b = mask_targets(rois, matched, torch.ones(1, 10, 15, dtype=torch.uint8), box, 8, mini_masks=True)
    assert torch.equal(a >= 0.5, b >= 0.5) and float((a - b).abs().max()) < 0.1
    assert float(a[0].min()) > 0.4 and float(a[1].max()) == 1.0 and float(a[1, 0].max()) == 0.0


def test_mask_loss_known_values() -> None:
    labels = torch.tensor([1, 2])
    logits = torch.full((2, 3, 4, 4), -20.0)  # every class but the label is wrong: it must not count
    logits[0, 1] = 0.0  # log 2 per pixel
    logits[1, 2] = 20.0  # right: ~0
    targets = torch.ones(2, 4, 4)
    torch.testing.assert_close(mask_loss(logits, labels, targets), torch.tensor(math.log(2) / 2), atol=1e-6, rtol=0)
    # per-RoI means weighted by class: (1 * log 2 + 3 * 0) / 4
    torch.testing.assert_close(mask_loss(logits, labels, targets, torch.tensor([1.0, 1.0, 3.0])),
                               torch.tensor(math.log(2) / 4), atol=1e-6, rtol=0)


def test_mask_loss_without_positives_is_zero_and_differentiable() -> None:
    logits = torch.zeros(0, 3, 4, 4, requires_grad=True)
    loss = mask_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_losses_compute_targets_per_image_and_apply_the_loss_weight() -> None:
    torch.manual_seed(0)
    pred = MaskPredictor(8, 6, num_classes=3).train()
    x = torch.randn(3, 8, 7, 7)  # two positives in image 0, one in image 1
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    top = torch.zeros(1, 20, 20, dtype=torch.uint8)
    top[0, :10] = 1
    targets = [{"masks": top, "boxes": box}, {"masks": 1 - top, "boxes": box}]
    rois = [box.expand(2, 4), box]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    matched = [torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)]
    got = pred.losses(x, rois, labels, matched, targets)
    assert set(got) == {"loss_mrcnn_mask"}
    expected_targets = torch.cat([mask_targets(rois[0], matched[0], top, box, 14), mask_targets(box, matched[1], 1 - top, box, 14)])
    torch.testing.assert_close(got["loss_mrcnn_mask"], mask_loss(pred(x), torch.tensor([1, 2, 2]), expected_targets))
    weighted = MaskPredictor(8, 6, num_classes=3, loss_weights={"mrcnn_mask": 3.0, "mrcnn_class": 5.0})
    weighted.load_state_dict(pred.state_dict())
    torch.testing.assert_close(weighted.losses(x, rois, labels, matched, targets)["loss_mrcnn_mask"], 3.0 * got["loss_mrcnn_mask"])

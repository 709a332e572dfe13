"""BoxCoder and clip_boxes: known deltas, round trips, the exp clamp, per-class decoding."""

from __future__ import annotations

import math

import torch

from maskrcnn.modeling.box_coder import BoxCoder, clip_boxes


def test_encode_known_values() -> None:
    proposal = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 0.0, 15.0, 20.0]])  # centre (10, 10) vs (5, 5); size 10 x 20 vs 10 x 10
    torch.testing.assert_close(BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, proposal),
                               torch.tensor([[0.5, 0.5, 0.0, math.log(2.0)]]))
    torch.testing.assert_close(BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt, proposal),
                               torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2.0)]]))


def test_decode_inverts_encode() -> None:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    proposals = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 60], 1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 60], 1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        deltas = coder.encode(gt, proposals)
        torch.testing.assert_close(coder.decode(deltas, proposals)[:, 0], gt, atol=1e-3, rtol=0)


def test_decode_per_class_columns() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, -0.5, math.log(3.0), 0.0]])  # class 0: identity; class 1: moved
    out = coder.decode(deltas, boxes)
    assert out.shape == (1, 2, 4)
    torch.testing.assert_close(out[0, 0], boxes[0])
    # centre (5, 10) + (1 * 10, -0.5 * 20) = (15, 0); width 10 * 3 = 30, height 20
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, -10.0, 30.0, 10.0]))


def test_decode_clamps_log_size_deltas_but_not_centre_deltas() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), box)[0, 0]  # dw = dh = 10 > log(1000 / 16)
    torch.testing.assert_close(out, torch.tensor([8 - 500.0, 8 - 500.0, 8 + 500.0, 8 + 500.0]))
    out = coder.decode(torch.tensor([[1000.0, 0.0, 0.0, 0.0]]), box)[0, 0]  # dx = 100 widths, unclamped
    torch.testing.assert_close(out, torch.tensor([1600.0, 0.0, 1616.0, 16.0]))


def test_clip_boxes_clips_x_to_width_and_y_to_height() -> None:
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 40.0], [10.0, 5.0, 20.0, 25.0]])
    out = clip_boxes(boxes, (30, 45))  # (H, W)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 45.0, 30.0], [10.0, 5.0, 20.0, 25.0]]))

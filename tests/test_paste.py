"""Mask pasting equals torchvision's paste_masks_in_image, including boxes partly outside the image."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn.inference.paste import paste_masks


def test_paste_matches_torchvision_float_and_bool():
    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 37, 53
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 4, h + 4]) - 6  # some start left/above the image
    wh = torch.rand(n, 2, generator=g) * 30 + 0.3
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([60.0, 40.0, 70.0, 50.0])  # entirely outside: torchvision raises on it
    ref = paste_masks_in_image(probs[1:, None], boxes[1:], (h, w))[:, 0]
    ours = paste_masks(probs, boxes, (h, w), threshold=None)
    torch.testing.assert_close(ours[1:], ref, atol=0, rtol=0)
    assert torch.equal(paste_masks(probs, boxes, (h, w), threshold=0.5)[1:], ref >= 0.5)
    assert ours[0].sum() == 0 and ref.sum() > 0


def test_paste_empty():
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7))
    assert out.shape == (0, 5, 7) and out.dtype == torch.bool

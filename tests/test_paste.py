"""Mask pasting: ``torchvision`` equals torchvision's paste_masks_in_image (boxes partly outside the
image included); ``subpixel`` equals Detectron2's grid_sample paste and puts a perfect head's mask
back on its ground-truth pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn.inference.paste import paste_masks
from maskrcnn.modeling.mask_head import TARGET_FRAME_SHIFT, mask_targets


def test_paste_matches_torchvision_float_and_bool():
    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 37, 53
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 4, h + 4]) - 6  # some start left/above the image
    wh = torch.rand(n, 2, generator=g) * 30 + 0.3
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([60.0, 40.0, 70.0, 50.0])  # entirely outside: torchvision raises on it
    ref = paste_masks_in_image(probs[1:, None], boxes[1:], (h, w))[:, 0]
    ours = paste_masks(probs, boxes, (h, w), threshold=None, mode="torchvision")
    torch.testing.assert_close(ours[1:], ref, atol=0, rtol=0)
    assert torch.equal(paste_masks(probs, boxes, (h, w), threshold=0.5, mode="torchvision")[1:], ref >= 0.5)
    assert ours[0].sum() == 0 and ref.sum() > 0


def test_paste_empty():
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7))
    assert out.shape == (0, 5, 7) and out.dtype == torch.bool


def _grid_sample_paste(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Detectron2's paste, written independently: every image pixel samples its box's map at the pixel
    centre with ``grid_sample`` (the map spans the box; zeros outside)."""
    h, w = size
    out = []
    for p, (x1, y1, x2, y2) in zip(probs, boxes.tolist()):
        gx = ((torch.arange(w) + 0.5) - x1) / (x2 - x1) * 2 - 1
        gy = ((torch.arange(h) + 0.5) - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], -1)[None]
        out.append(F.grid_sample(p[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0])
    return torch.stack(out)


def test_subpixel_matches_grid_sample():
    g = torch.Generator().manual_seed(1)
    n, h, w = 14, 41, 57
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 4, h + 4]) - 6
    wh = torch.rand(n, 2, generator=g) * torch.tensor([70.0, 40.0]) + 0.3  # cells from 0.01 to 2.5 px
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([70.0, 50.0, 80.0, 60.0])  # entirely outside
    ref = _grid_sample_paste(probs, boxes, (h, w))
    ours = paste_masks(probs, boxes, (h, w), threshold=None)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)  # two summation orders
    hard = paste_masks(probs, boxes, (h, w), threshold=0.5)
    assert not (hard != (ref >= 0.5))[(ref - 0.5).abs() > 1e-5].any()
    assert ours[0].sum() == 0


def test_subpixel_covers_the_box_and_torchvision_is_a_pixel_wider():
    ones = torch.ones(1, 28, 28)
    box = torch.tensor([[2.0, 3.0, 12.0, 9.0]])  # 10 x 6 px at integer corners
    sub = paste_masks(ones, box, (16, 20))[0]
    assert torch.equal(sub.nonzero().min(0).values, torch.tensor([3, 2]))
    assert torch.equal(sub.nonzero().max(0).values, torch.tensor([8, 11]))
    assert int(sub.sum()) == 60
    tv = paste_masks(ones, box, (16, 20), mode="torchvision")[0]
    # rows 2..9 and columns 1..12: the box expanded by one cell, truncated, plus one pixel
    assert torch.equal(tv.nonzero().min(0).values, torch.tensor([2, 1]))
    assert torch.equal(tv.nonzero().max(0).values, torch.tensor([9, 12]))
    assert int(tv.sum()) == 8 * 12
    # a box at fractional corners takes the pixels whose centres it holds
    assert torch.equal(paste_masks(ones, box + 0.3, (16, 20))[0], sub)
    moved = paste_masks(ones, box + 0.7, (16, 20))[0]
    assert int(moved.sum()) == 60 and int(moved[4:10, 3:13].sum()) == 60


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r


@pytest.mark.parametrize("radius", [4.3, 7.6, 15.2])
def test_perfect_head_pastes_back_onto_its_ground_truth(radius):
    """The map a perfect head learns for a RoI is its training target (RoIAlign aligned=False: the
    frame of the RoI moved by +0.5 px). Asked for the GT box moved by -0.5 px, as the model with
    ``mask_paste: subpixel`` asks, that map pasted at the GT box gives back the GT disk; torchvision's
    frame and paste make it about a pixel wider (a large loss of IoU on small objects)."""
    h, w = 48, 56
    gt = _disk(h, w, 23.4, 27.8, radius)
    ys, xs = gt.nonzero(as_tuple=True)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    masks = gt[None].float()
    zero = torch.zeros(1, dtype=torch.int64)

    def iou(pasted: torch.Tensor) -> float:
        return float((pasted & gt).sum() / (pasted | gt).sum())

    ours = mask_targets(box - TARGET_FRAME_SHIFT, zero, masks, box, 28)
    theirs = mask_targets(box, zero, masks, box, 28)
    iou_sub = iou(paste_masks(ours, box, (h, w))[0])
    iou_tv = iou(paste_masks(theirs, box, (h, w), mode="torchvision")[0])
    iou_unshifted = iou(paste_masks(theirs, box, (h, w))[0])  # the paste alone, without the frame
    assert iou_sub >= 0.99  # 1.0 for these disks
    assert iou_tv < iou_sub - 0.07  # 0.76, 0.91, 0.92
    assert iou_unshifted < iou_sub - 0.03  # 0.85, 0.93, 0.96


def test_paste_mode_is_checked():
    with pytest.raises(ValueError, match="paste mode"):
        paste_masks(torch.zeros(1, 28, 28), torch.zeros(1, 4), (5, 7), mode="detectron")


@pytest.mark.parametrize("mode, shift", [("subpixel", TARGET_FRAME_SHIFT), ("torchvision", 0.0)])
def test_config_sets_the_heads_frame(mode, shift):
    from maskrcnn.config import Config
    from maskrcnn.modeling.mask_rcnn import build_model

    model = build_model(Config(num_classes=2, backbone="resnet18", backbone_width=8, fpn_channels=16,
                               box_head_dim=32, mask_head_channels=8, mask_paste=mode))
    assert model.roi_heads.mask_frame_shift == shift
    feats = [torch.rand(1, 16, 32 // s, 32 // s) for s in (1, 2, 4, 8)]
    boxes = [torch.tensor([[3.0, 4.0, 20.0, 15.0]])]
    labels = torch.tensor([1])
    model.eval()
    got = model.roi_heads.mask_probs(feats, boxes, labels)
    model.roi_heads.mask_frame_shift = 0.0
    ref = model.roi_heads.mask_probs(feats, [boxes[0] - shift], labels)
    assert torch.equal(got, ref)

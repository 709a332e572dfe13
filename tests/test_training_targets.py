"""Training-side model pieces: mask targets from cropped and mini masks equal torchvision's full-mask
targets, losses match torchvision's for the same weights and sampled RoIs, ignore regions."""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import project_masks_on_boxes

from maskrcnn import Config
from maskrcnn.data.minimask import minimize_masks
from maskrcnn.modeling import build_model
from maskrcnn.modeling.mask_head import mask_targets
from maskrcnn.modeling.regions import box_ignore_fraction


def _scene():
    g = torch.Generator().manual_seed(0)
    h, w = 90, 120
    masks = torch.zeros(3, h, w, dtype=torch.uint8)
    masks[0, 10:40, 15:60] = 1
    masks[1, 50:85, 70:118] = 1
    masks[2, 5:30, 80:100] = 1
    masks[2, 12:20, 85:90] = 0  # a hole
    boxes = torch.tensor([[15, 10, 60, 40], [70, 50, 118, 85], [80, 5, 100, 30]], dtype=torch.float32)
    matched = torch.tensor([0, 0, 1, 2, 1, 2])
    jitter = torch.rand(6, 4, generator=g) * 6 - 3
    rois = boxes[matched] + jitter
    return masks, boxes, rois, matched


def test_cropped_mask_targets_equal_full_image_roialign():
    masks, boxes, rois, matched = _scene()
    ours = mask_targets(rois, matched, masks, boxes, 28)
    ref = project_masks_on_boxes(masks, rois, matched, 28)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_mini_mask_targets_close_to_full_masks():
    masks, boxes, rois, matched = _scene()
    mini = torch.as_tensor(minimize_masks(masks.numpy(), boxes.numpy(), (56, 56)))
    ours = mask_targets(rois, matched, mini, boxes, 28, mini_masks=True)
    ref = project_masks_on_boxes(masks, rois, matched, 28)
    iou = ((ours >= 0.5) & (ref >= 0.5)).sum((1, 2)) / ((ours >= 0.5) | (ref >= 0.5)).sum((1, 2))
    assert iou.min() > 0.85, iou


def test_box_ignore_fraction():
    ignore = torch.zeros(20, 30, dtype=torch.bool)
    ignore[0:10, 0:10] = True
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 10], [10, 10, 20, 20], [5, 5, 5, 9]], dtype=torch.float32)
    torch.testing.assert_close(box_ignore_fraction(boxes, ignore), torch.tensor([1.0, 0.5, 0.0, 0.0]))


def test_losses_equal_torchvision_for_same_weights_and_sampling():
    """Same weights, same RNG state (so the same sampled anchors and RoIs): the same five losses."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN as TVMaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = TVMaskRCNN(_resnet_fpn_extractor(resnet18(norm_layer=FrozenBatchNorm2d), 5), num_classes=4,
                    min_size=96, max_size=200).train()
    ours = build_model(Config(backbone="resnet18", num_classes=4, train_bn=False, frozen_bn_eps=1e-5)).train()
    ours.load_state_dict(tv.state_dict(), strict=True)
    masks, boxes, _, _ = _scene()
    img = torch.rand(3, 90, 120)
    # torchvision resizes in training too: give it an image whose resize is the identity (short side 96)
    img = torch.nn.functional.interpolate(img[None], size=(96, 128), mode="bilinear", align_corners=False)[0]
    masks = torch.nn.functional.interpolate(masks[None].float(), size=(96, 128), mode="nearest")[0].to(torch.uint8)
    ys, xs = [m.any(1).nonzero()[:, 0] for m in masks], [m.any(0).nonzero()[:, 0] for m in masks]
    boxes = torch.tensor([[x[0], y[0], x[-1] + 1, y[-1] + 1] for x, y in zip(xs, ys)], dtype=torch.float32)
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}
    torch.manual_seed(7)
    ref = tv([img], [dict(target)])
    torch.manual_seed(7)
    torch.empty(1).uniform_(0.0, 1.0)  # torchvision's training resize draws its min size first
    got = ours([img], [dict(target)])
    names = {"loss_rpn_class": "loss_objectness", "loss_rpn_bbox": "loss_rpn_box_reg", "loss_mrcnn_class": "loss_classifier",
             "loss_mrcnn_bbox": "loss_box_reg", "loss_mrcnn_mask": "loss_mask"}
    assert set(got) == set(names)
    for k, tk in names.items():
        torch.testing.assert_close(got[k], ref[tk], atol=1e-4, rtol=1e-4, msg=k)
    assert all(v > 0 for v in got.values())


def test_mini_mask_training_through_the_pipeline_gives_correct_targets():
    """TrainingDataset with use_mini_mask -> the model's targets equal those from full masks."""
    from maskrcnn.data.pipeline import TrainingDataset
    from maskrcnn.data.synthetic import ShapesDataset

    ds = ShapesDataset(2, seed=0)
    cfg = Config(backbone="resnet18", num_classes=4, image_min_dim=128, image_max_dim=128, aug_hflip=0.0)
    full = TrainingDataset(ds, cfg, train=False)[0][1]
    mini = TrainingDataset(ds, cfg.replace(use_mini_mask=True, mini_mask_shape=[64, 64]), train=False)[0][1]
    assert mini["masks"].shape[-2:] == (64, 64)
    p_full = build_model(cfg).roi_heads.mask_predictor
    p_mini = build_model(cfg.replace(use_mini_mask=True, mini_mask_shape=[64, 64])).roi_heads.mask_predictor
    assert (p_full.mini_masks, p_mini.mini_masks) == (False, True)  # build_model passes use_mini_mask to the head
    matched = torch.arange(len(full["boxes"]))
    rois = full["boxes"] + 1.0
    a = mask_targets(rois, matched, full["masks"], full["boxes"], 28, p_full.mini_masks)
    b = mask_targets(rois, matched, mini["masks"], mini["boxes"], 28, p_mini.mini_masks)
    iou = ((a >= 0.5) & (b >= 0.5)).sum((1, 2)) / ((a >= 0.5) | (b >= 0.5)).sum((1, 2)).clamp(min=1)
    assert iou.min() > 0.85, iou

"""The model's training contract: a dict of already-weighted ``loss_*`` terms, one per head term."""

from __future__ import annotations

import torch

from maskrcnn import Config
from maskrcnn.modeling import build_model

TERMS = {"loss_rpn_class", "loss_rpn_bbox", "loss_mrcnn_class", "loss_mrcnn_bbox", "loss_mrcnn_mask"}


def _losses(loss_weights: dict[str, float]) -> dict[str, torch.Tensor]:
    cfg = Config(backbone="resnet18", num_classes=3, image_min_dim=64, image_max_dim=64, fpn_channels=16,
                 box_head_dim=32, mask_head_channels=8, rpn_train_anchors_per_image=64, train_rois_per_image=32,
                 loss_weights=loss_weights)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 6:40] = 1
    masks[1, 36:60, 30:58] = 1
    target = {"boxes": torch.tensor([[6.0, 8.0, 40.0, 30.0], [30.0, 36.0, 58.0, 60.0]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    torch.manual_seed(2)
    return model([image], [target])


def test_each_head_applies_its_own_loss_weight() -> None:
    ones = {"rpn_class": 1.0, "rpn_bbox": 1.0, "mrcnn_class": 1.0, "mrcnn_bbox": 1.0, "mrcnn_mask": 1.0}
    plain = _losses(ones)
    assert set(plain) == TERMS and all(float(v.detach()) > 0 for v in plain.values())
    scaled = _losses({"rpn_class": 2.0, "rpn_bbox": 0.5, "mrcnn_class": 4.0, "mrcnn_bbox": 1.0, "mrcnn_mask": 0.25})
    for term, w in [("rpn_class", 2.0), ("rpn_bbox", 0.5), ("mrcnn_class", 4.0), ("mrcnn_bbox", 1.0), ("mrcnn_mask", 0.25)]:
        assert torch.equal(scaled["loss_" + term], plain["loss_" + term] * w), term  # powers of two: exact

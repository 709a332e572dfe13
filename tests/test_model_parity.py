"""Exact mode reproduces torchvision's Mask R-CNN (v1 and v2) given the same weights.

Masks are compared with ``mask_paste: torchvision`` (torchvision's half-pixel frame and paste); the
default ``subpixel`` paste differs from torchvision on purpose (``tests/test_paste.py``).

Weights are random, saved from torchvision's builders (frozen-BN statistics randomised too, so the
eps convention matters), and loaded through ``maskrcnn.load`` from a ``.pth`` file in both key-name
forms. Inputs are real photographs from scikit-image, batched at two different sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

import maskrcnn
from torchvision.models import resnet50
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.mask_rcnn import MaskRCNN as TVMaskRCNN

skimage_data = pytest.importorskip("skimage.data")


def _photos() -> list[np.ndarray]:
    return [skimage_data.astronaut(), skimage_data.coffee()]  # 512x512 and 400x600 RGB


def _tv_v1_frozen(min_size: int) -> torch.nn.Module:
    """torchvision's v1 exactly as its COCO-weights path builds it (frozen BN in the body)."""
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=TVFrozenBN), 3)
    return TVMaskRCNN(backbone, num_classes=91, min_size=min_size).eval()


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (TVFrozenBN, torch.nn.BatchNorm2d)):
            n = m.running_mean.numel()
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _legacy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2019 file's names: fpn blocks without ``.0``, ``rpn.head.conv``, ``mask_fcn{1..4}``."""
    import re

    out = {}
    for k, v in sd.items():
        k = re.sub(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.0\.", r"backbone.fpn.\1.\2.", k)
        k = re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", k)
        k = re.sub(r"^roi_heads\.mask_head\.(\d+)\.0\.", lambda m: f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.", k)
        out[k] = v
    return out


def _compare(tv_model: torch.nn.Module, predictor: maskrcnn.inference.predictor.Predictor, min_dets: int) -> None:
    images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in _photos()]
    with torch.no_grad():
        ref = tv_model(images)
        ours = predictor.model(images)
    from maskrcnn.inference.paste import paste_masks

    for r, o, img in zip(ref, ours, images):
        assert len(r["boxes"]) >= min_dets, "reference produced too few detections for a meaningful test"
        assert torch.equal(r["labels"], o["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], r["scores"], atol=1e-4, rtol=0)
        soft = paste_masks(o["mask_probs"], o["boxes"], tuple(img.shape[-2:]), threshold=None, mode="torchvision")
        torch.testing.assert_close(soft, r["masks"][:, 0], atol=1e-4, rtol=0)
    # the public API: bool masks at the original size, threshold 0.5 (>=)
    dets = predictor.detect(_photos())
    for r, d in zip(ref, dets):
        assert d.masks.shape == (len(r["boxes"]),) + tuple(r["masks"].shape[-2:])
        probs = r["masks"][:, 0].numpy()
        # pixels may differ only where the reference probability is within the 1e-4 tolerance of 0.5
        # (the two implementations round differently, and which way depends on the CPU's kernels)
        differ = d.masks != (probs >= 0.5)
        assert not differ[np.abs(probs - 0.5) > 1e-4].any()
        assert differ.sum() <= 1e-4 * differ.size
        np.testing.assert_allclose(d.boxes, r["boxes"].numpy(), atol=1e-4)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-keys", "current-keys"])
def test_v1_matches_torchvision(tmp_path, legacy):
    torch.manual_seed(0)
    tv = _tv_v1_frozen(512 if legacy else 800)
    _randomise_norms(tv, 1)
    sd = tv.state_dict()
    path = tmp_path / "v1.pth"
    torch.save(_legacy_keys(sd) if legacy else sd, path)
    # a v1 file of unknown origin takes the COCO file's convention: frozen BN eps = 0
    overwrite_eps(tv, 0.0)
    pred = maskrcnn.load(path, device="cpu", image_min_dim=512 if legacy else 800, mask_paste="torchvision")
    assert pred.config.frozen_bn_eps == 0.0 and pred.config.architecture == "v1"
    _compare(tv, pred, min_dets=20)


def test_v2_matches_torchvision(tmp_path):
    torch.manual_seed(1)
    tv = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, min_size=512).eval()
    _randomise_norms(tv, 2)
    path = tmp_path / "v2.pth"
    torch.save(tv.state_dict(), path)
    pred = maskrcnn.load(path, device="cpu", image_min_dim=512, mask_paste="torchvision")
    assert pred.config.architecture == "v2"
    _compare(tv, pred, min_dets=20)


def test_bn_origin_sets_eps(tmp_path):
    """A v1 file from a plain-BatchNorm model (``num_batches_tracked`` present) gets eps 1e-5 and matches
    torchvision's backbone; the COCO file's convention (eps 0) would not."""
    torch.manual_seed(2)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    _randomise_norms(tv, 3)
    for m in tv.backbone.body.modules():  # small variances make eps matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.mul_(1e-3)
            m.weight.data.mul_(0.03)
    path = tmp_path / "v1.pth"
    torch.save(tv.state_dict(), path)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = tv.backbone(x)["0"]
        auto = maskrcnn.load(path, device="cpu")
        same = auto.model.backbone(x)[0]
        zero = maskrcnn.load(path, device="cpu", frozen_bn_eps=0.0).model.backbone(x)[0]
    assert auto.config.frozen_bn_eps == 1e-5
    scale = ref.abs().max()
    assert (same - ref).abs().max() / scale < 1e-4
    assert (zero - ref).abs().max() / scale > 1e-3

"""Fast mode (``Config.fast``): BatchNorm folded, channels-last, dense layers under autocast.

The model is test_predictor_inputs' tiny random-weight model whose class and mask logits are
biased so that it detects (fixed seed), with no cap on the detections (``detection_max_instances``
100), so that a detection near the cap cannot drop out. Fast mode is compared with exact mode on
three photographs of different sizes in one batch:

* fp32 channels-last (what fast mode does on a CPU without native bf16): every detection of exact
  mode scoring at least ``SCORE + MARGIN`` has one in fast mode of the same class with box corners
  within 1e-3 px, score within 1e-4 and mask IoU >= 0.98, and the other way round (the margin keeps
  a score that rounding moves across ``SCORE`` out of the comparison);
* bf16 (``fast_dtype: bf16``: native on AVX512-BF16 / AMX CPUs, emulated elsewhere): bf16 keeps
  8 bits of mantissa, so scores move by ~1e-3 and near-tied detections of this random-weight model
  swap places in NMS; the tolerances are therefore on the whole: the top detection's class is the
  same in every image, at least 60 % of the exact detections above ``SCORE`` have a fast one of the
  same class with box IoU >= 0.9 (measured: 88 % with AVX512-BF16 kernels, 81 % with bf16 emulated on
  AVX2 kernels), and their mean mask IoU is >= 0.9 (measured 0.982 and 0.985). In fp32 the largest
  box difference measured was 1.5e-5 px and the largest score difference 2.4e-7.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

import maskrcnn
from maskrcnn import Config
from maskrcnn.config import ConfigError
from maskrcnn.engine import runtime
from maskrcnn.inference.predictor import Predictor
from maskrcnn.modeling import poolers
from maskrcnn.modeling.layers import FrozenBatchNorm2d

from test_predictor_inputs import biased_model, photo, tiny

SCORE = 0.5
MARGIN = 1e-3


@pytest.fixture(scope="module")
def model() -> maskrcnn.modeling.MaskRCNN:
    return biased_model(detection_max_instances=100)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [photo(70, 90), photo(80, 64, "coffee"), photo(96, 96, "chelsea")]


@pytest.fixture(scope="module")
def exact(model, images) -> list:
    return Predictor(model).detect(images)


def fast_predictor(model: nn.Module, fast_dtype: str) -> Predictor:
    fast = type(model)(model.config.replace(fast=True, fast_dtype=fast_dtype), model.backbone, model.rpn, model.roi_heads)
    return Predictor(fast)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def best_match(det, i: int, other) -> tuple[int, float]:
    """Index and box IoU of ``other``'s detection of the same class overlapping ``det[i]`` most (-1: none)."""
    if len(other) == 0:
        return -1, 0.0
    iou = box_iou(torch.as_tensor(det.boxes[i:i + 1]), torch.as_tensor(other.boxes))[0]
    iou = torch.where(torch.as_tensor(other.class_ids == det.class_ids[i]), iou, torch.zeros_like(iou))
    j = int(iou.argmax())
    return (j, float(iou[j])) if iou[j] > 0 else (-1, 0.0)


def test_fast_fp32_channels_last_matches_exact_mode(model, images, exact) -> None:
    fast = fast_predictor(model, "fp32")
    assert fast.fast_dtype is None
    results = fast.detect(images)
    compared = 0
    for e, f in zip(exact, results):
        assert len(e) >= 20  # the comparison has something to compare
        for a, b in ((e, f), (f, e)):  # every confident detection of each side exists on the other
            for i in np.where(a.scores >= SCORE + MARGIN)[0]:
                j, _ = best_match(a, i, b)
                assert j >= 0, f"detection {i} (class {a.class_ids[i]}, score {a.scores[i]:.4f}) has no counterpart"
                np.testing.assert_allclose(b.boxes[j], a.boxes[i], atol=1e-3, rtol=0)
                assert abs(float(b.scores[j]) - float(a.scores[i])) <= 1e-4
                assert mask_iou(a.masks[i], b.masks[j]) >= 0.98
                compared += 1
    assert compared >= 2 * 60


def test_fast_bf16_is_close_to_exact_mode(model, images, exact) -> None:
    fast = fast_predictor(model, "bf16")  # forced: emulated on CPUs without native bf16
    assert fast.fast_dtype == torch.bfloat16 and "bfloat16" in fast.mode
    results = fast.detect(images)
    ious, asked = [], 0
    for e, f in zip(exact, results):
        assert len(f) > 0 and f.class_ids[0] == e.class_ids[0]  # the top detection's class
        assert f.boxes.dtype == np.float32 and f.scores.dtype == np.float32 and f.masks.dtype == bool
        for i in np.where(e.scores >= SCORE)[0]:
            asked += 1
            j, iou = best_match(e, i, f)
            if iou >= 0.9:
                ious.append(mask_iou(e.masks[i], f.masks[j]))
    assert asked >= 60 and len(ious) >= 0.6 * asked
    assert float(np.mean(ious)) >= 0.9


def test_fast_copy_folds_batchnorm_into_channels_last_weights_and_leaves_the_model(model) -> None:
    fast = fast_predictor(model, "auto")
    assert fast.fast_dtype is None and fast.mode.startswith("fast (cpu:") and "fp32" in fast.mode  # suite: no native bf16
    convs = [m for m in fast.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == 20  # ResNet-18: untouched
    assert model.backbone.body.conv1.weight.is_contiguous() and Predictor(model).mode == "exact (fp32)"


def test_bf16_runs_the_dense_layers_and_keeps_boxes_rois_and_masks_fp32(model, images, monkeypatch) -> None:
    fast = fast_predictor(model, "bf16")
    seen: dict[str, set] = {"conv": set(), "mask_head": set(), "rois": set(), "features": set()}
    hooks = [fast.model.backbone.body.conv1.register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype)),
             fast.model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: seen["mask_head"].add(o.dtype))]
    real = poolers.roi_align

    def recording(feat, rois, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["rois"].add(rois.dtype)
        seen["features"].add(feat.dtype)
        return real(feat, rois, *a, **k)

    monkeypatch.setattr(poolers, "roi_align", recording)
    tensors = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images[:2]]
    with runtime.autocast(fast.device, fast.fast_dtype):
        raw = fast.model.detect(tensors)
    for h in hooks:
        h.remove()
    assert seen["conv"] == {torch.bfloat16} and seen["mask_head"] == {torch.bfloat16}
    assert seen["features"] == {torch.bfloat16} and seen["rois"] == {torch.float32}  # sampling points in fp32
    for r in raw:
        assert len(r["boxes"]) > 0
        assert r["boxes"].dtype == r["scores"].dtype == r["mask_probs"].dtype == torch.float32


def test_load_and_fast_dtype_choices(monkeypatch) -> None:
    bf16 = maskrcnn.load(None, config=tiny(), device="cpu", fast=True, fast_dtype="bf16", progress=False)
    assert bf16.config.fast and bf16.fast_dtype == torch.bfloat16
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")  # a CPU with native bf16: auto picks it
    assert maskrcnn.load(None, config=tiny(), device="cpu", fast=True, progress=False).fast_dtype == torch.bfloat16
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")
    assert maskrcnn.load(None, config=tiny(), device="cpu", fast=True, progress=False).fast_dtype is None
    with pytest.raises(ConfigError, match=r"^fast_dtype=fp16 needs a CUDA GPU; use fast_dtype=bf16 or fast_dtype=fp32"):
        maskrcnn.load(None, config=tiny(), device="cpu", fast=True, fast_dtype="fp16", progress=False)
    assert Config().fast_dtype == "auto" and Config().amp == "auto"


def test_frozen_batchnorm_in_place_on_bf16_activations_stays_bf16_and_correct() -> None:
    # a frozen stage trained under bf16 autocast: the conv output is bf16, the statistics fp32
    g = torch.Generator().manual_seed(0)
    bn = FrozenBatchNorm2d(8)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).copy_(torch.randn(8, generator=g))
    bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    x = torch.randn(2, 8, 6, 5, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    scale, bias = bn.scale_and_bias()
    want = x.float() * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    ptr = x.data_ptr()
    out = bn(x)
    assert out.dtype == torch.bfloat16 and out.data_ptr() == ptr  # in place, no second buffer
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert float((want - out.float()).abs().max()) < 0.05 < float(want.abs().max())

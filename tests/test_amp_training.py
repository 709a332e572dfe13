"""Training under autocast (``amp``): one real training step in bf16 against fp32, and the trainer's
channels-last layout.

The step is the engine's :class:`~maskrcnn.engine.step.TrainStep` on a tiny R18-FPN with the same
weights, batch and RNG state in both precisions. Only 4 proposals per image are kept after the
RPN's NMS, so the RoIs the heads sample are (nearly) the ground-truth boxes in both runs: a
proposal whose bf16-rounded objectness changes rank would otherwise change which RoIs are sampled
and the head losses with them (by up to 10 %, measured), which says nothing about precision.
bf16 keeps 8 bits of mantissa: the terms agree within 0.3 % (measured); the test allows 2 %.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from maskrcnn import Config
from maskrcnn.engine import runtime
from maskrcnn.engine.hooks import HookBase
from maskrcnn.engine.optim import set_train_mode
from maskrcnn.engine.step import TrainStep
from maskrcnn.modeling import build_model
from maskrcnn.planning.measure import synthetic_batches

from test_engine import make_model, run_stub, tiny_config


def _step(model: nn.Module, batch, amp_dtype: torch.dtype | None):  # noqa: ANN001, ANN202
    model = runtime.use_channels_last(copy.deepcopy(model), amp_dtype)
    set_train_mode(model, False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    torch.manual_seed(5)
    return TrainStep(model, optimizer, amp_dtype=amp_dtype)([(batch, 1.0)]), model


def test_bf16_training_step_is_close_to_fp32_and_keeps_fp32_weights() -> None:
    config = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                    num_classes=4, image_min_dim=96, image_max_dim=128, images_per_gpu=2, num_workers=0, seed=0,
                    train_rois_per_image=64, rpn_train_anchors_per_image=64, post_nms_rois_training=4, amp="bf16")
    batch = synthetic_batches(config, (96, 128), 6, 1)[0]
    torch.manual_seed(0)
    model = build_model(config)
    fp32, m32 = _step(model, batch, None)
    bf16, m16 = _step(model, batch, torch.bfloat16)  # forced: emulated on CPUs without native bf16

    assert m16.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert m32.backbone.body.conv1.weight.is_contiguous()  # fp32 keeps the layout
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    grads = [p.grad for p in m16.parameters() if p.grad is not None]
    assert len(grads) > 50 and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert set(bf16.losses) == set(fp32.losses) and len(fp32.losses) == 6
    for key, value in fp32.losses.items():
        assert bf16.losses[key] == pytest.approx(value, rel=2e-2), key
    g32 = torch.cat([p.grad.flatten() for p in m32.parameters() if p.grad is not None])
    g16 = torch.cat([p.grad.flatten() for p in m16.parameters() if p.grad is not None])
    assert float(torch.nn.functional.cosine_similarity(g32, g16, 0)) >= 0.98
    # changed weights: the step did happen
    assert not torch.equal(m16.roi_heads.box_predictor.cls_score.weight, model.roi_heads.box_predictor.cls_score.weight)

    # the loss terms the model returns under autocast are fp32 (the heads cast their outputs back)
    set_train_mode(m16, False)
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        losses = m16(batch.images, batch.targets)
    assert {v.dtype for v in losses.values()} == {torch.float32}


class _Layout(HookBase):
    def __init__(self) -> None:
        self.channels_last: list[bool] = []

    def after_step(self) -> None:
        w = self.trainer.module.backbone.body.conv1.weight
        self.channels_last.append(w.is_contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("amp,native,expected", [("auto", False, False), ("auto", True, True), ("bf16", False, True),
                                                 ("none", True, False)])
def test_trainer_trains_channels_last_under_autocast_and_returns_the_model_in_nchw(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str, native: bool, expected: bool) -> None:
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1" if native else "0")
    model, layout = make_model(), _Layout()
    result = run_stub(tiny_config(epochs=1, amp=amp), tmp_path / "run", model=model, val=0, hooks=[layout])
    assert result.global_step == 5 and layout.channels_last == [expected] * 5
    assert model.last_dtype == (torch.bfloat16 if expected else torch.float32)
    assert model.backbone.body.conv1.weight.is_contiguous()  # back to NCHW for detection and export
    assert all(p.dtype == torch.float32 for p in model.parameters())

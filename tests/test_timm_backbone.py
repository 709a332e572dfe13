"""timm backbones (``backbone: timm:<name>``) behind the same FPN: each listed model builds with
features at strides 4..32, trains one step with finite losses, saves and reloads from our
checkpoint, and loads timm's ImageNet-style state dict from a file (the same tensors as timm's own
loader); layer presets on their modules; the planner's parameter facts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from maskrcnn import Config  # noqa: E402
from maskrcnn import weights as W  # noqa: E402
from maskrcnn.engine.optim import build_optimizer, select_trainable, set_train_mode  # noqa: E402
from maskrcnn.engine.step import TrainStep  # noqa: E402
from maskrcnn.modeling import build_model  # noqa: E402
from maskrcnn.structures import Batch  # noqa: E402

#: The smallest member of each family the issue names (pretrained=False everywhere: nothing is downloaded).
MODELS = ["convnext_atto", "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "inception_v3"]
S = 128  # Inception-v3's unpadded convolutions need at least ~75 px


def tiny(name: str, **kw) -> Config:  # noqa: ANN003
    return Config(backbone=f"timm:{name}", num_classes=3, fpn_channels=16, mask_head_channels=8, box_head_dim=32,
                  image_min_dim=S, image_max_dim=S, rpn_anchor_scales=[16, 32, 64, 128, 256],
                  rpn_train_anchors_per_image=32, train_rois_per_image=16, pre_nms_limit_training=200,
                  post_nms_rois_training=50, optimizer="adamw", learning_rate=1e-3, base_batch_size=1,
                  images_per_gpu=1, **kw)


def sample() -> tuple[torch.Tensor, dict]:
    image = torch.rand(3, S, S, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, S, S, dtype=torch.uint8)
    masks[0, 16:60, 12:80] = 1
    masks[1, 72:120, 60:116] = 1
    boxes = torch.tensor([[12.0, 16.0, 80.0, 60.0], [60.0, 72.0, 116.0, 120.0]])
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks, "orig_size": (S, S)}


@pytest.mark.parametrize("name", MODELS)
def test_builds_trains_one_step_and_round_trips_our_checkpoint(tmp_path: Path, name: str) -> None:
    cfg = tiny(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    bb = model.backbone
    # C2..C5 are the features at strides 4, 8, 16, 32 (a stride-2 feature, where there is one, is left out)
    assert [bb.body.feature_info.reduction()[i] for i in bb.indices] == [4, 8, 16, 32]
    with torch.no_grad():
        feats = bb.eval()(torch.zeros(1, 3, S, S))
    assert [tuple(f.shape[-2:]) for f in feats] == [(S // s, S // s) for s in (4, 8, 16, 32, 64)]
    assert all(f.shape[1] == 16 for f in feats)

    select_trainable(model, cfg)
    set_train_mode(model, cfg.train_bn)
    body_before = {k: v.detach().clone() for k, v in model.backbone.body.named_parameters() if v.requires_grad}
    step = TrainStep(model, build_optimizer(model, cfg), "cpu", clip_norm=cfg.gradient_clip_norm)
    image, target = sample()
    out = step([(Batch([image], [target]), 1.0)])
    assert set(out.losses) >= {"loss", "loss_rpn_class", "loss_mrcnn_mask"}
    assert all(torch.isfinite(torch.as_tensor(v)) for v in out.losses.values()), out.losses
    changed = [k for k, p in model.backbone.body.named_parameters() if k in body_before and not torch.equal(p, body_before[k])]
    assert changed, "the body did not train"

    # detection on an image whose sides are no multiple of 32 (padded, and resized back)
    model.eval()
    with torch.no_grad():
        det = model([torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(2))])[0]
    assert det["mask_probs"].shape[1:] == (cfg.mask_shape, cfg.mask_shape) and len(det["boxes"]) == len(det["scores"])
    if len(det["boxes"]):
        assert float(det["boxes"][:, 2].max()) <= 120 and float(det["boxes"][:, 3].max()) <= 100

    path = W.save_checkpoint(model, cfg, tmp_path / "m.safetensors")
    config, sd = W.load_checkpoint(path)
    assert config.backbone == f"timm:{name}"
    again = build_model(config)
    W.load_into(again, sd, source=str(path), reinit_classes=False)
    mine = model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())


def _imagenet_file(tmp_path: Path, name: str, fmt: str, seed: int = 5) -> tuple[Path, torch.nn.Module]:
    """timm's own classification model (random weights standing in for ImageNet ones), saved as its state dict."""
    torch.manual_seed(seed)
    full = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # non-default BN statistics, so a BN that was not loaded is seen
        for m in full.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    sd = {k: v.contiguous() for k, v in full.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / f"{name}.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
    return path, full


@pytest.mark.parametrize("name,fmt", [(n, "safetensors" if i % 2 else "pth") for i, n in enumerate(MODELS)])
def test_imagenet_weights_load_from_a_file_as_timm_loads_them(tmp_path: Path, name: str, fmt: str) -> None:
    path, _ = _imagenet_file(tmp_path, name, fmt)
    model = build_model(tiny(name, timm_pretrained=str(path)), pretrained_backbone=True)
    # timm's own loader of the same file into the same feature model is the reference
    ref = timm.create_model(name, features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    ours = model.backbone.body.state_dict()
    assert set(ours) == set(ref.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked"))
    # without pretrained_backbone (a resumed run, maskrcnn.load) the file is not read
    other = build_model(tiny(name, timm_pretrained=str(tmp_path / "absent.pth")))
    assert not torch.equal(other.backbone.body.state_dict()[next(iter(ours))], ours[next(iter(ours))])


def test_rgb_weights_are_adapted_to_one_channel(tmp_path: Path) -> None:
    path, _ = _imagenet_file(tmp_path, "convnext_atto", "safetensors")
    cfg = tiny("convnext_atto", timm_pretrained=str(path), image_channel_count=1, pixel_mean=[0.5], pixel_std=[0.25])
    model = build_model(cfg, pretrained_backbone=True)
    ref = timm.create_model("convnext_atto", features_only=True, pretrained=True, in_chans=1,
                            pretrained_cfg_overlay={"file": str(path)})
    torch.testing.assert_close(model.backbone.body.state_dict()["stem_0.weight"], ref.state_dict()["stem_0.weight"])


def _trainable_body_modules(name: str, layers: str) -> set[str]:
    cfg = tiny(name, layers=layers)
    model = build_model(cfg)
    names = select_trainable(model, cfg)
    return {n.split(".")[2] if n.split(".")[2] != "blocks" else ".".join(n.split(".")[2:4])
            for n in names if n.startswith("backbone.body.")}


def test_layer_presets_follow_the_feature_stages() -> None:
    # ConvNeXt: stem, stages_0 (C2), stages_1 (C3), stages_2 (C4), stages_3 (C5)
    assert _trainable_body_modules("convnext_atto", "3+") == {"stages_1", "stages_2", "stages_3"}
    assert _trainable_body_modules("convnext_atto", "5+") == {"stages_3"}
    assert _trainable_body_modules("convnext_atto", "heads") == set()
    assert {"stem_0", "stages_0", "stages_3"} <= _trainable_body_modules("convnext_atto", "all")
    # EfficientNet: C2 = blocks.1, C3 = blocks.2, C4 = blocks.4, C5 = blocks.6
    assert _trainable_body_modules("efficientnet_b0", "4+") == {"blocks.3", "blocks.4", "blocks.5", "blocks.6"}
    assert _trainable_body_modules("efficientnet_b0", "5+") == {"blocks.5", "blocks.6"}


def test_frozen_batchnorm_stays_frozen_and_train_bn_trains_it() -> None:
    image, target = sample()
    for train_bn in (False, True):
        cfg = tiny("regnety_002", train_bn=train_bn)
        torch.manual_seed(0)
        model = build_model(cfg)
        select_trainable(model, cfg)
        set_train_mode(model, cfg.train_bn)
        bn = model.backbone.body.stem.bn  # (inside blocks timm zero-inits the last BN: no gradient yet at step 1)
        before = (bn.running_mean.clone(), bn.weight.detach().clone())
        TrainStep(model, build_optimizer(model, cfg), "cpu")([(Batch([image], [target]), 1.0)])
        moved = (not torch.equal(bn.running_mean, before[0]), not torch.equal(bn.weight.detach(), before[1]))
        assert moved == (train_bn, train_bn)


def test_planner_facts_use_the_models_own_presets() -> None:
    from maskrcnn.planning.peak_model import parameter_bytes, trainable_bytes

    heads = tiny("convnext_atto", layers="heads")
    model = build_model(heads)
    body = sum(p.numel() * p.element_size() for p in model.backbone.body.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert parameter_bytes(heads) == total
    assert trainable_bytes(heads) == total - body  # ConvNeXt has no BatchNorm
    five = tiny("convnext_atto", layers="5+")
    stage3 = sum(p.numel() * p.element_size() for p in model.backbone.body.stages_3.parameters())
    assert trainable_bytes(five) == total - body + stage3


def test_fast_mode_folding_keeps_timms_batchnorm_with_activation() -> None:
    from maskrcnn.modeling.fuse import fold_batchnorm

    torch.manual_seed(0)
    body = build_model(tiny("efficientnet_b0")).backbone.eval()
    with torch.no_grad():
        for m in body.modules():  # statistics that make a dropped BN or activation visible
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        before = body(x)
        folded = fold_batchnorm(body)
        after = body(x)
    assert folded == 0  # EfficientNet's BN layers are BatchNormAct2d (BN + SiLU): never replaced by Identity
    assert all(torch.equal(a, b) for a, b in zip(after, before))

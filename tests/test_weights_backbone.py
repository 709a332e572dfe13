"""``imagenet`` and backbone-only state dicts for ``train --weights``.

The ImageNet files are torchvision's classifier ``.pth`` (``conv1.weight``, ``layer1.0...``,
``fc.*``); here a tiny ResNet-18 of that layout is served through a ``file://`` URL under a
name ending in its SHA-256 prefix, exactly as the real ``resnet50-0676ba61.pth`` is checked.
Nothing is downloaded from the internet (the cache is isolated per test by ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import maskrcnn
from maskrcnn import Config, WeightsError
from maskrcnn import weights as W
from maskrcnn.commands.train import pretrained_model
from maskrcnn.modeling import build_model
from maskrcnn.modeling.backbone import ResNetBody


def tiny(**kw) -> Config:
    values = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                  num_classes=3, image_min_dim=64, image_max_dim=96)
    values.update(kw)
    return Config(**values)


def classifier_state_dict(seed: int = 0, width: int = 8) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet-18 classifier: BatchNorm with running stats, plus ``fc``."""
    torch.manual_seed(seed)
    body = ResNetBody("resnet18", nn.BatchNorm2d, width=width)
    sd = body.state_dict()
    for k, v in sd.items():  # non-trivial statistics, so a wrong copy shows
        if k.endswith("running_var"):
            sd[k] = v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = v.uniform_(-0.5, 0.5)
    sd["fc.weight"] = torch.randn(10, width * 8)
    sd["fc.bias"] = torch.randn(10)
    return sd


@pytest.fixture()
def served_imagenet(tmp_path, monkeypatch):
    """The classifier as ``resnet18-<sha[:8]>.pth`` behind a file:// URL, registered as ``imagenet-resnet18``."""
    sd = classifier_state_dict()
    raw = tmp_path / "server" / "raw.pth"
    raw.parent.mkdir()
    torch.save(sd, raw)
    file = f"resnet18-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    src = raw.rename(raw.parent / file)
    table = dict(W.NAMED_WEIGHTS)
    table["imagenet-resnet18"] = W.NamedWeights(file, src.as_uri(), None, "resnet18")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    return sd, src, file


def _assert_body_loaded(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in sd.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[f"backbone.body.{k}"], v), k


def test_imagenet_official_entries():
    for depth, file in (("resnet50", "resnet50-0676ba61.pth"), ("resnet101", "resnet101-63fe2227.pth")):
        entry = W.NAMED_WEIGHTS[W.imagenet_name(depth)]
        assert (entry.file, entry.architecture, entry.backbone) == (file, None, depth)
        assert entry.url == "https://download.pytorch.org/models/" + file
    with pytest.raises(WeightsError) as err:
        W.imagenet_name("resnet34")
    assert "resnet50, resnet101" in str(err.value) and "backbone" in str(err.value)


def test_imagenet_download_cache_and_body_only_load(served_imagenet):
    sd, src, file = served_imagenet
    config = tiny()
    torch.manual_seed(7)
    config2, model = pretrained_model(config, "imagenet")
    cached = Path(os.environ["MASKRCNN_CACHE"]) / "weights" / file
    assert cached.read_bytes() == src.read_bytes() and os.listdir(cached.parent) == [file]
    _assert_body_loaded(model, sd)
    assert config2.frozen_bn_eps == 1e-5  # an ImageNet classifier's BatchNorm, not torchvision's COCO eps 0
    # everything else is exactly what training from scratch starts from
    torch.manual_seed(7)
    scratch = build_model(config2).state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("backbone.body."):
            assert torch.equal(v, scratch[k]), k
    assert not torch.equal(model.state_dict()["backbone.body.conv1.weight"], scratch["backbone.body.conv1.weight"])
    # served from the cache the second time
    src.unlink()
    _, again = pretrained_model(config, "imagenet")
    _assert_body_loaded(again, sd)


def test_imagenet_wrong_hash_is_refused_and_not_kept(served_imagenet, monkeypatch):
    _, src, _ = served_imagenet
    table = dict(W.NAMED_WEIGHTS)
    table["imagenet-resnet18"] = W.NamedWeights("resnet18-deadbeef.pth", src.as_uri(), None, "resnet18")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    with pytest.raises(WeightsError) as err:
        pretrained_model(tiny(), "imagenet")
    assert "deadbeef" in str(err.value) and "\n" not in str(err.value)
    assert list(W.cache_dir().iterdir()) == []


def test_imagenet_offline_message_names_the_file_to_put(tmp_path, monkeypatch):
    entry = W.NAMED_WEIGHTS["imagenet-resnet50"]
    table = dict(W.NAMED_WEIGHTS)
    table["imagenet-resnet50"] = W.NamedWeights(entry.file, (tmp_path / "offline" / entry.file).as_uri(), None, "resnet50")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    with pytest.raises(WeightsError) as err:
        W.resolve_weights("imagenet", backbone="resnet50", allow_backbone_only=True, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and f"put the file at {W.cache_dir() / 'resnet50-0676ba61.pth'}" in msg


@pytest.mark.parametrize("layout", ["torchvision", "backbone.body", "body"])
def test_backbone_only_file_loads_into_the_body(layout, tmp_path):
    sd = classifier_state_dict(seed=2)
    if layout == "backbone.body":
        saved = {f"backbone.body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    elif layout == "body":
        saved = {f"body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    else:
        saved = sd
    path = tmp_path / "backbone.pth"
    torch.save(saved, path)
    resolved = W.resolve_weights(path, allow_backbone_only=True)
    assert resolved.backbone_only and resolved.implied["backbone"] == "resnet18"
    _, model = pretrained_model(tiny(), str(path))
    _assert_body_loaded(model, sd)


def test_backbone_only_weights_adapt_conv1_to_grayscale(tmp_path):
    sd = classifier_state_dict(seed=4)
    path = tmp_path / "rn.pth"
    torch.save(sd, path)
    _, model = pretrained_model(tiny(image_channel_count=1, pixel_mean=[0.5], pixel_std=[0.25]), str(path))
    got = model.state_dict()["backbone.body.conv1.weight"]
    assert torch.allclose(got, W.adapt_conv1(sd["conv1.weight"], 1))


def test_backbone_only_weights_cannot_detect(tmp_path):
    path = tmp_path / "rn.pth"
    torch.save(classifier_state_dict(), path)
    with pytest.raises(WeightsError) as err:
        maskrcnn.load(path, device="cpu")
    assert "backbone only" in str(err.value) and "train --weights" in str(err.value)


def test_backbone_of_another_depth_or_width_is_one_line_error(tmp_path):
    path = tmp_path / "rn.pth"
    torch.save(classifier_state_dict(width=16), path)
    with pytest.raises(WeightsError) as err:
        pretrained_model(tiny(), str(path))
    assert "backbone_width" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(WeightsError) as err:
        pretrained_model(tiny(backbone="resnet34"), str(tmp_path / "rn.pth"))
    assert "backbone" in str(err.value)


def test_imagenet_cannot_detect_and_is_not_downloaded_for_it(served_imagenet, monkeypatch):
    monkeypatch.setattr(W, "download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(WeightsError) as err:
        W.resolve_weights("imagenet", backbone="resnet18")
    assert str(err.value).startswith("imagenet: holds a backbone only") and "train --weights imagenet" in str(err.value)


def test_convert_imagenet_to_a_checkpoint_that_trains(served_imagenet, tmp_path):
    """``maskrcnn convert --weights imagenet --config C --out model.safetensors``: our checkpoint with
    the ImageNet body and the config; ``train --weights`` starts from it with the same tensors."""
    import yaml

    from _bad_input import run_cli

    sd, _, _ = served_imagenet
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny().model_dump(mode="json")))
    out = tmp_path / "start.safetensors"
    result = run_cli("convert", "--weights", "imagenet", "--config", cfg, "--out", out)
    assert result.code == 0, result.err
    assert "wrote" in result.out and "resnet18" in result.out and "3 classes" in result.out
    config, saved = W.load_checkpoint(out)
    assert config.backbone == "resnet18" and config.frozen_bn_eps == 1e-5
    for k, v in sd.items():
        if not (k.startswith("fc.") or k.endswith("num_batches_tracked")):
            assert torch.equal(saved[f"backbone.body.{k}"], v), k
    _, model = pretrained_model(config, str(out))  # a training run from the converted file
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())


def test_convert_backbone_only_state_dict_without_config(tmp_path):
    from _bad_input import run_cli

    sd = classifier_state_dict(seed=3)
    torch.save(sd, tmp_path / "resnet.pth")
    result = run_cli("convert", "--weights", tmp_path / "resnet.pth", "--out", tmp_path / "ckpt")
    assert result.code == 0, result.err
    config, saved = W.load_checkpoint(tmp_path / "ckpt")
    assert (config.backbone, config.backbone_width) == ("resnet18", 8)
    assert torch.equal(saved["backbone.body.layer2.0.conv1.weight"], sd["layer2.0.conv1.weight"])

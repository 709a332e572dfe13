"""Weights: named downloads (cache, hash check, offline message), our safetensors checkpoints,
safe unpickling, class-count changes, conv1 adaptation to other channel counts, depth mismatches.

Everything runs on files the tests create: tiny models saved as state dicts and served through
``file://`` URLs (the cache is isolated per test by ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import maskrcnn
from maskrcnn import Config, WeightsError
from maskrcnn import weights as W
from maskrcnn.modeling import build_model

CLASS_KEYS = W.CLASS_DEPENDENT


def tiny(**kw) -> Config:
    values = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                  num_classes=4, image_min_dim=64, image_max_dim=96, pre_nms_limit_inference=200,
                  post_nms_rois_inference=50, detection_max_instances=10)
    values.update(kw)
    return Config(**values)


def tiny_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny(**kw)).eval()


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, f"not a single-line message: {msg!r}"
    return msg


# ---------------------------------------------------------------------------- named weights


def test_named_table_points_at_the_official_files():
    assert W.NAMED_WEIGHTS["coco"].file == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert W.NAMED_WEIGHTS["coco-v2"].file == "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    for name, entry in W.NAMED_WEIGHTS.items():
        official = ("https://github.com/matterport/Mask_RCNN/releases/download/v2.0/" if name == "matterport-coco"
                    else "https://download.pytorch.org/models/")
        assert entry.url == official + entry.file
    assert (W.NAMED_WEIGHTS["coco"].architecture, W.NAMED_WEIGHTS["coco-v2"].architecture) == ("v1", "v2")
    assert len(W.COCO_CLASSES) == 91 and W.COCO_CLASSES[1] == "person" and W.COCO_CLASSES[90] == "toothbrush"


@pytest.fixture()
def served(tmp_path, monkeypatch):
    """A tiny model's state dict saved as ``tiny-<sha256[:8]>.pth`` behind a file:// URL, registered as 'tiny'."""
    model = tiny_model(3)
    src_dir = tmp_path / "server"
    src_dir.mkdir()
    raw = src_dir / "tiny.pth"
    torch.save(model.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    file = f"tiny-{digest[:8]}.pth"
    src = src_dir / file
    raw.rename(src)
    table = dict(W.NAMED_WEIGHTS)
    table["tiny"] = W.NamedWeights(file, src.as_uri(), "v1")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    return model, src, file


def test_named_download_cache_and_load(served):
    model, src, file = served
    cached = Path(os.environ["MASKRCNN_CACHE"]) / "weights" / file
    assert not cached.exists()
    pred = maskrcnn.load("tiny", device="cpu", progress=False)
    assert cached.read_bytes() == src.read_bytes()
    assert os.listdir(cached.parent) == [file]  # no partial download left behind
    # config implied by the file: the tiny shapes, and torchvision's v1 frozen-BN eps convention
    c = pred.config
    assert (c.backbone, c.backbone_width, c.fpn_channels, c.num_classes, c.box_head_dim) == ("resnet18", 8, 16, 4, 32)
    assert c.frozen_bn_eps == 0.0
    own = pred.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(own[k], v), k
    # second call: served from the cache, the source is gone
    src.unlink()
    again = maskrcnn.load("tiny", device="cpu", progress=False)
    assert torch.equal(again.model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       model.state_dict()["roi_heads.box_predictor.cls_score.weight"])


def test_named_uses_torch_hub_copy(served):
    model, src, file = served
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    os.replace(src, hub / file)  # nothing at the URL any more
    path, entry = W.resolve_named("tiny", progress=False)
    assert path == hub / file and entry.file == file
    assert not (W.cache_dir() / file).exists()


def test_corrupt_download_is_refused_and_not_kept(served, monkeypatch):
    model, src, file = served
    bad = "tiny-deadbeef.pth"
    table = dict(W.NAMED_WEIGHTS)
    table["tiny"] = W.NamedWeights(bad, src.as_uri(), "v1")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    with pytest.raises(WeightsError) as err:
        maskrcnn.load("tiny", device="cpu", progress=False)
    msg = _one_line(err.value)
    assert "deadbeef" in msg and "retry" in msg and str(W.cache_dir() / bad) in msg
    assert list(W.cache_dir().iterdir()) == []  # neither the file nor a .part


def test_cached_file_that_went_bad_is_detected(served):
    model, src, file = served
    W.download(src.as_uri(), file, progress=False)
    cached = W.cache_dir() / file
    cached.write_bytes(cached.read_bytes()[:-10])  # truncated on disk later
    with pytest.raises(WeightsError) as err:
        W.resolve_named("tiny", progress=False)
    assert str(cached) in _one_line(err.value) and "delete" in str(err.value)


def test_offline_message_names_the_target(tmp_path, monkeypatch):
    entry = W.NAMED_WEIGHTS["coco"]
    table = dict(W.NAMED_WEIGHTS)
    table["coco"] = W.NamedWeights(entry.file, (tmp_path / "nowhere" / entry.file).as_uri(), "v1")
    monkeypatch.setattr(W, "NAMED_WEIGHTS", table)
    with pytest.raises(WeightsError) as err:
        maskrcnn.load("coco", device="cpu", progress=False)
    msg = _one_line(err.value)
    target = Path(os.environ["MASKRCNN_CACHE"]) / "weights" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert f"put the file at {target}" in msg
    assert not W.cache_dir().exists() or list(W.cache_dir().iterdir()) == []


def test_unknown_name_lists_the_names():
    with pytest.raises(WeightsError) as err:
        W.resolve_named("cocoo")
    assert "coco, coco-v2" in _one_line(err.value)


# ---------------------------------------------------------------------------- our checkpoints


@pytest.mark.parametrize("form", ["file", "folder"])
def test_checkpoint_round_trip(tmp_path, form):
    model = tiny_model(1, class_names=["BG", "a", "b", "c"], detection_min_confidence=0.3, aug_crop=[64, 64])
    config = model.config
    path = tmp_path / "runs" / ("best.safetensors" if form == "file" else "best")  # parent does not exist yet
    out = W.save_checkpoint(model, config, path, extra_meta={"epoch": "7"})
    assert out == path and W.is_checkpoint(path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [path.name]  # no temp file/folder left
    if form == "folder":
        assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "model.safetensors"]
    cfg, sd = W.load_checkpoint(path)
    assert cfg == config
    ref = model.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    # overwriting in place keeps one checkpoint, with the new weights
    other = tiny_model(2, class_names=["BG", "a", "b", "c"])
    W.save_checkpoint(other, other.config, path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [path.name]
    cfg2, sd2 = W.load_checkpoint(path)
    assert cfg2.detection_min_confidence == 0.05
    assert torch.equal(sd2["backbone.body.conv1.weight"], other.state_dict()["backbone.body.conv1.weight"])
    # and maskrcnn.load gives a predictor with that model
    pred = maskrcnn.load(path, device="cpu")
    assert pred.class_names == ["BG", "a", "b", "c"]
    assert torch.equal(pred.model.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                       other.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"])


def test_is_checkpoint(tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "empty").mkdir()
    assert not W.is_checkpoint(tmp_path / "m.pth")
    assert not W.is_checkpoint(tmp_path / "plain.safetensors")  # no config in its metadata
    assert not W.is_checkpoint(tmp_path / "empty")
    assert not W.is_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert not W.is_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsError) as err:
        W.load_checkpoint(tmp_path / "plain.safetensors")
    assert "without a maskrcnn config" in _one_line(err.value)


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_objects_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError) as err:
        W.read_state_dict(path)
    msg = _one_line(err.value)
    assert str(path) in msg and "state dict" in msg
    assert not marker.exists()  # nothing was executed
    # a plain tensor dict (also wrapped as {"model": ...}) is fine
    sd = {"a": torch.arange(3.0)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ok.pth")
    assert torch.equal(W.read_state_dict(tmp_path / "ok.pth")["a"], sd["a"])
    with pytest.raises(WeightsError) as err:
        W.read_state_dict(tmp_path / "nope.pth")
    assert "not found" in _one_line(err.value)


# ---------------------------------------------------------------------------- class counts


def test_other_class_count_reinitialises_only_class_layers(tmp_path):
    src = tiny_model(5, num_classes=7)
    file_sd = src.state_dict()
    dst = tiny_model(6, num_classes=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    logs: list[str] = []
    W.load_into(dst, file_sd, source="seven.pth", reinit_classes=True, log=logs.append)
    after = dst.state_dict()
    class_keys = [k for k in after if k.startswith(CLASS_KEYS)]
    assert len(class_keys) == 6  # weight + bias of cls_score, bbox_pred, mask_fcn_logits
    for k, v in after.items():
        if k.startswith(CLASS_KEYS):
            assert torch.equal(v, before[k]), k  # the fresh initialisation of the 4-class model
            assert v.shape[0] in (4, 16)
        else:
            assert torch.equal(v, file_sd[k]), k
    assert torch.equal(after["roi_heads.mask_predictor.conv5_mask.weight"], file_sd["roi_heads.mask_predictor.conv5_mask.weight"])
    assert any("re-initialised" in m and "4 classes" in m for m in logs)


def test_other_class_count_without_reinit_is_one_line_error(tmp_path):
    src = tiny_model(5, num_classes=7)
    dst = tiny_model(6, num_classes=4)
    with pytest.raises(WeightsError) as err:
        W.load_into(dst, src.state_dict(), source="seven.pth", reinit_classes=False)
    msg = _one_line(err.value)
    assert "seven.pth" in msg and "7 classes" in msg and "has 4" in msg and "num_classes: 7" in msg
    # what maskrcnn.load / detect do: a checkpoint with 7 classes and a config with 4
    torch.save(src.state_dict(), tmp_path / "seven.pth")
    with pytest.raises(WeightsError) as err:
        maskrcnn.load(tmp_path / "seven.pth", config=tiny(num_classes=4), device="cpu")
    msg = _one_line(err.value)
    assert "num_classes=7" in msg and "4" in msg and "num_classes: 7" in msg


# ---------------------------------------------------------------------------- conv1 channels


def test_adapt_conv1_keeps_the_response_to_gray():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 7, 7)
    gray = torch.rand(1, 1, 20, 24)
    ref = F.conv2d(gray.repeat(1, 3, 1, 1), w, padding=3)
    for channels in (1, 2, 4, 5):
        a = W.adapt_conv1(w, channels)
        assert a.shape == (8, channels, 7, 7)
        out = F.conv2d(gray.repeat(1, channels, 1, 1), a, padding=3)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # 1 channel: the sum of the RGB filters; 4 channels: RGB filters and their mean, scaled by 3/4
    torch.testing.assert_close(W.adapt_conv1(w, 1)[:, 0], w.sum(1))
    a4 = W.adapt_conv1(w, 4)
    torch.testing.assert_close(a4[:, :3], w * 0.75)
    torch.testing.assert_close(a4[:, 3], w.mean(1) * 0.75)
    # colour still matters with 4 channels: a red image is not answered like a green one
    red = torch.zeros(1, 4, 8, 8)
    red[:, 0] = 1
    green = torch.zeros(1, 4, 8, 8)
    green[:, 1] = 1
    assert not torch.allclose(F.conv2d(red, a4), F.conv2d(green, a4))


@pytest.mark.parametrize("channels", [1, 4])
def test_load_into_adapts_conv1(channels):
    src = tiny_model(7)
    sd = src.state_dict()
    dst = tiny_model(8, image_channel_count=channels, pixel_mean=[0.5] * channels, pixel_std=[0.25] * channels)
    logs: list[str] = []
    W.load_into(dst, sd, source="rgb.pth", reinit_classes=False, log=logs.append)
    after = dst.state_dict()
    torch.testing.assert_close(after["backbone.body.conv1.weight"], W.adapt_conv1(sd["backbone.body.conv1.weight"], channels))
    assert all(torch.equal(after[k], sd[k]) for k in sd if k != "backbone.body.conv1.weight")
    assert any(f"from 3 to {channels} input channels" in m for m in logs)
    # the adapted stem answers an equal-channel input as the RGB stem does
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        ref = src.backbone.body.conv1(x.repeat(1, 3, 1, 1))
        out = dst.backbone.body.conv1(x.repeat(1, channels, 1, 1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_conv1_of_another_width_is_a_weights_error():
    src = tiny_model(7, backbone_width=16)
    dst = tiny_model(8, image_channel_count=1, pixel_mean=[0.5], pixel_std=[0.25])
    with pytest.raises(WeightsError) as err:
        W.load_into(dst, src.state_dict(), source="wide.pth", reinit_classes=False)
    msg = _one_line(err.value)
    assert "backbone.body.conv1.weight" in msg and "(16, 3, 7, 7)" in msg and "(8, 1, 7, 7)" in msg


# ---------------------------------------------------------------------------- backbone depth


def test_other_depth_is_a_weights_error(tmp_path):
    r18 = tiny_model(1).state_dict()
    # resnet34 has more blocks: extra keys in the model
    with pytest.raises(WeightsError) as err:
        W.load_into(tiny_model(2, backbone="resnet34"), r18, source="r18.pth", reinit_classes=False)
    msg = _one_line(err.value)
    assert "r18.pth" in msg and "missing key 'backbone.body.layer1.2." in msg
    # resnet50 (bottleneck blocks): the first differing shape is named
    with pytest.raises(WeightsError) as err:
        W.load_into(tiny_model(2, backbone="resnet50"), r18, source="r18.pth", reinit_classes=False)
    msg = _one_line(err.value)
    assert "backbone.body.layer1.0.conv1.weight has shape (8, 8, 3, 3)" in msg and "(8, 8, 1, 1)" in msg
    # through maskrcnn.load the file's depth is read from its keys and compared with the config
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(WeightsError) as err:
        maskrcnn.load(tmp_path / "r18.pth", config=tiny(backbone="resnet34"), device="cpu")
    assert "backbone='resnet18'" in _one_line(err.value) and "resnet34" in str(err.value)
    assert maskrcnn.load(tmp_path / "r18.pth", device="cpu").config.backbone == "resnet18"

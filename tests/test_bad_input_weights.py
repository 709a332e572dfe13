"""Bad weights files through ``maskrcnn.load``, ``maskrcnn detect --weights`` and
``maskrcnn train --weights``: each is one WeightsError line naming the file and the fix; nothing
hangs (FIFOs, devices) and nothing is unpickled beyond tensors. Good files of every kind load
through the one resolver (``maskrcnn.weights.resolve_weights``) to the same tensors."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import maskrcnn
from _bad_input import assert_clean_error, assert_one_line_error, run_cli
from maskrcnn import Config
from maskrcnn import weights as W
from maskrcnn.errors import WeightsError
from maskrcnn.modeling import build_model

TINY = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
            num_classes=4, image_min_dim=64, image_max_dim=64, pre_nms_limit_inference=100,
            post_nms_rois_inference=20, detection_max_instances=5)
META = "maskrcnn_config"


@pytest.fixture(scope="module")
def tiny() -> tuple[Config, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = Config(**TINY)
    return cfg, {k: v.clone() for k, v in build_model(cfg).state_dict().items()}


def _checkpoint(path: Path, sd: dict[str, torch.Tensor], config_text: str) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={META: config_text, "format": "maskrcnn/1"})
    return path


def _torch_bytes(obj: Any, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _with(sd: dict[str, torch.Tensor], name: str, value: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = dict(sd)
    if value is None:
        del out[name]
    else:
        out[name] = value
    return out


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def _lying_safetensors(path: Path) -> Path:
    header = json.dumps({"backbone.body.conv1.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 16)
    return path


def _huge_header(path: Path) -> Path:
    path.write_bytes((1 << 40).to_bytes(8, "little") + b'{"a": 1}')
    return path


Builder = Callable[[Path, Config, dict[str, torch.Tensor]], Path]

#: name -> (builder, message fragments besides the file name, config overrides passed with the weights)
CASES: dict[str, tuple[Builder, tuple[str, ...], dict[str, Any] | None]] = {
    "missing": (lambda d, c, sd: d / "nope.pth", ("not found",), None),
    "empty_pth": (lambda d, c, sd: _write(d / "w.pth", b""), ("empty file", "again"), None),
    "empty_safetensors": (lambda d, c, sd: _write(d / "w.safetensors", b""), ("empty file",), None),
    "folder": (lambda d, c, sd: _mkdir(d / "weights"), ("folder without model.safetensors",), None),
    "char_device": (lambda d, c, sd: Path(os.devnull), ("not a regular file",), None),
    "truncated_zip_pth": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(sd)[:5000]), ("truncated", "again"), None),
    "truncated_legacy_pth": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(sd, legacy=True)[:5000]),
                             ("truncated", "again"), None),
    "pickled_object_zip": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes({**sd, "x": _Payload(d / "PWNED")})),
                           ("refused", "state dict"), None),
    "pickled_object_legacy": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes({"x": _Payload(d / "PWNED")}, legacy=True)),
                              ("refused",), None),
    "foreign_zip": (lambda d, c, sd: _zip(d / "w.pth"), ("zip archive that is not a PyTorch file",), None),
    "random_bytes": (lambda d, c, sd: _write(d / "w.pth", bytes(range(7, 250)) * 10), ("not a weights file",), None),
    "text_file": (lambda d, c, sd: _write(d / "w.pth", b"hello, these are not weights\n"), ("not a weights file",), None),
    "lying_safetensors_header": (lambda d, c, sd: _lying_safetensors(d / "w.safetensors"),
                                 ("not a readable safetensors file",), None),
    "huge_safetensors_header": (lambda d, c, sd: _huge_header(d / "w.safetensors"), ("safetensors",), None),
    "truncated_checkpoint": (lambda d, c, sd: _write(d / "w.safetensors", _checkpoint(d / "full.safetensors", sd, c.to_yaml())
                                                     .read_bytes()[:-4096]), ("safetensors", "truncated"), None),
    "config_is_a_list": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, "- 1\n- 2\n"),
                         ("embedded config", "list"), None),
    "config_syntax_error": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, "num_classes: [4\n"),
                            ("embedded config", "not valid YAML"), None),
    "config_invalid_value": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, c.to_yaml().replace("aug_hflip: 0.5", "aug_hflip: 2")),
                             ("embedded config", "aug_hflip"), None),
    "config_unknown_field": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, c.to_yaml() + "colour: red\n"),
                             ("embedded config", "colour"), None),
    "config_yaml_tag": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, "num_classes: !!python/object/apply:os.getpid []\n"),
                        ("embedded config", "tag"), None),
    "config_yaml_folder": (lambda d, c, sd: _folder_checkpoint(d / "ck", sd, "epochs: 0\n"), ("config.yaml", "epochs"), None),
    "nan_checkpoint": (lambda d, c, sd: _checkpoint(d / "w.safetensors", _with(sd, "roi_heads.box_head.fc6.weight",
                                                                                torch.full_like(sd["roi_heads.box_head.fc6.weight"], float("nan"))),
                                                    c.to_yaml()),
                       ("contains NaN in roi_heads.box_head.fc6.weight", "unusable"), None),
    "inf_pth": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(_with(sd, "backbone.fpn.layer_blocks.0.0.bias",
                                                                       torch.full((16,), float("inf")))) ),
                ("infinity in backbone.fpn.layer_blocks.0.0.bias", "unusable"), None),
    "not_mask_rcnn": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes({"fc.weight": torch.zeros(2, 2)})),
                      ("not a Mask R-CNN state dict",), None),
    "missing_fpn_key": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(_with(sd, "backbone.fpn.layer_blocks.0.0.weight", None))),
                        ("backbone.fpn.layer_blocks.0.0.weight",), None),
    "wrong_rank": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(_with(sd, "roi_heads.box_predictor.cls_score.weight", torch.zeros(4)))),
                   ("wrong rank",), None),
    "missing_layer": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(_with(sd, "backbone.body.layer4.0.conv1.weight", None))),
                      ("missing key 'backbone.body.layer4.0.conv1.weight'",), None),
    "list_of_tensors": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes([torch.zeros(2)])), ("state dict of named tensors",), None),
    "int_keys": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes({1: torch.zeros(2)})), ("state dict of named tensors",), None),
    "empty_dict": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes({})), ("state dict of named tensors",), None),
    "wrong_shape_for_config": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(sd)),
                               ("roi_heads.box_head.fc6.weight has shape", "(64,", "(32,", "box_head_dim"), {"box_head_dim": 64}),
    "other_class_count": (lambda d, c, sd: _checkpoint(d / "w.safetensors", sd, c.to_yaml()),
                          ("num_classes=4", "num_classes: 4"), {"num_classes": 6}),
    "other_backbone": (lambda d, c, sd: _write(d / "w.pth", _torch_bytes(sd)), ("backbone='resnet18'",), {"backbone": "resnet34"}),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "a zip, but not a torch file")
    return path


def _folder_checkpoint(path: Path, sd: dict[str, torch.Tensor], config_text: str) -> Path:
    path.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    (path / "config.yaml").write_text(config_text)
    return path


def _in_thread(fn: Callable[[], Any], timeout: float = 60) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "hangs"
    if errors:
        raise errors[0]
    return out[0]


def _config(tiny_cfg: Config, overrides: dict[str, Any] | None) -> Config | None:
    return tiny_cfg.replace(**overrides) if overrides else None


@pytest.mark.parametrize("case", list(CASES))
def test_bad_weights_through_maskrcnn_load(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]], case: str) -> None:
    builder, fragments, overrides = CASES[case]
    cfg, sd = tiny
    path = builder(tmp_path, cfg, sd)
    with pytest.raises(WeightsError) as info:
        maskrcnn.load(path, config=_config(cfg, overrides), device="cpu")
    assert_one_line_error(info, str(path) if case != "other_class_count" else path.name, *fragments)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_weights_through_detect(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]], case: str) -> None:
    builder, fragments, overrides = CASES[case]
    cfg, sd = tiny
    path = builder(tmp_path, cfg, sd)
    Image.fromarray(np.full((48, 40, 3), 90, np.uint8)).save(tmp_path / "img.png")
    argv: list[Any] = ["detect", tmp_path / "img.png", "--weights", path, "--out", tmp_path / "out", "--device", "cpu"]
    if overrides:
        (tmp_path / "c.yaml").write_text(cfg.replace(**overrides).to_yaml())
        argv += ["--config", tmp_path / "c.yaml"]
    assert_clean_error(run_cli(*argv), path.name, *fragments)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("route", ["load", "detect", "train"])
def test_a_fifo_as_weights_does_not_hang(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]], route: str) -> None:
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    if route == "load":
        with pytest.raises(WeightsError) as info:
            _in_thread(lambda: maskrcnn.load(fifo, device="cpu"))
        assert_one_line_error(info, str(fifo), "not a regular file")
        return
    if route == "detect":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
        argv: list[Any] = ["detect", tmp_path / "img.png", "--weights", fifo, "--out", tmp_path / "out"]
    else:
        argv = _train_argv(tmp_path, tiny[0], fifo)
    assert_clean_error(_in_thread(lambda: run_cli(*argv)), str(fifo), "not a regular file")


def _train_argv(tmp_path: Path, cfg: Config, weights: Path) -> list[Any]:
    (tmp_path / "train.yaml").write_text(cfg.replace(epochs=1, num_workers=0).to_yaml())
    return ["train", "--config", tmp_path / "train.yaml", "--data", "shapes:2", "--weights", weights,
            "--out", tmp_path / "runs", "--device", "cpu"]


@pytest.mark.parametrize("case", ["nan_checkpoint", "config_is_a_list", "truncated_zip_pth", "pickled_object_zip",
                                  "not_mask_rcnn", "other_backbone"])
def test_bad_weights_through_train(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]], case: str) -> None:
    builder, fragments, overrides = CASES[case]
    cfg, sd = tiny
    path = builder(tmp_path, cfg, sd)
    result = run_cli(*_train_argv(tmp_path, cfg.replace(**(overrides or {})), path))
    assert_clean_error(result, path.name, *fragments)
    assert not (tmp_path / "PWNED").exists()
    assert not any((tmp_path / "runs").glob("*/checkpoints/*"))  # nothing was trained


# ------------------------------------------------------------------------------ good files


GOOD_FORMS = ["zip_pth", "legacy_pth", "wrapped_model", "wrapped_state_dict", "plain_safetensors",
              "checkpoint_file", "checkpoint_folder"]


def _good(form: str, d: Path, cfg: Config, sd: dict[str, torch.Tensor]) -> Path:
    if form == "zip_pth":
        return _write(d / "w.pth", _torch_bytes(sd))
    if form == "legacy_pth":
        return _write(d / "w.pt", _torch_bytes(sd, legacy=True))
    if form == "wrapped_model":
        return _write(d / "w.pth", _torch_bytes({"model": sd, "epoch": 3}))
    if form == "wrapped_state_dict":
        return _write(d / "w.ckpt", _torch_bytes({"state_dict": sd}))
    if form == "plain_safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "w.safetensors"))
        return d / "w.safetensors"
    if form == "checkpoint_file":
        return _checkpoint(d / "w.safetensors", sd, cfg.to_yaml())
    return _folder_checkpoint(d / "ck", sd, cfg.to_yaml())


@pytest.mark.parametrize("form", GOOD_FORMS)
def test_every_good_form_resolves_to_the_same_weights(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]],
                                                      form: str) -> None:
    cfg, sd = tiny
    path = _good(form, tmp_path, cfg, sd)
    resolved = W.resolve_weights(path)
    assert resolved.state_dict.keys() == sd.keys()
    assert all(torch.equal(resolved.state_dict[k], v) for k, v in sd.items())
    for key in ("architecture", "backbone", "num_classes", "backbone_width", "fpn_channels", "box_head_dim",
                "mask_head_channels", "mask_head_convs", "image_channel_count"):
        assert resolved.implied[key] == getattr(cfg, key), key
    checkpoint = form.startswith("checkpoint")
    assert (resolved.config == cfg) if checkpoint else resolved.config is None
    # a frozen-BN v1 state dict (no num_batches_tracked) is torchvision's eps-0 convention; a checkpoint says its own
    assert resolved.frozen_bn_eps == (cfg.frozen_bn_eps if checkpoint else 0.0)
    predictor = maskrcnn.load(path, config=None if checkpoint else cfg, device="cpu")
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert predictor.config.frozen_bn_eps == (None if checkpoint else 0.0)


def test_good_checkpoint_through_detect_and_fine_tuning(tmp_path: Path, tiny: tuple[Config, dict[str, torch.Tensor]]) -> None:
    cfg, sd = tiny
    ck = _checkpoint(tmp_path / "w.safetensors", sd, cfg.to_yaml())
    Image.fromarray(np.full((48, 40, 3), 90, np.uint8)).save(tmp_path / "img.png")
    result = run_cli("detect", tmp_path / "img.png", "--weights", ck, "--out", tmp_path / "out", "--device", "cpu",
                     "--no-overlays")
    assert result.code == 0, result.err
    # fine-tuning from it with another class count: class layers re-initialised, everything else loaded
    from maskrcnn.commands.train import pretrained_model

    config, model = pretrained_model(cfg.replace(num_classes=7, class_names=None), str(ck))
    after = model.state_dict()
    assert config.num_classes == 7 and after["roi_heads.box_predictor.cls_score.weight"].shape[0] == 7
    assert torch.equal(after["backbone.body.conv1.weight"], sd["backbone.body.conv1.weight"])
    assert torch.equal(after["roi_heads.box_head.fc6.weight"], sd["roi_heads.box_head.fc6.weight"])


def test_resolved_weights_fit_the_config(tiny: tuple[Config, dict[str, torch.Tensor]]) -> None:
    cfg, sd = tiny
    resolved = W.ResolvedWeights(sd, {"architecture": "v1", "backbone": "resnet18", "frozen_bn_eps": 0.0}, "w.pth")
    assert resolved.fit(cfg, ("architecture", "backbone")).frozen_bn_eps == 0.0
    assert resolved.fit(cfg.replace(frozen_bn_eps=1e-5), ("backbone",)).frozen_bn_eps == 1e-5  # the config's wins
    with pytest.raises(WeightsError) as info:
        resolved.fit(cfg.replace(architecture="v2"), ("architecture",))
    assert_one_line_error(info, "w.pth", "architecture='v1'", "architecture: 'v1'")
    assert yaml.safe_load(cfg.to_yaml())["backbone"] == "resnet18"


@pytest.mark.parametrize("argv, fragments", [
    (["--weights", "w.pth", "--out", "x.json"], ("--out", "x.json", ".safetensors")),
    (["src_folder", "--weights", "w.pth", "--out", "x.safetensors"], ("--weights", "one per call")),
    (["--weights", "missing.pth", "--out", "x.safetensors"], ("missing.pth", "not found")),
    (["--out", "x.safetensors"], ("SRC", "--weights")),
    (["src_folder", "--config", "c.yaml", "--out", "x.json"], ("--config", "only with --weights")),
], ids=["json-out", "both", "missing", "neither", "config-for-annotations"])
def test_bad_convert_weights(tmp_path: Path, argv: list[str], fragments: tuple[str, ...],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_clean_error(run_cli("convert", *argv), *fragments)

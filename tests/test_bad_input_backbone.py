"""Bad backbone settings and bad timm ImageNet weights: each is one error line naming the field or
file and the fix (config values, a model timm cannot put behind the FPN, ``timm_pretrained`` files
and URLs offline)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from maskrcnn.config import Config, ConfigError
from maskrcnn.errors import WeightsError
from _bad_input import assert_clean_error, assert_one_line_error, run_cli

timm = pytest.importorskip("timm")

from maskrcnn.modeling import build_model  # noqa: E402

SMALL = dict(num_classes=2, fpn_channels=8, mask_head_channels=8, box_head_dim=16)

#: (values, fragments the one-line message must contain)
BAD_CONFIG: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({"backbone": "resnet51"}, ("backbone", "resnet101", "timm:convnext_tiny")),
    ({"backbone": "convnext_tiny"}, ("backbone", "timm:<model>")),
    ({"backbone": "timm:convnext_tinyy"}, ("backbone", "did you mean 'timm:convnext_tiny'")),
    ({"backbone": "timm:"}, ("backbone", "not a timm model", "timm:efficientnet_b0")),
    ({"timm_pretrained": "convnext.pth"}, ("timm_pretrained", "only for a timm backbone", "remove")),
    ({"backbone": "timm:convnext_atto", "backbone_width": 32}, ("backbone_width", "ResNet", "remove")),
]


@pytest.mark.parametrize("values,fragments", BAD_CONFIG, ids=[str(v)[:40] for v, _ in BAD_CONFIG])
def test_bad_backbone_config(values: dict[str, Any], fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**values)
    assert_one_line_error(info, *fragments)


def test_bad_backbone_through_the_cli() -> None:
    assert_clean_error(run_cli("config", "--set", "backbone=timm:convnext_tinyy"), "backbone", "timm:convnext_tiny")


def test_a_model_without_stride_4_to_32_features_is_refused_at_build() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(Config(backbone="timm:vit_tiny_patch16_224", **SMALL))
    assert_one_line_error(info, "timm:vit_tiny_patch16_224", "[16, 16, 16]", "missing [4, 8, 32]", "timm:convnext_tiny")


def _state_dict_file(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


def _bad_weights(tmp_path: Path, case: str) -> tuple[str, tuple[str, ...]]:
    """(timm_pretrained value for a convnext_atto backbone, fragments of the message)."""
    if case == "missing":
        return str(tmp_path / "nope.pth"), ("timm_pretrained", "nope.pth", "file not found")
    if case == "offline_url":
        return "http://127.0.0.1:9/weights/convnext_atto.pth", ("cannot download", "offline", "convnext_atto.pth")
    if case == "url_without_file":
        return "http://127.0.0.1:9/", ("timm_pretrained", "names no file")
    if case == "other_model":
        return str(_state_dict_file(tmp_path, "regnety_002")), ("regnety_002.pth", "not the weights of timm:convnext_atto")
    if case == "other_width":
        path = _state_dict_file(tmp_path, "convnext_femto")
        return str(path), ("convnext_femto.pth", "has shape", "ImageNet weights of convnext_atto")
    if case == "truncated":
        good = _state_dict_file(tmp_path, "convnext_atto")
        bad = tmp_path / "cut.pth"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return str(bad), ("cut.pth", "save or download it again")
    if case == "pickled_object":
        path = tmp_path / "obj.pth"
        path.write_bytes(pickle.dumps({"model": Path("x")}))
        return str(path), ("obj.pth", "refused")
    raise AssertionError(case)


CASES = ["missing", "offline_url", "url_without_file", "other_model", "other_width", "truncated", "pickled_object"]


@pytest.mark.parametrize("case", CASES)
def test_bad_timm_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    spec, fragments = _bad_weights(tmp_path, case)
    cfg = Config(backbone="timm:convnext_atto", timm_pretrained=spec, **SMALL)
    with pytest.raises(WeightsError) as info:
        build_model(cfg, pretrained_backbone=True)
    assert_one_line_error(info, *fragments)
    assert not list((tmp_path / "cache").rglob("*.pth"))  # nothing half-downloaded is kept


def test_bad_timm_pretrained_through_train(tmp_path: Path) -> None:
    result = run_cli("train", "--config", "shapes_demo", "--data", "shapes:4", "--out", tmp_path / "runs",
                     "--set", "backbone=timm:convnext_atto", "--set", "backbone_width=64",
                     "--set", f"timm_pretrained={tmp_path / 'nope.safetensors'}", "--set", "num_workers=0",
                     "--set", "image_min_dim=64", "--set", "image_max_dim=64")
    assert_clean_error(result, "timm_pretrained", "nope.safetensors", "file not found")

"""Bad config values, config files and ``--set`` overrides: each is one error line naming the field
(and the file) and the fix, through ``Config(...)``, a YAML file and ``maskrcnn config --set``;
the good values next to every bound still validate."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from maskrcnn.config import Config, ConfigError
from _bad_input import assert_clean_error, assert_one_line_error, run_cli

NAN, INF = float("nan"), float("inf")
ZERO_LOSS = {"rpn_class": 0.0, "rpn_bbox": 0.0, "mrcnn_class": 0.0, "mrcnn_bbox": 0.0, "mrcnn_mask": 0.0}
NAN_LOSS = {**ZERO_LOSS, "rpn_class": NAN, "mrcnn_mask": 1.0}

#: (values, field named in the message, a word of the fix). Single fields and consistent pairs.
BAD: list[tuple[dict[str, Any], str, str]] = [
    # issue 12 item 5
    ({"image_min_dim": 0}, "image_min_dim", "e.g."),
    ({"size_divisibility": 0}, "size_divisibility", ">= 32"),
    ({"num_workers": -1}, "num_workers", ">= 0"),
    ({"rpn_anchor_ratios": []}, "rpn_anchor_ratios", "not be empty"),
    ({"learning_rate": -0.1}, "learning_rate", "> 0"),
    ({"weight_decay": -1}, "weight_decay", ">= 0"),
    ({"pool_size": 0}, "pool_size", ">= 1"),
    ({"mask_threshold": 2}, "mask_threshold", "[0, 1]"),
    ({"aug_hflip": 2}, "aug_hflip", "[0, 1]"),
    ({"aug_crop": 1000}, "aug_crop", "must be a list"),
    ({"aug_crop": [2000, 2000]}, "aug_crop", "never crop"),
    ({"aug_crop": [16, 16]}, "aug_crop", "at least 32"),
    ({"aug_crop": [256]}, "aug_crop", "[height, width]"),
    # NaN / infinity anywhere
    ({"learning_rate": NAN}, "learning_rate", "finite"),
    ({"weight_decay": INF}, "weight_decay", "finite"),
    ({"pixel_mean": [0.5, NAN, 0.5]}, "pixel_mean[1]", "finite"),
    ({"loss_weights": NAN_LOSS}, "loss_weights", "finite"),
    ({"max_train_minutes": INF}, "max_train_minutes", "finite"),
    ({"aug_scale_jitter": [0.8, INF]}, "aug_scale_jitter[1]", "finite"),
    ({"frozen_bn_eps": NAN}, "frozen_bn_eps", "finite"),
    # every other field's range
    ({"seed": -1}, "seed", "e.g."),
    ({"seed": 2**40}, "seed", "4294967295"),
    ({"backbone_width": 4}, "backbone_width", ">= 8"),
    ({"fpn_channels": 0}, "fpn_channels", ">= 8"),
    ({"backbone_strides": [8, 16, 32, 64, 128]}, "backbone_strides", "remove the field"),
    ({"frozen_bn_eps": -1e-5}, "frozen_bn_eps", "[0, 1)"),
    ({"image_channel_count": 0}, "image_channel_count", ">= 1"),
    ({"pixel_std": [0.2, 0.0, 0.2]}, "pixel_std[1]", "> 0"),
    ({"image_max_dim": 0}, "image_max_dim", "e.g."),
    ({"image_min_dim": 100_000}, "image_min_dim", "32768"),
    ({"image_min_scale": -1}, "image_min_scale", ">= 0"),
    ({"size_divisibility": 48}, "size_divisibility", "multiple of 32"),
    ({"rpn_anchor_scales": [32, 64]}, "rpn_anchor_scales", "one per FPN level"),
    ({"rpn_anchor_scales": [32, -64, 128, 256, 512]}, "rpn_anchor_scales[1]", "> 0"),
    ({"rpn_anchor_ratios": [1.0, -2.0]}, "rpn_anchor_ratios[1]", "> 0"),
    ({"rpn_nms_threshold": 0}, "rpn_nms_threshold", "(0, 1]"),
    ({"rpn_train_anchors_per_image": 0}, "rpn_train_anchors_per_image", ">= 1"),
    ({"rpn_positive_fraction": 0}, "rpn_positive_fraction", "(0, 1]"),
    ({"rpn_fg_iou_threshold": 1.5}, "rpn_fg_iou_threshold", "(0, 1]"),
    ({"rpn_bg_iou_threshold": -0.1}, "rpn_bg_iou_threshold", "[0, 1]"),
    ({"pre_nms_limit_training": 0}, "pre_nms_limit_training", ">= 1"),
    ({"pre_nms_limit_inference": -5}, "pre_nms_limit_inference", ">= 1"),
    ({"post_nms_rois_training": 0}, "post_nms_rois_training", ">= 1"),
    ({"post_nms_rois_inference": 0}, "post_nms_rois_inference", ">= 1"),
    ({"rpn_bbox_std_dev": [1.0, 1.0, 1.0]}, "rpn_bbox_std_dev", "four positive"),
    ({"train_rois_per_image": 0}, "train_rois_per_image", ">= 1"),
    ({"roi_positive_ratio": 2}, "roi_positive_ratio", "(0, 1]"),
    ({"roi_fg_iou_threshold": 0}, "roi_fg_iou_threshold", "(0, 1]"),
    ({"mask_pool_size": 0}, "mask_pool_size", ">= 1"),
    ({"roi_sampling_ratio": -1}, "roi_sampling_ratio", ">= 0"),
    ({"box_head_dim": 0}, "box_head_dim", ">= 1"),
    ({"mask_head_channels": 0}, "mask_head_channels", ">= 1"),
    ({"mask_head_convs": -1}, "mask_head_convs", ">= 0"),
    ({"bbox_std_dev": [0.1, 0.1, 0.2, -0.2]}, "bbox_std_dev[3]", "> 0"),
    ({"detection_min_confidence": 1.5}, "detection_min_confidence", "[0, 1]"),
    ({"detection_nms_threshold": 0}, "detection_nms_threshold", "(0, 1]"),
    ({"detection_max_instances": 0}, "detection_max_instances", ">= 1"),
    ({"max_gt_instances": 0}, "max_gt_instances", ">= 1"),
    ({"mini_mask_shape": [2, 2]}, "mini_mask_shape", "at least 4"),
    ({"images_per_gpu": 0}, "images_per_gpu", ">= 1"),
    ({"images_per_gpu": 1.5}, "images_per_gpu", "whole number"),
    ({"epochs": 0}, "epochs", ">= 1"),
    ({"layers": "backbone.(["}, "layers", "preset"),
    ({"base_batch_size": 0}, "base_batch_size", ">= 1"),
    ({"optimizer": "adam"}, "optimizer", "'sgd' or 'adamw'"),
    ({"momentum": 1.0}, "momentum", "[0, 1)"),
    ({"lr_steps": [0.9, 0.5]}, "lr_steps", "increasing"),
    ({"lr_steps": [0.5, 1.5]}, "lr_steps", "between 0 and 1"),
    ({"lr_gamma": 0}, "lr_gamma", "(0, 1]"),
    ({"lr_gamma": 2}, "lr_gamma", "(0, 1]"),
    ({"warmup_iters": -1}, "warmup_iters", ">= 0"),
    ({"warmup_factor": 0}, "warmup_factor", "(0, 1]"),
    ({"gradient_clip_norm": 0}, "gradient_clip_norm", "> 0"),
    ({"max_train_minutes": 0}, "max_train_minutes", "> 0"),
    ({"max_train_minutes": -5}, "max_train_minutes", "> 0"),
    ({"grad_accumulation": 0}, "grad_accumulation", ">= 1"),
    ({"amp": "fp8"}, "amp", "'bf16'"),
    ({"fast_dtype": "int8"}, "fast_dtype", "'fp32'"),
    ({"loss_weights": {"rpn_class": 1.0}}, "loss_weights", "exactly"),
    ({"loss_weights": ZERO_LOSS}, "loss_weights", "at least one positive"),
    ({"class_loss_weights": [1.0, -1.0]}, "class_loss_weights[1]", ">= 0"),
    ({"class_loss_weights": [1.0, 2.0]}, "class_loss_weights", "one per class"),
    ({"repeat_factor_threshold": 0}, "repeat_factor_threshold", "(0, 1]"),
    ({"repeat_factor_threshold": 2}, "repeat_factor_threshold", "(0, 1]"),
    ({"checkpoint_keep": 0}, "checkpoint_keep", ">= 1"),
    ({"checkpoint_every": 0}, "checkpoint_every", ">= 1"),
    ({"validate_every": -1}, "validate_every", ">= 0"),
    ({"aug_vflip": -0.5}, "aug_vflip", "[0, 1]"),
    ({"aug_rot90": 1.5}, "aug_rot90", "[0, 1]"),
    ({"aug_blur": 3}, "aug_blur", "[0, 1]"),
    ({"aug_brightness": 1.5}, "aug_brightness", "[0, 1]"),
    ({"aug_contrast": -0.1}, "aug_contrast", "[0, 1]"),
    ({"aug_min_area": -1}, "aug_min_area", ">= 0"),
    ({"aug_scale_jitter": [0.0, 1.0]}, "aug_scale_jitter[0]", "> 0"),
    ({"aug_scale_jitter": [1.2, 0.8]}, "aug_scale_jitter", "lo <= hi"),
    ({"num_classes": 1}, "num_classes", "background"),
    ({"image_resize_mode": "resize"}, "image_resize_mode", "'minmax'"),
    ({"train_bn": "maybe"}, "train_bn", "true or false"),
    ({"mask_loss": "focal"}, "mask_loss", "'bce+dice'"),
    ({"mask_dice_weight": 0}, "mask_dice_weight", "> 0"),
    ({"mask_dice_weight": 0.5}, "mask_dice_weight", "mask_loss: bce+dice"),
    ({"mask_paste": "detectron"}, "mask_paste", "'subpixel'"),
    ({"mask_scoring": "iou"}, "mask_scoring", "'maskness'"),
    ({"tta_scales": [0.0]}, "tta_scales[0]", "> 0"),
    ({"tta_scales": [1.25, 1.25]}, "tta_scales", "distinct factors"),
    ({"tta_scales": [1.0]}, "tta_scales", "other than 1"),
    # a run name is one plain path component (it names the run folder under --out)
    ({"name": "../../x"}, "name", "plain file name"),
    ({"name": "a/b"}, "name", "plain file name"),
    ({"name": ".."}, "name", "plain file name"),
    ({"name": "-rf"}, "name", "plain file name"),
    ({"name": "x" * 101}, "name", "plain file name"),
    # consistent pairs
    ({"image_min_dim": 800, "image_max_dim": 600}, "image_max_dim", "raise"),
    ({"rpn_bg_iou_threshold": 0.8, "rpn_fg_iou_threshold": 0.7}, "rpn_bg_iou_threshold", "lower"),
    ({"inference_resize_mode": "square", "image_resize_mode": "crop", "image_min_dim": 100}, "image_min_dim", "multiple of size_divisibility"),
    ({"image_resize_mode": "pad64", "image_min_dim": 800}, "image_min_dim", "divisible by 64"),
    ({"inference_resize_mode": "square", "image_resize_mode": "crop", "image_min_dim": 256, "aug_crop": [320, 320]}, "aug_crop", "up to 256"),
    ({"num_classes": 3, "class_names": ["BG", "a"]}, "class_names", "one name per class"),
]

IDS = [",".join(f"{k}={str(v)[:20]}" for k, v in values.items()) for values, _, _ in BAD]


def _yaml_value(value: Any) -> str:
    """A value as one line of YAML flow text, as a user types it after ``--set key=``."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


@pytest.mark.parametrize("values,field,fix", BAD, ids=IDS)
def test_bad_value_in_python(values: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**values)
    assert_one_line_error(info, field, fix)
    with pytest.raises(ConfigError) as info:  # the same through assignment on a valid config
        cfg = Config(**{k: v for k, v in values.items() if k == "num_classes"})
        for k, v in values.items():
            setattr(cfg, k, v)
    assert_one_line_error(info, field.split("[")[0])


@pytest.mark.parametrize("values,field,fix", BAD, ids=IDS)
def test_bad_value_in_yaml_file(tmp_path: Path, values: dict[str, Any], field: str, fix: str) -> None:
    path = tmp_path / "bad config.yaml"
    path.write_text(yaml.safe_dump(values))
    assert_clean_error(run_cli("config", "--config", path), str(path), field, fix)


@pytest.mark.parametrize("values,field,fix", BAD, ids=IDS)
def test_bad_value_in_set(values: dict[str, Any], field: str, fix: str) -> None:
    argv: list[str] = ["config"]
    for key, value in values.items():
        argv += ["--set", f"{key}={_yaml_value(value)}"]
    line = assert_clean_error(run_cli(*argv), field.split("[")[0])
    if values != {"name": ".."} and "name" not in values:  # '--set name=..' is YAML '..', a string
        assert fix.lower() in line.lower()


#: (field, value) at or next to every bound: valid.
GOOD: list[dict[str, Any]] = [
    {"image_min_dim": 16, "image_max_dim": 16}, {"image_max_dim": 32768}, {"size_divisibility": 64},
    {"num_workers": 0}, {"rpn_anchor_ratios": [1.0]}, {"learning_rate": 1e-9}, {"weight_decay": 0},
    {"pool_size": 1}, {"mask_threshold": 0}, {"mask_threshold": 1}, {"aug_hflip": 0}, {"aug_hflip": 1},
    {"aug_crop": [32, 32]}, {"aug_crop": [1333, 1333]}, {"aug_crop": [1600, 1600], "aug_scale_jitter": [0.8, 1.25]},
    {"seed": 0}, {"seed": 2**32 - 1}, {"momentum": 0}, {"momentum": 0.999}, {"lr_gamma": 1}, {"warmup_factor": 1},
    {"warmup_iters": 0}, {"detection_min_confidence": 0}, {"detection_min_confidence": 1},
    {"detection_nms_threshold": 1}, {"rpn_bg_iou_threshold": 0}, {"roi_sampling_ratio": 0}, {"mask_head_convs": 0},
    {"validate_every": 0}, {"aug_min_area": 0}, {"repeat_factor_threshold": 1}, {"frozen_bn_eps": 0},
    {"max_train_minutes": 0.01}, {"checkpoint_keep": 1}, {"gradient_clip_norm": None}, {"backbone_strides": [4, 8, 16, 32, 64]},
    {"name": "my-run_2.v1+x"}, {"name": "Zellkerne_ü"}, {"name": "x" * 100}, {"image_channel_count": 1, "pixel_mean": [0.5], "pixel_std": [0.25]},
    {"backbone_width": 8, "fpn_channels": 8}, {"pixel_mean": [-1.0, 0.0, 2.0]}, {"aug_scale_jitter": [1.0, 1.0]},
    {"rpn_bg_iou_threshold": 0.7, "rpn_fg_iou_threshold": 0.7}, {"loss_weights": {**ZERO_LOSS, "mrcnn_mask": 1.0}},
    {"image_resize_mode": "crop", "inference_resize_mode": "pad64", "image_min_dim": 256, "aug_crop": [256, 256]}, {"image_resize_mode": "pad64", "image_min_dim": 512},
    {"mask_loss": "dice", "mask_dice_weight": 1e-6}, {"mask_loss": "bce+dice", "mask_dice_weight": 3.0},
    {"lr_steps": [0.5, 0.5]}, {"lr_schedule": "cosine", "lr_steps": [0.9, 0.5]}, {"aug_brightness": 1}, {"rpn_nms_threshold": 1},
]


@pytest.mark.parametrize("values", GOOD, ids=[",".join(f"{k}={str(v)[:16]}" for k, v in g.items()) for g in GOOD])
def test_values_at_the_bounds_validate(tmp_path: Path, values: dict[str, Any]) -> None:
    cfg = Config(**values)
    for key, value in values.items():
        assert getattr(cfg, key) == value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    assert Config.from_yaml(path) == cfg
    argv = ["config"] + [a for k, v in values.items() for a in ("--set", f"{k}={_yaml_value(v)}")]
    result = run_cli(*argv)
    assert result.code == 0, result.err
    assert Config(**yaml.safe_load(result.out)) == cfg


# ------------------------------------------------------------------------------ unknown fields


@pytest.mark.parametrize("key,suggestion", [
    ("learning_rat", "learning_rate"), ("lr", "learning_rate"), ("hflip", "aug_hflip"),
    ("IMAGE_MIN_DIM", "image_min_dim"), ("batch_size", "images_per_gpu"), ("num_clases", "num_classes"),
])
def test_unknown_fields_suggest_the_closest(tmp_path: Path, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{key: 1})
    assert_one_line_error(info, key, f"did you mean '{suggestion}'")
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: 1\n")
    assert_clean_error(run_cli("config", "--config", path), str(path), key, f"did you mean '{suggestion}'")
    assert_clean_error(run_cli("config", "--set", f"{key}=1"), key, f"did you mean '{suggestion}'")


# ------------------------------------------------------------------------------ broken YAML files


def _nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


@pytest.mark.parametrize("content,fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"name: caf\xe9\n", "not UTF-8"),
    (b"epochs: [1, 2\n", "not valid YAML"),
    (b"epochs: 3\n\tname: x\n", "not valid YAML"),
    (b"{epochs: 3\n", "not valid YAML"),
    (b"- epochs: 3\n- name: x\n", "mapping of field: value"),
    (b"12\n", "mapping of field: value"),
    (b"1: 2\n", "unknown config field '1'"),
    (_nested(20_000).encode(), "nested too deeply"),
    (b"epochs: !!python/object/apply:os.system ['echo PWNED']\n", "!!python/object/apply:os.system"),
    (b"x: " + b"a" * (1 << 20) + b"\n", "too large"),
])
def test_broken_yaml_file_is_one_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert_one_line_error(info, str(path), fragment)
    assert_clean_error(run_cli("config", "--config", path), str(path), fragment)


def test_empty_yaml_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert Config.from_yaml(path) == Config()


def test_a_yaml_tag_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_clean_error(run_cli("config", "--config", path), str(path), "tag", "plain values")
    result = run_cli("config", "--set", f"epochs=!!python/object/apply:os.system ['touch {marker}']")
    assert_clean_error(result, "--set epochs", "tag", "plain YAML value")
    result = run_cli("config", "--set", f"name=!!python/object/new:os.system [touch {marker}]")
    assert_clean_error(result, "--set name", "tag")
    assert not marker.exists()


def test_folder_and_fifo_as_config_are_refused_without_hanging(tmp_path: Path) -> None:
    folder = tmp_path / "cfgdir"
    folder.mkdir()
    assert_clean_error(run_cli("config", "--config", folder), str(folder), "is a folder")
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(run_cli("config", "--config", fifo)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "reading a FIFO as the config hangs"
    assert_clean_error(results[0], str(fifo), "not a regular file")


@pytest.mark.parametrize("item,fragment", [
    ("aug_crop=[1,", "not valid YAML"),
    ("pixel_mean={a: 1", "not valid YAML"),
    ("epochs", "expected key=value"),
    ("=3", "unknown config field"),
    ("learning_rate=.nan", "finite"),
    ("learning_rate=-.inf", "finite"),
    ("aug_crop=&a [1, *a]", "aug_crop[1]"),  # a self-referencing alias
])
def test_broken_set_values_are_one_line(item: str, fragment: str) -> None:
    assert_clean_error(run_cli("config", "--set", item), fragment)


def test_describe_lists_the_valid_ranges() -> None:
    text = Config.describe()
    lines = {line.split()[0]: line for line in text.splitlines()}
    assert lines["aug_hflip"].endswith("Valid: [0, 1].")
    assert lines["learning_rate"].endswith("Valid: > 0.")
    assert lines["pool_size"].endswith("Valid: >= 1.")
    assert lines["rpn_anchor_ratios"].endswith("Valid: > 0.")
    assert "Valid" not in lines["name"]
    assert math.isclose(Config().aug_hflip, 0.5)

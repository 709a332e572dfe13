"""Config: validation errors name the field, YAML round trip, --set overrides, Matterport import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskrcnn.compat.matterport import convert_matterport
from maskrcnn.config import Config, ConfigError
from maskrcnn.engine.optim import scaled_learning_rate


@pytest.mark.parametrize("values,expected", [
    ({"num_classes": 1}, "num_classes=1: must count background"),
    ({"pixel_mean": [0.5, 0.5]}, "pixel_mean/pixel_std have 2/3 values but image_channel_count=3"),
    ({"layers": "backbone.(["}, "layers='backbone.([': neither a preset"),
    ({"lr_steps": [0.5, 1.5]}, "lr_steps: fractions of the run strictly between 0 and 1"),
    ({"images_per_gpu": "two"}, "images_per_gpu=two: must be a whole number; e.g. images_per_gpu: 2"),
    ({"learning_rat": 0.1}, "unknown config field 'learning_rat'; did you mean 'learning_rate'?"),
    ({"image_resize_mode": "pad64", "image_min_dim": 800}, "image_min_dim=800 with image_resize_mode=pad64: must be divisible by 64 (e.g. 768)"),
    ({"class_loss_weights": [1.0, 2.0]}, "class_loss_weights has 2 values; give one per class (91"),
    ({"amp": "fp8"}, "amp=fp8: must be 'none', 'bf16', 'fp16' or 'auto'"),
])
def test_invalid_configs_raise_one_line_naming_the_field(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.create(**values)
    msg = str(info.value)
    assert expected in msg and "\n" not in msg


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_classes: 3\nepochs: 0\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: epochs=0: must be >= 1; e.g. epochs: 12$"):
        Config.from_yaml(bad)
    bad.write_text("num_classes: 3\nbakcbone: resnet50\n")
    with pytest.raises(ConfigError, match=r"unknown config field 'bakcbone'; did you mean 'backbone'\?"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found.*or a shipped preset \\(shapes_demo, nuclei\\)"):
        Config.from_yaml(tmp_path / "missing.yaml")
    # shipped presets by name (maskrcnn train --config nuclei)
    nuclei = Config.from_yaml("nuclei")
    assert (nuclei.name, nuclei.optimizer, nuclei.image_resize_mode) == ("nuclei", "adamw", "crop")
    assert Config.from_yaml("shapes_demo.yaml").name == "shapes_demo"


def test_yaml_round_trip_keeps_every_value(tmp_path: Path) -> None:
    cfg = Config.create(name="balloon", num_classes=2, class_names=["BG", "balloon"], backbone="resnet101",
                        image_resize_mode="square", image_min_dim=512, image_max_dim=1024, aug_crop=[256, 256],
                        loss_weights={"rpn_class": 1.0, "rpn_bbox": 0.5, "mrcnn_class": 1.0, "mrcnn_bbox": 1.0, "mrcnn_mask": 2.0},
                        gradient_clip_norm=None, repeat_factor_threshold=0.001, lr_schedule="cosine")
    cfg.to_yaml(tmp_path / "c.yaml")
    back = Config.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and back.model_dump() == cfg.model_dump()
    assert back.aug_crop == [256, 256] and back.gradient_clip_norm is None and back.loss_weights["mrcnn_mask"] == 2.0


def test_set_overrides_parse_values_as_yaml() -> None:
    cfg = Config.create(num_classes=3).with_overrides(
        ["epochs=24", "learning_rate=0.01", "aug_crop=[256, 320]", "lr_schedule=cosine", "gradient_clip_norm=null", "train_bn=true"])
    assert (cfg.epochs, cfg.learning_rate, cfg.aug_crop, cfg.lr_schedule) == (24, 0.01, [256, 320], "cosine")
    assert cfg.gradient_clip_norm is None and cfg.train_bn is True and cfg.num_classes == 3
    with pytest.raises(ConfigError, match=r"--set epoch: unknown config field; did you mean 'epochs'\?"):
        cfg.with_overrides(["epoch=3"])
    with pytest.raises(ConfigError, match="--set 'epochs': expected key=value"):
        cfg.with_overrides(["epochs"])
    with pytest.raises(ConfigError, match="num_classes=1"):
        cfg.with_overrides(["num_classes=1"])


# ------------------------------------------------------------------------------ Matterport


# Matterport's Config defaults, as users subclass them (the drop-in's copy of mrcnn/config.py)
from maskrcnn.compat.mrcnn.config import Config as MatterportConfig  # noqa: E402


class NucleusConfig(MatterportConfig):
    NAME = "nucleus"
    NUM_CLASSES = 2
    GPU_COUNT = 2
    IMAGES_PER_GPU = 6
    BACKBONE = "resnet50"
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 512
    IMAGE_MIN_SCALE = 2.0
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    MEAN_PIXEL = np.array([43.53, 39.56, 48.22])
    TRAIN_BN = None
    STEPS_PER_EPOCH = 110
    TRAIN_ROIS_PER_IMAGE = 128
    DETECTION_MIN_CONFIDENCE = 0
    MY_CUSTOM_SETTING = 3


def test_from_matterport_reads_the_subclass_hierarchy(capsys: pytest.CaptureFixture) -> None:
    obj = NucleusConfig()
    obj.POST_NMS_ROIS_INFERENCE = 2000  # an instance attribute wins over the classes
    cfg = Config.from_matterport(obj)
    assert (cfg.name, cfg.num_classes, cfg.backbone, cfg.images_per_gpu) == ("nucleus", 2, "resnet50", 6)
    assert (cfg.image_resize_mode, cfg.image_min_dim, cfg.image_max_dim, cfg.image_min_scale) == ("crop", 512, 1024, 2.0)
    assert cfg.rpn_anchor_scales == [8, 16, 32, 64, 128] and cfg.rpn_anchor_ratios == [0.5, 1, 2]
    assert cfg.pixel_mean == pytest.approx([43.53 / 255, 39.56 / 255, 48.22 / 255]) and cfg.pixel_std == pytest.approx([1 / 255] * 3)
    assert (cfg.train_rois_per_image, cfg.roi_positive_ratio, cfg.detection_min_confidence) == (128, 0.33, 0.0)
    assert (cfg.detection_nms_threshold, cfg.post_nms_rois_inference, cfg.pre_nms_limit_training) == (0.3, 2000, 6000)
    assert cfg.use_mini_mask is True and cfg.mini_mask_shape == [56, 56] and cfg.bbox_std_dev == [0.1, 0.1, 0.2, 0.2]
    assert (cfg.learning_rate, cfg.base_batch_size, cfg.momentum, cfg.weight_decay) == (0.001, 12, 0.9, 0.0001)
    assert cfg.train_bn is False and cfg.gradient_clip_norm == 5.0 and cfg.loss_weights["mrcnn_mask"] == 1.0
    assert cfg.fpn_channels == 256 and cfg.box_head_dim == 1024
    # Matterport's rate for its own batch (6 images x 2 GPUs) is kept at that batch
    assert scaled_learning_rate(cfg, world_size=2) == pytest.approx(0.001)
    err = capsys.readouterr().err
    assert "VALIDATION_STEPS=" in err and "MY_CUSTOM_SETTING=3: no equivalent" in err
    assert cfg.steps_per_epoch == 110  # honoured: an epoch is 110 optimizer steps, as in Matterport

    _, notes = convert_matterport(obj)
    joined = "\n".join(notes)
    for name in ("VALIDATION_STEPS", "GPU_COUNT=2", "MY_CUSTOM_SETTING", "PRE_NMS_LIMIT"):
        assert name in joined, name
    for silent in ("BATCH_SIZE", "IMAGE_SHAPE", "display", "NUM_CLASSES", "USE_RPN_ROIS", "STEPS_PER_EPOCH"):  # derived values, methods, mapped fields
        assert silent not in joined, silent
    assert Config.from_matterport(obj, epochs=3).epochs == 3  # overrides on top


def test_from_matterport_defaults_and_invalid_values() -> None:
    base = Config.from_matterport(MatterportConfig(), num_classes=2)
    assert base.name == "maskrcnn" and base.backbone == "resnet101" and base.base_batch_size == 2
    notes = convert_matterport(MatterportConfig())[1]
    assert not any("MASK_SHAPE" in n or "BACKBONE_STRIDES" in n for n in notes)  # defaults agree with ours

    class Odd(MatterportConfig):
        NUM_CLASSES = 3
        IMAGE_CHANNEL_COUNT = 1
        MEAN_PIXEL = [128.0]
        BACKBONE = "mobilenet"
        MASK_SHAPE = [56, 56]

    cfg = Config.from_matterport(Odd())
    assert cfg.pixel_mean == pytest.approx([128 / 255]) and cfg.image_channel_count == 1 and cfg.backbone == "resnet50"
    notes = "\n".join(convert_matterport(Odd())[1])
    assert "BACKBONE='mobilenet'" in notes and "MASK_SHAPE=[56, 56]" in notes

    class Broken(MatterportConfig):
        NUM_CLASSES = 2
        IMAGE_RESIZE_MODE = "pad64"
        IMAGE_MIN_DIM = 800

    with pytest.raises(ConfigError, match="image_min_dim=800 with image_resize_mode=pad64"):
        Config.from_matterport(Broken())

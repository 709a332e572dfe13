"""Read a Matterport-style ``Config`` (UPPER_CASE attributes) into our config fields.

Used by :meth:`maskrcnn.Config.from_matterport`::

    class BalloonConfig(mrcnn.config.Config):   # or any class with the same attribute names
        NAME = "balloon"
        NUM_CLASSES = 2
        IMAGES_PER_GPU = 2

    cfg = maskrcnn.Config.from_matterport(BalloonConfig())

Attributes are read from the instance and its class hierarchy (a subclass overrides its base).
Two conversions keep Matterport's behaviour:

* ``MEAN_PIXEL`` (RGB 0-255, no std) becomes ``pixel_mean = MEAN_PIXEL / 255`` and
  ``pixel_std = 1 / 255`` per channel, the same normalised input for images in [0, 1];
* ``LEARNING_RATE`` was meant for a batch of ``IMAGES_PER_GPU * GPU_COUNT``, which becomes
  ``base_batch_size`` so the rate is kept at that batch (and scaled for others).

Matterport's mask loss is binary cross-entropy, which is ``mask_loss: bce`` (the default) here. It
has no dice loss, so no Matterport attribute maps to ``mask_loss`` or ``mask_dice_weight``; choose
them as overrides: ``Config.from_matterport(cfg, mask_loss="bce+dice", mask_dice_weight=0.5)``.

Settings with no equivalent here are not dropped silently: they are listed in notes
(:func:`convert_matterport` returns them; :func:`config_values_from_matterport` prints them).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["convert_matterport", "config_values_from_matterport", "config_for_h5", "DIRECT_FIELDS"]

#: Matterport attribute -> our field, copied as is (sequences become lists).
DIRECT_FIELDS: dict[str, str] = {
    "NUM_CLASSES": "num_classes",
    "IMAGES_PER_GPU": "images_per_gpu",
    "RPN_ANCHOR_SCALES": "rpn_anchor_scales",
    "RPN_ANCHOR_RATIOS": "rpn_anchor_ratios",
    "RPN_NMS_THRESHOLD": "rpn_nms_threshold",
    "RPN_TRAIN_ANCHORS_PER_IMAGE": "rpn_train_anchors_per_image",
    "POST_NMS_ROIS_TRAINING": "post_nms_rois_training",
    "POST_NMS_ROIS_INFERENCE": "post_nms_rois_inference",
    "USE_MINI_MASK": "use_mini_mask",
    "MINI_MASK_SHAPE": "mini_mask_shape",
    "IMAGE_RESIZE_MODE": "image_resize_mode",
    "IMAGE_MIN_DIM": "image_min_dim",
    "IMAGE_MAX_DIM": "image_max_dim",
    "IMAGE_MIN_SCALE": "image_min_scale",
    "IMAGE_CHANNEL_COUNT": "image_channel_count",
    "TRAIN_ROIS_PER_IMAGE": "train_rois_per_image",
    "ROI_POSITIVE_RATIO": "roi_positive_ratio",
    "POOL_SIZE": "pool_size",
    "MASK_POOL_SIZE": "mask_pool_size",
    "MAX_GT_INSTANCES": "max_gt_instances",
    "RPN_BBOX_STD_DEV": "rpn_bbox_std_dev",
    "BBOX_STD_DEV": "bbox_std_dev",
    "DETECTION_MAX_INSTANCES": "detection_max_instances",
    "DETECTION_MIN_CONFIDENCE": "detection_min_confidence",
    "DETECTION_NMS_THRESHOLD": "detection_nms_threshold",
    "LEARNING_RATE": "learning_rate",
    "LEARNING_MOMENTUM": "momentum",
    "WEIGHT_DECAY": "weight_decay",
    "GRADIENT_CLIP_NORM": "gradient_clip_norm",
    "TOP_DOWN_PYRAMID_SIZE": "fpn_channels",
    "FPN_CLASSIF_FC_LAYERS_SIZE": "box_head_dim",
}

#: Attributes handled by a conversion below (not "no equivalent").
_CONVERTED = {"NAME", "BACKBONE", "GPU_COUNT", "MEAN_PIXEL", "PRE_NMS_LIMIT", "LOSS_WEIGHTS", "TRAIN_BN",
              "STEPS_PER_EPOCH", "VALIDATION_STEPS", "MASK_SHAPE", "BACKBONE_STRIDES", "RPN_ANCHOR_STRIDE", "USE_RPN_ROIS"}

#: Values Matterport computes in ``__init__`` from the others; recomputed here, never settings.
_DERIVED = {"BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE"}


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> Python numbers and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _attributes(obj: Any) -> dict[str, Any]:
    """UPPER_CASE, non-callable attributes of ``obj`` (instance first, then its classes' MRO)."""
    out = {}
    for name in dir(obj):
        if name.startswith("_") or not name.isupper():
            continue
        value = getattr(obj, name)
        if callable(value) and not isinstance(value, type):
            if name == "COMPUTE_BACKBONE_SHAPE":
                out[name] = value
            continue
        out[name] = value
    return out


def _backbone(value: Any, values: dict[str, Any], notes: list[str]) -> None:
    if isinstance(value, str) and value in ("resnet18", "resnet34", "resnet50", "resnet101"):
        values["backbone"] = value
    else:
        notes.append(f"BACKBONE={value!r}: only resnet50/resnet101 (and resnet18/34) exist here; kept backbone default")


def convert_matterport(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """(config values, notes) read from a Matterport-style config instance or class.

    The values are keyword arguments of :class:`maskrcnn.Config`; the notes name every
    Matterport setting that was ignored or changed meaning, one line each.
    """
    attrs = _attributes(obj)
    values: dict[str, Any] = {}
    notes: list[str] = []

    for src, dst in DIRECT_FIELDS.items():
        if src in attrs and attrs[src] is not None:
            values[dst] = _plain(attrs[src])
    if attrs.get("NAME"):
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(attrs["NAME"])).strip("._")[:100] or "matterport"
        values["name"] = name
        if name != str(attrs["NAME"]):
            notes.append(f"NAME={attrs['NAME']!r}: names the run folder here; written as {name!r}")
    if "BACKBONE" in attrs:
        _backbone(attrs["BACKBONE"], values, notes)
    if values.get("image_resize_mode") == "crop":
        values.setdefault("inference_resize_mode", "pad64")
        notes.append("IMAGE_RESIZE_MODE='crop': detection and validation use inference_resize_mode='pad64' "
                     "(Matterport's nucleus inference config); set inference_resize_mode to change it")
    if "IMAGE_MIN_SCALE" in values:
        values["image_min_scale"] = float(values["image_min_scale"] or 0.0)

    gpus = int(attrs.get("GPU_COUNT", 1) or 1)
    ipg = int(attrs.get("IMAGES_PER_GPU", values.get("images_per_gpu", 2)) or 1)
    if "LEARNING_RATE" in attrs:
        values["base_batch_size"] = ipg * gpus
    if gpus > 1:
        notes.append(f"GPU_COUNT={gpus}: start {gpus} processes with `torchrun --nproc_per_node {gpus}` instead")

    if attrs.get("MEAN_PIXEL") is not None:
        mean = [float(v) for v in np.asarray(attrs["MEAN_PIXEL"], dtype=np.float64).ravel()]
        values["pixel_mean"] = [m / 255.0 for m in mean]
        values["pixel_std"] = [1.0 / 255.0] * len(mean)

    if attrs.get("PRE_NMS_LIMIT") is not None:
        limit = int(attrs["PRE_NMS_LIMIT"])
        values["pre_nms_limit_training"] = limit
        values["pre_nms_limit_inference"] = limit
        notes.append(f"PRE_NMS_LIMIT={limit}: applied per FPN level by our architectures (over all levels together, as "
                     "Matterport, only by architecture: matterport, which runs its .h5 weights)")

    if attrs.get("LOSS_WEIGHTS") is not None:
        # Matterport's keys are "rpn_class_loss", ...; ours drop the "_loss"
        values["loss_weights"] = {re.sub(r"_loss$", "", str(k)): float(v) for k, v in dict(attrs["LOSS_WEIGHTS"]).items()}
    if "TRAIN_BN" in attrs:
        values["train_bn"] = bool(attrs["TRAIN_BN"])  # None (Matterport: frozen, inference mode) -> False

    if attrs.get("STEPS_PER_EPOCH") is not None:
        values["steps_per_epoch"] = int(attrs["STEPS_PER_EPOCH"])
    if attrs.get("VALIDATION_STEPS") is not None:
        notes.append(f"VALIDATION_STEPS={attrs['VALIDATION_STEPS']}: ignored; validation covers the whole validation set")
    pool = int(values.get("mask_pool_size", 14))
    if attrs.get("MASK_SHAPE") is not None and list(_plain(attrs["MASK_SHAPE"])) != [2 * pool, 2 * pool]:
        notes.append(f"MASK_SHAPE={_plain(attrs['MASK_SHAPE'])}: masks are predicted at 2 * MASK_POOL_SIZE = {2 * pool} here")
    if attrs.get("BACKBONE_STRIDES") is not None and list(_plain(attrs["BACKBONE_STRIDES"])) != [4, 8, 16, 32, 64]:
        notes.append(f"BACKBONE_STRIDES={_plain(attrs['BACKBONE_STRIDES'])}: fixed at [4, 8, 16, 32, 64] by the ResNet-FPN here")
    if attrs.get("RPN_ANCHOR_STRIDE") not in (None, 1):
        notes.append(f"RPN_ANCHOR_STRIDE={attrs['RPN_ANCHOR_STRIDE']}: anchors are placed at every feature cell here (stride 1)")
    if attrs.get("USE_RPN_ROIS") is False:
        notes.append("USE_RPN_ROIS=False: the heads always train on the RPN's proposals here; ignored")
    if attrs.get("COMPUTE_BACKBONE_SHAPE") is not None:
        notes.append("COMPUTE_BACKBONE_SHAPE: ignored; feature shapes follow from the backbone here")

    known = set(DIRECT_FIELDS) | _CONVERTED | _DERIVED | {"COMPUTE_BACKBONE_SHAPE"}
    for name in sorted(set(attrs) - known):
        notes.append(f"{name}={_plain(attrs[name])!r}: no equivalent setting; ignored")
    return values, notes


def config_values_from_matterport(obj: Any, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Config values from a Matterport-style config; notes go to ``report`` (default: stderr)."""
    values, notes = convert_matterport(obj)
    say = report or (lambda line: print(line, file=sys.stderr))
    for note in notes:
        say(f"note (from_matterport): {note}")
    return values


#: what a Matterport ``.h5`` file fixes and a Matterport config also names
_H5_CHECKED = (("num_classes", "NUM_CLASSES"), ("backbone", "BACKBONE"), ("image_channel_count", "IMAGE_CHANNEL_COUNT"))


def config_for_h5(config: Any, implied: dict[str, Any], source: str) -> Any:
    """The :class:`maskrcnn.Config` that runs Matterport ``.h5`` weights (``implied``: what the file fixes).

    ``config``: None (Matterport's default config), a Matterport config instance or class, a dict
    of UPPER_CASE attributes over Matterport's defaults (NUM_CLASSES and BACKBONE default to the
    file's), a YAML file of either kind, or one of our Configs (the fields it sets, over
    Matterport's defaults: e.g. ``rpn_bbox_std_dev`` stays Matterport's 0.1/0.2 unless set). The
    file's class count, depth and input channels must match what the config names (a one-line
    :class:`WeightsError` otherwise); the architecture and the layer widths are the file's.
    """
    import os

    from ..config import Config
    from ..errors import WeightsError
    from .mrcnn.config import Config as MatterportConfig

    if isinstance(config, (str, os.PathLike)):
        config = _matterport_yaml(config)
    if isinstance(config, Config):
        values = config_for_h5(None, implied, source).model_dump()
        values.update({k: getattr(config, k) for k in config.model_fields_set})
    else:
        attrs = dict(config) if isinstance(config, dict) else {}
        if config is not None and not isinstance(config, dict):
            if not hasattr(config, "NUM_CLASSES"):
                raise WeightsError(f"{source}: config is a {type(config).__name__}; pass a maskrcnn.Config, a Matterport "
                                   "config (UPPER_CASE attributes) or a dict of them")
            obj = config() if isinstance(config, type) else config
        else:
            bad = [k for k in attrs if not (isinstance(k, str) and k.isupper())]
            if bad:
                raise WeightsError(f"{source}: config key {bad[0]!r} is not a Matterport attribute (UPPER_CASE, e.g. "
                                   "DETECTION_MIN_CONFIDENCE); pass a maskrcnn.Config for our field names")
            attrs.setdefault("NUM_CLASSES", implied["num_classes"])
            attrs.setdefault("BACKBONE", implied["backbone"])
            obj = type("H5Config", (MatterportConfig,), attrs)()
        values, _ = convert_matterport(obj)  # notes concern training; detection reads what it needs
    for field, attr in _H5_CHECKED:
        if field in values and values[field] != implied[field]:
            raise WeightsError(f"{source}: the file has {attr}={implied[field]!r} but the config says {values[field]!r}; "
                               f"set {attr} = {implied[field]!r} (or {field}: {implied[field]!r}) or use matching weights")
    values.update(implied)
    return Config.create(**values)


def _matterport_yaml(path: Any) -> Any:
    """A YAML config file: a dict when every top-level key is UPPER_CASE (Matterport's attributes),
    else our :class:`maskrcnn.Config` read by ``Config.from_yaml``."""
    from pathlib import Path

    from ..config import Config, _read_config_text, parse_yaml

    if Path(path).is_file():
        data = parse_yaml(_read_config_text(Path(path)), str(path), fix="fix the file")
        if isinstance(data, dict) and data and all(isinstance(k, str) and k.isupper() for k in data):
            return data
    return Config.from_yaml(path)

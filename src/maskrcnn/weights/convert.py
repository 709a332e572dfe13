"""torchvision state dicts: legacy key names, backbone-only layouts, the config values they imply."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from ..errors import WeightsError

#: COCO category names in torchvision's 91-class order (index 0 background, "N/A" for unused ids).
COCO_CLASSES: list[str] = [
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]


_LEGACY = [
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"), None),
]


def convert_torchvision(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename legacy v1 keys to the current names; drop ``num_batches_tracked`` of frozen BN."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        k2 = k
        m = _LEGACY[0][0].match(k)
        if m:
            k2 = f"backbone.fpn.{m.group(1)}.{m.group(2)}.0.{m.group(3)}"
        elif _LEGACY[1][0].match(k):
            k2 = _LEGACY[1][0].sub(_LEGACY[1][1], k)  # type: ignore[arg-type]
        else:
            m = _LEGACY[2][0].match(k)
            if m:
                k2 = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
        out[k2] = v
    return out


_HEAD_PREFIXES = ("rpn.", "roi_heads.")


def backbone_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """``sd`` under our key names when it holds a backbone only, else None.

    Accepted: a torchvision ResNet classifier (``conv1.weight``, ``layer1.0.conv1.weight``, ...;
    its ``fc.*`` classifier is dropped), our ``body.*`` / ``backbone.body.*`` keys (optionally with
    ``backbone.fpn.*``). A state dict with RPN or head keys is a whole model: None.
    """
    if any(k.startswith(_HEAD_PREFIXES) for k in sd):
        return None
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        out = {f"backbone.body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    elif all(k.startswith("body.") for k in sd):
        out = {f"backbone.{k}": v for k, v in sd.items()}
    else:
        out = dict(sd)
    if "backbone.body.conv1.weight" not in out or not all(k.startswith("backbone.") for k in out):
        return None
    return out


def depth_from_keys(sd: dict[str, Tensor]) -> str:
    """The ResNet depth of the ``backbone.body.*`` keys (``"resnet50"``), or a :class:`WeightsError`."""
    blocks3 = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    bottleneck = any(k.startswith("backbone.body.layer1.0.conv3.") for k in sd)
    n = len(blocks3)
    table = {(True, 6): "resnet50", (True, 23): "resnet101", (False, 2): "resnet18", (False, 6): "resnet34"}
    depth = table.get((bottleneck, n))
    if depth is None:
        raise WeightsError(f"state dict has a ResNet body with {n} blocks in layer3 "
                           f"({'bottleneck' if bottleneck else 'basic'} blocks) that matches no supported depth")
    return depth


def config_from_state_dict(sd: dict[str, Tensor]) -> dict[str, Any]:
    """Config values implied by a (converted) state dict: architecture, backbone, classes, widths."""
    if "roi_heads.box_predictor.cls_score.weight" not in sd or "backbone.body.conv1.weight" not in sd:
        raise WeightsError("not a Mask R-CNN state dict (no backbone.body.conv1 / roi_heads.box_predictor keys); "
                           "pass Mask R-CNN weights")
    try:
        values: dict[str, Any] = {
            "architecture": "v2" if "roi_heads.box_head.5.weight" in sd else "v1",
            "backbone": depth_from_keys(sd),
            "num_classes": int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0]),
            "backbone_width": int(sd["backbone.body.conv1.weight"].shape[0]),
            "image_channel_count": int(sd["backbone.body.conv1.weight"].shape[1]),
            "fpn_channels": int(sd["backbone.fpn.layer_blocks.0.0.weight"].shape[0]),
            "box_head_dim": int(sd["roi_heads.box_predictor.cls_score.weight"].shape[1]),
            "mask_head_channels": int(sd["roi_heads.mask_predictor.conv5_mask.weight"].shape[1]),
            "mask_head_convs": len({m.group(1) for k in sd if (m := re.match(r"roi_heads\.mask_head\.(\d+)\.", k))}),
        }
    except KeyError as exc:
        raise WeightsError(f"not a complete Mask R-CNN state dict (no {exc.args[0]}); pass Mask R-CNN weights") from None
    except IndexError:
        raise WeightsError("a Mask R-CNN state dict with tensors of the wrong rank (conv1 / cls_score / conv5_mask); "
                           "the file is damaged: save or download it again") from None
    if values["num_classes"] == 91:
        values["class_names"] = list(COCO_CLASSES)
    return values


def v1_frozen_bn_eps(sd: dict[str, Tensor]) -> float:
    """The frozen-BN eps a v1 state dict was made with.

    torchvision's COCO file (and every model fine-tuned from it with frozen BN) uses ``eps = 0``;
    its ``FrozenBatchNorm2d`` has no ``num_batches_tracked``. A body that has those buffers was a
    plain ``BatchNorm2d`` model (eps 1e-5). Override with ``frozen_bn_eps`` when you know better.
    """
    return 1e-5 if "backbone.body.bn1.num_batches_tracked" in sd else 0.0


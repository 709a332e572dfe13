"""Tiny random-weight models that detect on purpose, their images, and COCO ground-truth files
made of their own detections (for the evaluation tests: such a file must score AP 1.0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image

from maskrcnn import Config
from maskrcnn.modeling import build_model
from maskrcnn.weights import save_checkpoint

H, W = 384, 512  # resized to 64 x 85 inside the model: boxes are large in original pixels


def tiny_config(**kw: Any) -> Config:
    values = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                  num_classes=3, class_names=["BG", "cell", "debris"], image_min_dim=64, image_max_dim=96,
                  pre_nms_limit_inference=300, post_nms_rois_inference=60, detection_max_instances=6)
    values.update(kw)
    return Config(**values)


def detecting_model(favour: dict[int, float], seed: int = 0, **kw: Any) -> torch.nn.Module:
    """A random-weight model (fixed seed) whose class scores follow ``favour`` ({class id: logit
    bias}, the others -6): every RoI becomes a confident detection of those classes, with a mask
    that fills its box (so the mask's box is the detected box to within a pixel)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**kw)).eval()
    with torch.no_grad():
        bias = torch.full((model.config.num_classes,), -6.0)
        for c, b in favour.items():
            bias[c] = b
        model.roi_heads.box_predictor.cls_score.bias.copy_(bias)
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.add_(20.0)
    return model


def save_model(model: torch.nn.Module, path: Path) -> Path:
    return save_checkpoint(model, model.config, path)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` smooth random RGB PNGs of ``H x W`` in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        small = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
        path = folder / f"img{k}.png"
        Image.fromarray(small).resize((W, H), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def write_gt(path: Path, images: list[Path], detections: list[Any], categories: list[tuple[int, str]],
             category_of: dict[int, int]) -> Path:
    """A COCO file whose annotations are ``detections`` (one ``Detections`` per image): model
    class ``c`` becomes ``category_of[c]``; detections of other classes are left out."""
    anns = []
    for image_id, det in enumerate(detections, start=1):
        for mask, c in zip(det.masks, det.class_ids.tolist()):
            if c not in category_of:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category_of[c], "segmentation": rle,
                         "area": float(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    gt = {"images": [{"id": i, "file_name": p.name, "width": W, "height": H} for i, p in enumerate(images, start=1)],
          "annotations": anns, "categories": [{"id": i, "name": n} for i, n in categories]}
    path.write_text(json.dumps(gt))
    return path

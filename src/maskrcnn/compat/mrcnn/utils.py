"""Matterport's ``mrcnn.utils``: the dataset base class, mask AP, boxes from masks, weights.

Each name delegates to the one implementation in this project:

* ``Dataset``: :class:`maskrcnn.data.Dataset` (Matterport's registry API) whose ``load_image``
  returns RGB as Matterport's does (grayscale repeated to 3 channels, a 4th channel dropped);
* ``compute_ap``, ``compute_ap_range``, ``compute_matches``, ``compute_overlaps_masks``,
  ``trim_zeros``: :mod:`maskrcnn.evaluation.voc` (same algorithm and numbers; masks ``[H, W, N]``);
* ``extract_bboxes``: :func:`maskrcnn.data.augment.boxes_from_masks`, returned in Matterport's
  ``[N, (y1, x1, y2, x2)]`` int32 order (``y2``/``x2`` exclusive, zeros for an empty mask);
* ``resize_image``: :func:`maskrcnn.data.resize.plan_resize` (Matterport's modes);
* ``minimize_mask`` / ``expand_mask``: :mod:`maskrcnn.data.minimask` (the training pipeline's
  mini-masks: bilinear resampling thresholded at 0.5, not Matterport's skimage resize);
* ``download_trained_weights``: downloads Matterport's ``mask_rcnn_coco.h5`` (its release URL,
  cached once, checked to be Matterport's 81-class ResNet-101 layout, with the offline message)
  and copies it to the path given, as Matterport does; ``load_weights`` runs it in Matterport's
  network (:mod:`maskrcnn.modeling.matterport`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ...data.augment import boxes_from_masks
from ...data.minimask import expand_masks, minimize_masks
from ...data.dataset import Dataset as _Dataset
from ...data.resize import plan_resize
from ...errors import DataError, WeightsError
from ...evaluation.voc import compute_ap, compute_ap_range, compute_matches, compute_overlaps_masks
from ...evaluation.voc import _trim_zeros as trim_zeros
from ._unsupported import module_getattr

__all__ = ["Dataset", "compute_ap", "compute_ap_range", "compute_matches", "compute_overlaps_masks", "trim_zeros",
           "extract_bboxes", "resize_image", "minimize_mask", "expand_mask", "download_trained_weights", "COCO_MODEL_URL"]

#: Matterport's constant: its COCO weights (ResNet-101, 81 classes), loadable with ``load_weights``.
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


class Dataset(_Dataset):
    """:class:`maskrcnn.data.Dataset` with Matterport's ``load_image``: always 3 channels.

    Override ``load_image`` for other channel counts (``IMAGE_CHANNEL_COUNT``), as in Matterport.
    """

    def load_image(self, image_id: int) -> np.ndarray:
        """``[H, W, 3]`` (uint8, or uint16 as stored): grayscale repeated, alpha dropped."""
        image = super().load_image(image_id)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return image[:, :, :3] if image.shape[2] == 4 else image


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """Boxes ``[N, (y1, x1, y2, x2)]`` int32 of masks ``[H, W, N]`` (y2, x2 one past the last pixel)."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise DataError(f"extract_bboxes: expected masks [H, W, N], got shape {tuple(mask.shape)}")
    xyxy = boxes_from_masks(np.moveaxis(mask, -1, 0) != 0)
    return xyxy[:, [1, 0, 3, 2]].astype(np.int32)


def _xyxy(bbox: np.ndarray) -> np.ndarray:
    """Matterport's ``[N, (y1, x1, y2, x2)]`` -> ``[N, (x1, y1, x2, y2)]``."""
    return np.asarray(bbox, dtype=np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]]


def minimize_mask(bbox: np.ndarray, mask: np.ndarray, mini_shape: tuple[int, int]) -> np.ndarray:
    """Masks ``[H, W, N]`` cropped to their boxes ``[N, (y1, x1, y2, x2)]`` and resized: ``[mh, mw, N]`` bool."""
    minis = minimize_masks(np.moveaxis(np.asarray(mask) != 0, -1, 0), _xyxy(bbox), mini_shape)
    return np.moveaxis(minis, 0, -1).astype(bool)


def expand_mask(bbox: np.ndarray, mini_mask: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Mini masks ``[mh, mw, N]`` pasted back at their boxes: ``[H, W, N]`` bool (``image_shape[:2]``)."""
    full = expand_masks(np.moveaxis(np.asarray(mini_mask) != 0, -1, 0).astype(np.uint8), _xyxy(bbox), tuple(image_shape[:2]))
    return np.moveaxis(full, 0, -1).astype(bool)


def resize_image(image: np.ndarray, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square"
                 ) -> tuple[np.ndarray, tuple[int, int, int, int], float, list[tuple[int, int]], tuple[int, int, int, int] | None]:
    """Matterport's ``resize_image``: ``(image, window (y1, x1, y2, x2), scale, padding, crop)``.

    ``image`` ``[H, W, C]`` keeps its dtype; padding is ``[(top, bottom), (left, right), (0, 0)]``
    (for ``np.pad``); ``crop`` is ``(y, x, h, w)`` in ``crop`` mode, else None. The geometry is
    :func:`maskrcnn.data.resize.plan_resize`, the rule training and inference use.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"resize_image: expected an [H, W, C] image, got shape {tuple(image.shape)}")
    h, w = image.shape[:2]
    info = plan_resize(h, w, mode, int(min_dim or 1), int(max_dim or max(h, w, min_dim or 1)), float(min_scale or 0.0),
                       rng=np.random.default_rng(), name="resize_image")
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    out = info.apply_image(tensor).permute(1, 2, 0).numpy()
    if np.issubdtype(image.dtype, np.integer):
        limits = np.iinfo(image.dtype)
        out = np.clip(np.round(out), limits.min, limits.max)
    padding = [tuple(info.padding[0]), tuple(info.padding[1]), (0, 0)]
    return out.astype(image.dtype), tuple(info.window), float(info.scale), padding, info.crop


def download_trained_weights(coco_model_path: str | os.PathLike[str], verbose: int = 1) -> Path:
    """Download Matterport's ``mask_rcnn_coco.h5`` (once, into the weights cache) and copy it to ``coco_model_path``.

    The file (from :data:`COCO_MODEL_URL`; Matterport publishes no hash) is accepted only when it
    reads as Matterport's Keras layout with 81 classes and a ResNet-101 body, so a truncated or
    wrong download is an error naming the file, and nothing is written to ``coco_model_path``.
    Offline, the error says where to put the file. Returns ``coco_model_path``.
    """
    from ...utils.files import atomic_write
    from ...weights import resolve_named
    from ...weights.h5 import h5_config, read_keras_layers

    cached, _ = resolve_named("matterport-coco", progress=bool(verbose))
    implied = h5_config(read_keras_layers(cached), str(cached))
    if (implied["num_classes"], implied["backbone"]) != (81, "resnet101"):
        raise WeightsError(f"{cached}: has {implied['num_classes']} classes and a {implied['backbone']} body, not "
                           f"Matterport's COCO weights (81, resnet101); delete it and download again")
    target = Path(coco_model_path)
    if target.resolve() != cached.resolve():
        with open(cached, "rb") as src:
            atomic_write(target, lambda out: shutil.copyfileobj(src, out, 1 << 20))
    if verbose:
        print(f"Matterport's COCO weights are in {target}", file=sys.stderr)
    return target


#: Matterport utilities with no counterpart here, and what to use.
_NOT_HERE = {
    "resize_mask": "model.load_image_gt resizes masks with the image (maskrcnn.data.resize.ResizeInfo.resize_masks)",
    "unmold_mask": "use maskrcnn.inference.paste.paste_masks",
    "generate_pyramid_anchors": "anchors are made inside the model (maskrcnn.modeling.anchors)",
    "non_max_suppression": "use torchvision.ops.nms",
    "compute_overlaps": "use torchvision.ops.box_iou (boxes x1, y1, x2, y2)",
    "box_refinement": "use maskrcnn.modeling.box_coder",
    "apply_box_deltas": "use maskrcnn.modeling.box_coder",
}


__getattr__ = module_getattr(__name__, _NOT_HERE)

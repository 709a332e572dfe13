"""Any :class:`~maskrcnn.data.Dataset` -> a COCO instances dict / JSON file.

The dict is what :mod:`maskrcnn.evaluation` takes as ground truth and what
:class:`~maskrcnn.data.formats.CocoDataset` reads back with identical masks and class ids:

* ``images``: ``{"id": internal image id, "file_name", "width", "height"}``;
* ``categories``: ``{"id": internal class id (1..K), "name", "supercategory": source}``;
* ``annotations``: one per instance, ids from 1 (pycocotools treats id 0 as "unmatched"):
  ``segmentation`` compressed RLE with ``counts`` as str, ``bbox`` ``[x, y, w, h]`` of the mask
  (pixel-edge coordinates), ``area`` (pixel count), ``iscrowd: 0``.
* not written, each recorded in ``dataset.problems`` (:mod:`maskrcnn.data.problems`): instances
  whose mask is empty (``empty_mask``) or whose class is not declared (``unknown_class``), and
  images whose ``load_mask`` fails or breaks its contract (the conversion goes on).
* ignore regions (``load_ignore_instances`` when the dataset has it, else ``load_ignore_mask``)
  become ``iscrowd: 1`` annotations; a region without a class is written once per category, so
  it is ignored for every class.

Masks are loaded one image at a time. Images held inside the annotation files (TFRecords:
datasets with an ``encoded_image(image_id)`` method and no ``path``) are written out first by
:func:`extract_images`, so the JSON points at real files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import DataError
from ..utils.files import atomic_write_bytes, atomic_write_json
from . import rle as rle_codec
from .dataset import Dataset
from .problems import add_problem, instance_ref
from .validate import check_load_mask

__all__ = ["dataset_to_coco", "write_coco", "extract_images"]


def dataset_to_coco(dataset: Dataset, image_ids: Iterable[int] | None = None,
                    relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The COCO dict of ``dataset`` (all images, or ``image_ids``); see the module docstring.

    ``relative_to``: the folder the JSON will live in; ``file_name`` is written relative to it for
    images inside it, absolute for the others. None: the paths as the dataset stores them.
    """
    if not getattr(dataset, "_prepared", True) or dataset.num_classes == 0:
        raise DataError(f"{type(dataset).__name__} is not prepared; call dataset.prepare() before converting it")
    ids = list(dataset.image_ids) if image_ids is None else [int(i) for i in image_ids]
    categories = [
        {"id": i, "name": str(dataset.class_names[i]), "supercategory": str(dataset.class_info[i].get("source") or "object")}
        for i in range(1, dataset.num_classes)
    ]
    cat_ids = [c["id"] for c in categories]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in ids:
        image_id = int(image_id)
        loaded = _load_masks(dataset, image_id)
        if loaded is None:
            continue
        masks, class_ids, indices = loaded
        h, w = int(masks.shape[0]), int(masks.shape[1])
        images.append({"id": image_id, "file_name": _file_name(dataset, image_id, relative_to),
                       "width": w, "height": h})
        for i, mask, cid in zip(indices.tolist(), np.moveaxis(masks, 2, 0), class_ids):
            if not mask.any():
                _report(dataset, image_id, i, "empty_mask", "the mask has no pixel inside the image; it is not written "
                        "(fix or delete the annotation)")
                continue
            annotations.append(_annotation(len(annotations) + 1, image_id, int(cid), mask, crowd=False))
        for mask, cid in _ignore_regions(dataset, image_id, h, w):
            for c in ([cid] if cid > 0 else cat_ids):
                annotations.append(_annotation(len(annotations) + 1, image_id, int(c), mask, crowd=True))
    return {
        "info": {"description": f"converted by maskrcnn from {type(dataset).__name__}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(dataset: Dataset, path: str | os.PathLike[str], image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """Write ``dataset_to_coco(dataset)`` to ``path`` atomically (a temporary file, then rename).

    ``file_name`` entries are relative to the JSON's folder for images inside it, absolute
    otherwise. Returns the dict.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataError(f"{path}: folder {path.parent} does not exist; create it or choose another --out")
    coco = dataset_to_coco(dataset, image_ids, relative_to=path.parent)
    atomic_write_json(path, coco)
    return coco


def extract_images(dataset: Dataset, folder: str | os.PathLike[str]) -> int:
    """Write each image that has no ``path`` but ``dataset.encoded_image(image_id) -> (file name,
    bytes)`` into ``folder`` (created when needed) and set its ``path``; returns how many.

    Files keep their own name when it is unique, else ``<image index>_<name>``; a missing name
    becomes ``<image index>.<ext>`` from the bytes' format. Images that cannot be read are
    recorded in ``dataset.problems`` and left without a path.
    """
    encoded = getattr(dataset, "encoded_image", None)
    if encoded is None:
        return 0
    folder = Path(folder)
    used: set[str] = set()
    written = 0
    for image_id, info in enumerate(dataset.image_info):
        if info.get("path"):
            continue
        try:
            name, data = encoded(image_id)
        except DataError as exc:
            add_problem(dataset.problems, "unreadable_image", f"{exc}; the image is not written",
                        image=dataset.image_reference(image_id))
            continue
        base = Path(str(name).replace("\\", "/")).name
        if not base or base in (".", ".."):
            base = f"{image_id:06d}{_extension(data)}"
        if base in used:
            base = f"{image_id:06d}_{base}"
        used.add(base)
        atomic_write_bytes(folder / base, data)
        info["path"] = str(folder / base)
        written += 1
    return written


def _extension(data: bytes) -> str:
    """A file extension for encoded image bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".img"


# --------------------------------------------------------------------------- helpers


def _load_masks(dataset: Dataset, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(masks [H, W, K] bool, class ids [K], their indices [K] in load_mask)`` of one image, or None
    (problem recorded) when ``load_mask`` fails or breaks its contract.

    Instances with an undeclared class are dropped (and recorded)."""
    ref = dataset.image_reference(image_id)
    try:
        masks, class_ids = dataset.load_mask(image_id)
    except DataError as exc:
        add_problem(dataset.problems, "unreadable_mask", f"{exc}; the image is not written", image=ref)
        return None
    info = dataset.image_info[image_id]
    size = (int(info["height"]), int(info["width"])) if info.get("height") and info.get("width") else None
    loaded = check_load_mask(masks, class_ids, size, dataset.num_classes, list(dataset.class_names))
    fatal = [p for p in loaded.problems if p.kind != "undeclared_class"]
    if fatal or loaded.masks is None:
        add_problem(dataset.problems, fatal[0].kind if fatal else "mask_shape",
                    f"{ref}: {(fatal or loaded.problems)[0].message}; the image is not written", image=ref,
                    severity="error")
        return None
    for p in loaded.problems:
        _report(dataset, image_id, p.instance, "unknown_class", f"{p.message}; the instance is not written")
    keep = loaded.declared
    return loaded.masks[:, :, keep], loaded.class_ids[keep], np.flatnonzero(keep)


def _report(dataset: Dataset, image_id: int, index: int | None, kind: str, message: str) -> None:
    """Record a problem of instance ``index`` of an image, named by the loader's reference when it kept one."""
    ref = dataset.image_reference(image_id)
    label = None if index is None else (instance_ref(dataset.image_info[image_id], index) or f"instance {index}")
    where = f"{ref} {label}" if label else ref
    add_problem(dataset.problems, kind, f"{where}: {message}", image=ref, instance=label)


def _annotation(ann_id: int, image_id: int, class_id: int, mask: np.ndarray, *, crowd: bool) -> dict[str, Any]:
    rle = rle_codec.encode(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_id,
        "segmentation": rle,
        "area": float(rle_codec.area(rle)),
        "bbox": rle_codec.bbox(rle),
        "iscrowd": int(crowd),
    }


def _ignore_regions(dataset: Dataset, image_id: int, h: int, w: int) -> list[tuple[np.ndarray, int]]:
    """``[(mask [H, W] bool, internal class id or 0 for every class)]`` of an image's ignore regions."""
    loader = getattr(dataset, "load_ignore_instances", None)
    if loader is not None:
        masks, cids = loader(image_id)
        regions = [(masks[:, :, i], int(cids[i])) for i in range(masks.shape[2])]
    else:
        ignore = dataset.load_ignore_mask(image_id)
        regions = [] if ignore is None else [(np.asarray(ignore, dtype=bool), 0)]
    for mask, _ in regions:
        if mask.shape != (h, w):
            raise DataError(f"{dataset.image_reference(image_id)}: ignore mask is {mask.shape} but the masks are {(h, w)}; "
                            "return an [H, W] ignore mask of the image's size")
    return [(m, c) for m, c in regions if m.any()]


def _file_name(dataset: Dataset, image_id: int, relative_to: str | os.PathLike[str] | None) -> str:
    path = dataset.image_info[image_id].get("path")
    if not path:
        return dataset.image_reference(image_id)
    if relative_to is not None:
        absolute, base = Path(path).resolve(), Path(relative_to).resolve()
        if absolute.is_relative_to(base):
            return absolute.relative_to(base).as_posix()
        return absolute.as_posix()
    return Path(path).as_posix()

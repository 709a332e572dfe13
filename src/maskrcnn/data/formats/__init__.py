"""Loaders for annotation formats, each a lazy :class:`~maskrcnn.data.Dataset` subclass.

================  ===================================================  =========================
format            what it reads                                        class (module)
================  ===================================================  =========================
``coco``          COCO instances JSON (polygons, RLE, crowd regions)   ``CocoDataset`` (coco)
``via``           VGG Image Annotator 1.x/2.x JSON (balloon sample)    ``ViaDataset`` (via)
``labelme``       a folder of LabelMe JSON files                       ``LabelMeDataset`` (labelme)
``instance-masks``  ``<id>/images/`` + ``<id>/masks/`` (DSB 2018)      ``InstanceMaskDataset`` (maskfolder)
``label-images``  ``images/`` + ``labels/`` integer label images        ``LabelImageDataset`` (maskfolder)
``yolo``          ``images/`` + ``labels/*.txt`` YOLO polygons          ``YoloDataset`` (yolo)
``tfrecord``      TFRecords of ``tf.train.Example`` (TF OD API)          ``TfRecordDataset`` (tfrecord)
================  ===================================================  =========================

:func:`load_dataset` (``path``, optional ``format``, loader options) returns a prepared dataset;
:func:`detect_format` guesses the format of a path. Every loader keeps polygons, RLE strings or
file names in ``image_info`` and rasterises one image's masks in ``load_mask`` ->
``([H, W, N] bool, [N] int32 internal class ids)``. Coordinates are pixel-edge coordinates
(see :mod:`._shapes`). Class 0 is background; the format's classes become 1..K.

Problems
--------
Broken *files* (annotation file missing or not parseable, wrong top-level structure, a bad
option) raise :class:`~maskrcnn.errors.DataError`. Problems with single images or instances do
not stop loading: the loader skips (or clips) what it cannot use and appends to
``dataset.problems`` a dict ``{"image": image path or None, "instance": reference such as
"annotation 17", "region 2", "shape 0", "line 4", a mask file name, or None, "kind": str,
"message": one line naming the file and what was done, "file": the annotation file or None}``.
With ``strict=True`` the first problem raises a ``DataError`` instead. The kinds:

=====================  ======================================================  ===================
kind                   meaning                                                 action
=====================  ======================================================  ===================
missing_image          the image file does not exist                           image skipped
unreadable_image       the image header cannot be read (corrupt, not an image) image skipped
size_mismatch          annotated width/height differ from the image file       image skipped
duplicate_image        an image is listed twice (or a folder has several)      second one skipped
unknown_image          an annotation refers to an image id not in the file     annotation skipped
unlabelled_image       an image has no annotation/label file                   kept, background-only
orphan_annotation      an annotation/label file has no image                   ignored
invalid_annotation     malformed entry or file (missing field, not numbers)    entry skipped
degenerate_polygon     polygon with < 3 points or zero area, empty rect/circle shape skipped
unsupported_shape      point, line, polyline, box-only YOLO line               shape skipped
no_mask                COCO annotation without segmentation (box only)         annotation skipped
unknown_class          class not among the declared classes                    instance skipped
missing_class          class attribute/label missing or empty                  instance skipped
out_of_bounds          shape reaches > 1 px (YOLO: 1 %) outside the image      kept, clipped
outside_image          every shape of an instance lies outside the image       instance skipped
outside_root           COCO ``file_name`` with ``..`` leading above its folder  kept (read), warned
ignored_field          COCO ``bbox``/``area`` malformed (we use the mask's)     field ignored
no_annotations         COCO file without an ``annotations`` list               all background-only
mask_size_mismatch     RLE / mask file / label image size != image size        instance (label
                                                                               image: image) skipped
unreadable_mask        a mask or label file's header cannot be read            instance/image skipped
corrupt_record         TFRecord checksum wrong, truncated, not an Example      record (broken header:
                                                                               rest of file) skipped
missing_shard          a shard of a ``NAME-00000-of-00010`` set is missing     its records not loaded
=====================  ======================================================  ===================

An instance whose shapes are all skipped is skipped. Each problem has the severity
:mod:`maskrcnn.data.problems` gives its kind (a YOLO line of fewer than 3 points is an error:
its object is lost). Malformed values never reach pycocotools: polygon coordinates must be
finite numbers (then they are clipped to the image plus a margin) and RLEs are validated
(:func:`maskrcnn.data.rle.validate`). Not found at registration (only by loading masks, which is
the data checker's job, or by ``convert``, which drops them as ``empty_mask``): instances that
rasterise to no pixel, overlaps, pixel data corrupt beyond the header, channel counts.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

from ...compat.tfod.records import is_tfrecord_name, looks_like_tfrecord
from ...errors import DataError
from ..dataset import Dataset
from .coco import CocoDataset
from .labelme import LabelMeDataset
from .maskfolder import InstanceMaskDataset, LabelImageDataset
from .tfrecord import TfRecordDataset
from .via import ViaDataset
from .yolo import YoloDataset

__all__ = [
    "FORMATS",
    "detect_format",
    "load_dataset",
    "CocoDataset",
    "ViaDataset",
    "LabelMeDataset",
    "InstanceMaskDataset",
    "LabelImageDataset",
    "YoloDataset",
    "TfRecordDataset",
]

#: format name -> (Dataset class, name of its load method)
_LOADERS: dict[str, tuple[type[Dataset], str]] = {
    "coco": (CocoDataset, "load_coco"),
    "via": (ViaDataset, "load_via"),
    "labelme": (LabelMeDataset, "load_labelme"),
    "instance-masks": (InstanceMaskDataset, "load_instance_masks"),
    "label-images": (LabelImageDataset, "load_label_images"),
    "yolo": (YoloDataset, "load_yolo"),
    "tfrecord": (TfRecordDataset, "load_tfrecord"),
}
FORMATS: tuple[str, ...] = tuple(_LOADERS)
_ALIASES = {"tfrecords": "tfrecord", "tfod": "tfrecord", "dsb": "instance-masks", "instance_masks": "instance-masks", "label_images": "label-images", "vgg": "via"}
_ACCEPTED = ("coco (a COCO .json), via (a VIA .json), labelme (a folder of LabelMe .json), "
             "instance-masks (<id>/images + <id>/masks), label-images (images/ + labels/*.png|tif), "
             "yolo (images/ + labels/*.txt), tfrecord (.tfrecord/.record files + label_map.pbtxt)")
_PEEK_BYTES = 1 << 20


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format name (one of :data:`FORMATS`) of an annotation file or dataset folder.

    Raises :class:`DataError` naming the path and the accepted formats when nothing fits.
    """
    p = Path(path)
    if not p.exists():
        if any(c in str(path) for c in "*?[") and any(is_tfrecord_name(f) for f in glob.glob(str(path))):
            return "tfrecord"
        raise DataError(f"{p}: not found; pass an annotation file or a dataset folder")
    if p.is_file():
        if is_tfrecord_name(p) or looks_like_tfrecord(p):
            return "tfrecord"
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        if p.suffix.lower() == ".json":
            kind = _json_kind(p)
            if kind:
                return kind
        raise DataError(f"{p}: cannot tell the annotation format; accepted: {_ACCEPTED}; or pass --format")
    images, labels = p / "images", p / "labels"
    if images.is_dir() and labels.is_dir():
        if next(labels.rglob("*.txt"), None) is not None:
            return "yolo"
        if any(next(labels.rglob(f"*{ext}"), None) is not None for ext in (".png", ".tif", ".tiff")):
            return "label-images"
    if any((p / n).is_file() for n in ("data.yaml", "data.yml")):
        return "yolo"
    subdirs = sorted(d for d in p.iterdir() if d.is_dir())
    if any((d / "images").is_dir() and (d / "masks").is_dir() for d in subdirs[:50]):
        return "instance-masks"
    kinds = {_json_kind(f) for f in _json_files(p)[:20]}
    kinds.discard(None)
    if "labelme" in kinds:
        return "labelme"
    for kind in ("coco", "via"):
        if kind in kinds:
            return kind
    if any(f.is_file() and is_tfrecord_name(f) for f in p.iterdir()):
        return "tfrecord"
    raise DataError(f"{p}: cannot tell the annotation format; accepted: {_ACCEPTED}; or pass --format")


def load_dataset(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> Dataset:
    """Load and :meth:`~maskrcnn.data.Dataset.prepare` the dataset at ``path``.

    ``format`` is one of :data:`FORMATS` (detected when None); ``options`` go to the loader's
    ``load_*`` method (e.g. ``class_attribute="name"`` for VIA, ``class_ids=[1, 3]`` for COCO,
    ``strict=True`` for any). A folder given for ``coco``/``via`` must hold exactly one such JSON
    (directly or in ``annotations/``).
    """
    fmt = format if format is None else _ALIASES.get(format.lower(), format.lower())
    if fmt is not None and fmt not in _LOADERS:
        raise DataError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = fmt or detect_format(path)
    cls, method_name = _LOADERS[fmt]
    target = Path(path)
    if fmt in ("coco", "via") and target.is_dir():
        target = _single_json(target, fmt)
    dataset = cls()
    method = getattr(dataset, method_name)
    params = list(inspect.signature(method).parameters)[1:]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise DataError(f"format {fmt!r} has no option {unknown[0]!r}; its options are: {', '.join(params)}")
    _check_options(fmt, options)
    method(target, **options)
    dataset.prepare()
    return dataset


# --------------------------------------------------------------------------- helpers


def _check_options(fmt: str, options: dict[str, Any]) -> None:
    """One-line errors for loader options of the wrong type (they come from ``--option`` YAML too)."""
    names, ids, cmap = options.get("class_names"), options.get("class_ids"), options.get("class_map")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, int)) for n in names)):
        raise DataError(f"format {fmt!r}: class_names must be a list of names, e.g. [cat, dog]; got {names!r}")
    if ids is not None and (not isinstance(ids, (list, tuple))
                            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise DataError(f"format {fmt!r}: class_ids must be a list of integer category ids, e.g. [1, 3]; got {ids!r}")
    if cmap is not None and (not isinstance(cmap, dict) or not all(
            isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit()) for k in cmap)):
        raise DataError(f"format {fmt!r}: class_map must map label values to class names, e.g. {{1: cell, 2: nucleus}}; "
                        f"got {cmap!r}")


def _json_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.json"))
    if (folder / "annotations").is_dir():
        files += sorted((folder / "annotations").glob("*.json"))
    return files


def _single_json(folder: Path, fmt: str) -> Path:
    matches = [f for f in _json_files(folder) if _json_kind(f) == fmt]
    if len(matches) != 1:
        found = ", ".join(f.name for f in matches) or "none"
        raise DataError(f"{folder}: expected exactly one {fmt} JSON file, found {found}; pass the file itself")
    return matches[0]


def _json_kind(path: Path) -> str | None:
    """coco / via / labelme from the keys of a JSON file (peeking at its start, parsing small files)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PEEK_BYTES).decode("utf-8", errors="ignore")
    except OSError:
        return None
    if '"_via_img_metadata"' in head or (re.search(r'"filename"\s*:', head) and re.search(r'"regions"\s*:', head)):
        return "via"
    if re.search(r'"shapes"\s*:', head) and re.search(r'"imagePath"\s*:', head):
        return "labelme"
    if re.search(r'"images"\s*:\s*\[', head) and re.search(r'"(annotations|categories|file_name)"\s*:', head):
        return "coco"
    if len(head) < _PEEK_BYTES:  # small file, fully read: the keys above are absent
        return None
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and "categories" in data:
        return "coco"
    if isinstance(data, dict) and ("_via_img_metadata" in data or any(isinstance(v, dict) and "regions" in v for v in data.values())):
        return "via"
    return None

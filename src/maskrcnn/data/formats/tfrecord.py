"""TFRecord files of ``tf.train.Example`` (TF Object Detection API), read without TensorFlow.

``path`` is one ``.tfrecord``/``.record`` file, one shard ``NAME-00000-of-00010`` (its sibling
shards are read too), a glob pattern (``train.record-?????-of-00010``) or a folder of such
files. The classes come from a label map (:mod:`maskrcnn.compat.tfod.labelmap`): the
``label_map`` option, else ``label_map.pbtxt`` next to the records, else the one
``*label_map*.pbtxt`` there. Label-map ids are the source class ids (gaps kept).

Features read from each Example (the names of TF OD API's ``create_*_tf_record.py`` tools)::

    image/encoded                   bytes   the image (PNG, JPEG ...), decoded in load_image
    image/filename                  bytes   name used in messages and by ``convert``
    image/height, image/width       int64   checked against the encoded image's header
    image/object/class/label        int64   [N] label-map ids (or else:)
    image/object/class/text         bytes   [N] label-map names
    image/object/bbox/xmin|ymin|xmax|ymax   float [N] normalised to [0, 1]; only checked:
                                            boxes are recomputed from the masks
    image/object/is_crowd           int64   [N] optional: 1 makes the object an ignore region
                                            (COCO's iscrowd; ``load_ignore_instances``)
    image/object/mask               bytes [N] one PNG per instance, or bytes [1] of N*H*W
                                    uint8, or float [N*H*W] (TF's NUMERICAL_MASKS); a pixel
                                    is inside when its value is > 0, as in TF's decoder

Only the record offsets and the per-object classes are kept in memory; ``load_image`` and
``load_mask`` read their record again. Problems (see :mod:`maskrcnn.data.formats`) name the
file and the record index: ``corrupt_record`` (checksum, truncation, not an Example: the
record, or for a broken header the rest of the file, is skipped), ``invalid_annotation``
(feature of the wrong type, mask count or size not matching the objects: the image is
skipped), ``unknown_class``, ``no_mask``, ``mask_size_mismatch``, ``unreadable_mask``,
``ignored_field`` (a bbox outside [0, 1] or inverted), ``missing_shard``.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...compat.tfod.example import ExampleError, decode_example
from ...compat.tfod.labelmap import LabelMap, read_label_map
from ...compat.tfod.records import is_tfrecord_name, iter_records, looks_like_tfrecord, read_record
from ...errors import DataError
from ..images import PNG_MAGIC, decode_binary_mask, decode_image, encoded_image_size
from ._base import AnnotationDataset, declared_size

__all__ = ["TfRecordDataset", "tfrecord_files", "find_label_map"]

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})$")
_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
#: Normalised box coordinates may exceed [0, 1] by this much before ``ignored_field`` is reported.
BOX_TOLERANCE = 1e-3


def tfrecord_files(path: str | os.PathLike[str]) -> tuple[list[Path], list[int]]:
    """``(files, missing shard indices)`` named by ``path`` (see the module docstring)."""
    p = Path(path)
    text = str(path)
    if not p.exists():
        if any(c in text for c in "*?["):
            files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
            if files:
                return files, []
        raise DataError(f"{p}: not found; pass a .tfrecord/.record file, a shard, a glob pattern or a folder of them")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_tfrecord_name(f))
        files = files or sorted(f for f in p.iterdir() if f.is_file() and looks_like_tfrecord(f))
        if not files:
            raise DataError(f"{p}: no TFRecord files (.tfrecord, .record or NAME-00000-of-00010) in this folder")
        return files, []
    m = _SHARD.match(p.name)
    if not m:
        return [p], []
    total = int(m.group("total"))
    found = {int(s.group("index")): f for f in p.parent.iterdir()
             if (s := _SHARD.match(f.name)) and s.group("stem") == m.group("stem") and int(s.group("total")) == total}
    missing = [i for i in range(total) if i not in found]
    return [found[i] for i in sorted(found)], missing


def find_label_map(files: list[Path], path: str | os.PathLike[str]) -> Path:
    """The label map next to the records: ``label_map.pbtxt``, else the one ``*label_map*.pbtxt``."""
    folder = Path(path) if Path(path).is_dir() else files[0].parent
    default = folder / "label_map.pbtxt"
    if default.is_file():
        return default
    candidates = sorted(folder.glob("*label_map*.pbtxt"))
    if len(candidates) == 1:
        return candidates[0]
    found = f" (found {', '.join(c.name for c in candidates)})" if candidates else ""
    raise DataError(f"{path}: no label map{found}; put label_map.pbtxt next to the TFRecords or pass "
                    "--option label_map=FILE.pbtxt (maskrcnn convert) / label_map=... (load_dataset)")


class TfRecordDataset(AnnotationDataset):
    """TFRecords of ``tf.train.Example`` as a Matterport Dataset; see the module docstring."""

    source = "tfrecord"

    def load_tfrecord(
        self,
        path: str | os.PathLike[str],
        label_map: str | os.PathLike[str] | None = None,
        *,
        verify_images: bool = True,
        strict: bool = False,
    ) -> None:
        """Register the classes of the label map and every usable record of ``path``.

        Args:
            path: a TFRecord file, a shard (its siblings are read too), a glob pattern or a folder.
            label_map: the ``.pbtxt`` label map; by default found next to the records.
            verify_images: read each image's and PNG mask's header and compare the sizes with
                ``image/height``/``image/width`` (``size_mismatch``, ``mask_size_mismatch``).
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        files, missing = tfrecord_files(path)
        lm_path = Path(label_map) if label_map is not None else find_label_map(files, path)
        self.label_map: LabelMap = read_label_map(lm_path)
        for item in self.label_map.items:
            self.add_class(self.source, item.id, item.class_name)
        for i in missing:
            self.report("missing_shard", f"{files[0]}: shard {i:05d} of this set is missing; its records are not "
                        "loaded (copy it next to the others)", file=files[0])
        self._cache: tuple[int, dict[str, list[Any]]] | None = None
        for file in files:
            try:
                for entry in iter_records(file):
                    if entry.data is None:
                        rest = "it and the rest of the file are skipped" if entry.fatal else "it is skipped"
                        self.report("corrupt_record", f"{file}: record {entry.index}: {entry.problem}; {rest}",
                                    instance=f"record {entry.index}", file=file)
                        continue
                    self._register(file, entry.index, entry.offset, entry.data, verify_images)
            except OSError as exc:
                raise DataError(f"{file}: cannot read the TFRecord file ({exc.strerror or exc})") from None

    # ----------------------------------------------------------------- registration
    def _register(self, file: Path, index: int, offset: int, data: bytes, verify: bool) -> None:
        where = f"{file}: record {index}"
        try:
            ex = decode_example(data)
        except ExampleError as exc:
            self.report("corrupt_record", f"{where}: {exc}; it is skipped", instance=f"record {index}", file=file)
            return
        kinds = _check_types(ex)
        if kinds:
            self.report("invalid_annotation", f"{where}: {kinds}; the image is skipped (write it as TF OD API does)",
                        instance=f"record {index}", file=file)
            return
        encoded = ex.get("image/encoded") or [b""]
        file_name = (ex.get("image/filename") or [b""])[0].decode("utf-8", errors="replace")
        name = _reference(file, index, file_name)
        if len(encoded) != 1 or not encoded[0]:
            self.report("invalid_annotation", f"{where}: no image/encoded (the encoded image bytes); the record is skipped",
                        image=name, file=file)
            return
        size = self._size(ex, encoded[0], name, where, file, verify)
        if size is None:
            return
        h, w = size
        objects = self._objects(ex, name, where, file)
        if objects is None:
            return
        mask_kind = self._mask_kind(ex, len(objects), h, w, name, where, file)
        if mask_kind is None:
            return
        self._check_boxes(ex, len(objects), name, where, file)
        crowd = self._crowd(ex, len(objects), name, where, file)
        instances, ignore = [], []
        for k, class_id in enumerate(objects):
            ref = f"object {k}"
            if class_id is None:
                continue
            if mask_kind == "none":
                self.report("no_mask", f"{where} ({file_name or 'no filename'}) {ref}: no image/object/mask (a box only); "
                            "Mask R-CNN needs masks, it is skipped", image=name, instance=ref, file=file)
                continue
            if mask_kind == "png" and verify and not self._png_fits(ex["image/object/mask"][k], h, w, name, where, ref, file):
                continue
            (ignore if crowd[k] else instances).append({"class_id": class_id, "ref": ref, "index": k})
        self.add_image(self.source, f"{file.name}:{index}", None, height=h, width=w, instances=instances, ignore=ignore,
                       record_file=str(file), record_offset=offset, record_index=index, file_name=file_name,
                       mask_kind=mask_kind, num_objects=len(objects), reference=name, annotation_file=str(file))

    def _size(self, ex: dict[str, list[Any]], encoded: bytes, name: str, where: str, file: Path,
              verify: bool) -> tuple[int, int] | None:
        one_value = {k: ex[k][0] for k in ("image/height", "image/width") if len(ex.get(k) or []) == 1}
        declared = declared_size(one_value, "image/height", "image/width")
        if declared is not None and not verify:
            return declared
        try:
            actual = encoded_image_size(encoded, name)
        except DataError as exc:
            self.report("unreadable_image", f"{where}: {exc}; the image is skipped", image=name, file=file)
            return None
        if declared is not None and declared != actual:
            self.report("size_mismatch", f"{where}: image/encoded is {actual[1]}x{actual[0]} (WxH) but image/width, "
                        f"image/height say {declared[1]}x{declared[0]}; the image is skipped (fix the record)",
                        image=name, file=file)
            return None
        return actual

    def _objects(self, ex: dict[str, list[Any]], name: str, where: str, file: Path) -> list[int | None] | None:
        """The label-map id of each object (None: unknown class, reported), or None (image skipped)."""
        labels = ex.get("image/object/class/label")
        texts = [t.decode("utf-8", errors="replace") for t in ex.get("image/object/class/text") or []]
        if labels and texts and len(labels) != len(texts):
            self.report("invalid_annotation", f"{where}: {len(labels)} class/label values but {len(texts)} class/text "
                        "values; the image is skipped (one of each per object)", image=name, file=file)
            return None
        if not labels and not texts:
            boxes = len(ex.get("image/object/bbox/xmin") or [])
            masks = len(ex.get("image/object/mask") or [])
            if boxes or masks:
                self.report("missing_class", f"{where}: objects without image/object/class/label or /text; the image "
                            "is skipped (write the label-map id of each object)", image=name, file=file)
                return None
            return []
        ids: list[int | None] = []
        known = ", ".join(str(i) for i in self.label_map.ids)
        for k in range(len(labels or texts)):
            ref = f"object {k}"
            if labels:
                cid = int(labels[k])
                if self.label_map.by_id(cid) is None:
                    hint = "0 is background, objects need a class id" if cid == 0 else "add it to the label map"
                    self.report("unknown_class", f"{where} {ref}: class/label {cid} is not in {self.label_map.file} "
                                f"(ids {known}); it is skipped ({hint})", image=name, instance=ref, file=file)
                    ids.append(None)
                    continue
                ids.append(cid)
            else:
                found = self.label_map.id_of(texts[k])
                if found is None:
                    self.report("unknown_class", f"{where} {ref}: class/text {texts[k]!r} is not a name in "
                                f"{self.label_map.file}; it is skipped (add it to the label map)",
                                image=name, instance=ref, file=file)
                ids.append(found)
        return ids

    def _mask_kind(self, ex: dict[str, list[Any]], n: int, h: int, w: int, name: str, where: str, file: Path) -> str | None:
        """``png``, ``raw_bytes``, ``raw_float`` or ``none``; None (image skipped) when the masks do not fit."""
        masks = ex.get("image/object/mask")
        if not masks:
            return "none"
        if n == 0:
            self.report("invalid_annotation", f"{where}: image/object/mask holds masks but the record has no objects; "
                        "the image is skipped", image=name, file=file)
            return None
        if isinstance(masks[0], bytes):
            if len(masks) == n and not (n == 1 and len(masks[0]) == h * w and masks[0][:8] != PNG_MAGIC):
                return "png"
            if len(masks) == 1 and len(masks[0]) == n * h * w:
                return "raw_bytes"
            self.report("invalid_annotation", f"{where}: image/object/mask has {len(masks)} entries for {n} objects; "
                        f"expected {n} PNG masks (or one {n}x{h}x{w} byte string); the image is skipped",
                        image=name, file=file)
            return None
        if len(masks) == n * h * w:
            return "raw_float"
        self.report("invalid_annotation", f"{where}: image/object/mask has {len(masks)} float values; {n} objects of "
                    f"{w}x{h} need {n}x{h}x{w} = {n * h * w}; the image is skipped", image=name, file=file)
        return None

    def _png_fits(self, data: bytes, h: int, w: int, name: str, where: str, ref: str, file: Path) -> bool:
        try:
            mh, mw = encoded_image_size(data, f"{where} {ref} mask")
        except DataError as exc:
            self.report("unreadable_mask", f"{exc}; the object is skipped", image=name, instance=ref, file=file)
            return False
        if (mh, mw) != (h, w):
            self.report("mask_size_mismatch", f"{where} {ref}: mask is {mw}x{mh} but the image is {w}x{h} (WxH); the "
                        "object is skipped (re-export the mask at the image size)", image=name, instance=ref, file=file)
            return False
        return True

    def _crowd(self, ex: dict[str, list[Any]], n: int, name: str, where: str, file: Path) -> list[bool]:
        """``image/object/is_crowd`` per object (``create_coco_tf_record.py`` writes it): crowd
        objects become ignore regions, as COCO's ``iscrowd``; a list of the wrong length is ignored."""
        values = ex.get("image/object/is_crowd")
        if not values:
            return [False] * n
        if len(values) != n:
            self.report("ignored_field", f"{where}: image/object/is_crowd has {len(values)} values for {n} objects; it is "
                        "ignored (every object is an instance)", image=name, file=file)
            return [False] * n
        return [bool(v) for v in values]

    def _check_boxes(self, ex: dict[str, list[Any]], n: int, name: str, where: str, file: Path) -> None:
        """Report boxes that are not normalised ``0 <= min <= max <= 1`` (they are not used: masks give the boxes)."""
        cols = [ex.get(f"image/object/bbox/{k}") for k in _BOX_KEYS]
        if all(c is None for c in cols):
            return
        lengths = [len(c or []) for c in cols]
        if any(length != n for length in lengths):
            self.report("ignored_field", f"{where}: bbox lists have {'/'.join(map(str, lengths))} values (xmin/ymin/xmax/"
                        f"ymax) for {n} objects; the boxes are ignored (computed from the masks)", image=name, file=file)
            return
        t = BOX_TOLERANCE
        for k, (x1, y1, x2, y2) in enumerate(zip(*cols)):
            if not all(-t <= v <= 1 + t for v in (x1, y1, x2, y2)) or x1 > x2 or y1 > y2:
                self.report("ignored_field", f"{where} object {k}: bbox ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not normalised "
                            "xmin <= xmax, ymin <= ymax in [0, 1] (pixel coordinates?); it is ignored (the box comes "
                            "from the mask)", image=name, instance=f"object {k}", file=file)

    # ----------------------------------------------------------------- loading
    def image_reference(self, image_id: int) -> str:
        """``train.record#12 (img_0012.jpg)``: the file, the record index and the image's file name."""
        return str(self.image_info[image_id].get("reference") or super().image_reference(image_id))

    def _example(self, image_id: int) -> dict[str, list[Any]]:
        if self._cache is not None and self._cache[0] == image_id:
            return self._cache[1]
        info = self.image_info[image_id]
        file, index = info["record_file"], info["record_index"]
        try:
            entry = read_record(file, int(info["record_offset"]), int(index))
        except OSError as exc:
            raise DataError(f"{file}: cannot read record {index} ({exc.strerror or exc})") from None
        if entry.data is None:
            raise DataError(f"{file}: record {index}: {entry.problem} (the file changed since it was loaded); reload it")
        try:
            ex = decode_example(entry.data)
        except ExampleError as exc:
            raise DataError(f"{file}: record {index}: {exc} (the file changed since it was loaded); reload it") from None
        self._cache = (image_id, ex)
        return ex

    def encoded_image(self, image_id: int) -> tuple[str, bytes]:
        """``(image/filename, image/encoded)`` of an image: what ``convert`` writes next to the COCO JSON."""
        info = self.image_info[image_id]
        return str(info.get("file_name") or ""), bytes(self._example(image_id)["image/encoded"][0])

    def load_image(self, image_id: int) -> np.ndarray:
        """The decoded ``image/encoded``: ``[H, W, C]`` uint8/uint16 (see :func:`~maskrcnn.data.images.decode_image`)."""
        return decode_image(self.encoded_image(image_id)[1], self.image_reference(image_id))

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``[H, W, N]`` bool (value > 0 is inside) and internal class ids ``[N]`` of the kept objects."""
        return self._masks(image_id, "instances")

    def load_ignore_instances(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The crowd objects (``image/object/is_crowd``) one by one: ``[H, W, M]`` bool and internal class ids ``[M]``."""
        return self._masks(image_id, "ignore")

    def _masks(self, image_id: int, which: str) -> tuple[np.ndarray, np.ndarray]:
        info = self.image_info[image_id]
        h, w = int(info["height"]), int(info["width"])
        entries = info.get(which) or []
        masks = np.zeros((h, w, len(entries)), dtype=bool)
        class_ids = np.array([self._internal_class_id(i["class_id"]) for i in entries], dtype=np.int32)
        if not entries:
            return masks, class_ids
        values = self._example(image_id)["image/object/mask"]
        kind, n = info["mask_kind"], int(info["num_objects"])
        if kind == "raw_float":
            stack = np.asarray(values, dtype=np.float32).reshape(n, h, w) > 0
        elif kind == "raw_bytes":
            stack = np.frombuffer(values[0], dtype=np.uint8).reshape(n, h, w) > 0
        else:
            stack = None
        for j, inst in enumerate(entries):
            k = inst["index"]
            if stack is not None:
                masks[:, :, j] = stack[k]
                continue
            m = decode_binary_mask(values[k], f"{self.image_reference(image_id)} {inst['ref']} mask")
            if m.shape != (h, w):
                raise DataError(f"{self.image_reference(image_id)} {inst['ref']}: mask is {m.shape[1]}x{m.shape[0]} but "
                                f"the image is {w}x{h} (WxH); re-export the mask at the image size")
            masks[:, :, j] = m
        return masks, class_ids

def _reference(file: Path, index: int, file_name: str) -> str:
    return f"{file}#{index}" + (f" ({file_name})" if file_name else "")


#: Feature -> the value type TF OD API writes (bytes, float, int).
_TYPES: dict[str, type] = {
    "image/encoded": bytes, "image/filename": bytes, "image/height": int, "image/width": int,
    "image/object/class/label": int, "image/object/class/text": bytes, "image/object/is_crowd": int,
    **{f"image/object/bbox/{k}": float for k in _BOX_KEYS},
}
_TYPE_NAMES = {bytes: "bytes_list", float: "float_list", int: "int64_list"}


def _check_types(ex: dict[str, list[Any]]) -> str | None:
    """What is wrong with the feature types of an Example (None when they are as TF OD API writes them)."""
    for key, kind in _TYPES.items():
        values = ex.get(key)
        if values and not isinstance(values[0], kind):
            got = _TYPE_NAMES.get(type(values[0]), type(values[0]).__name__)
            return f"{key} is a {got}, expected a {_TYPE_NAMES[kind]}"
    masks = ex.get("image/object/mask")
    if masks and not isinstance(masks[0], (bytes, float)):
        return "image/object/mask is an int64_list, expected PNG bytes or floats"
    return None

"""LabelMe JSON: a folder of ``.json`` files, one per image.

Each file has ``imagePath`` (relative to the JSON's folder), ``imageHeight``/``imageWidth`` and
``shapes``: ``{"label", "points": [[x, y], ...], "shape_type", "group_id"}`` in pixel-edge
coordinates. Supported shape types:

* ``polygon`` (also when ``shape_type`` is missing): at least 3 points;
* ``rectangle``: two opposite corners; ``circle``: centre and a point on the circle;
* ``mask``: a base64 PNG of the box from ``points[0]`` to ``points[1]``.

``point``, ``line``, ``linestrip`` and ``points`` have no area (``unsupported_shape``).
Shapes sharing a label and a non-null ``group_id`` form one instance (their union); shapes
without ``group_id`` are instances of their own. Shapes labelled ``__ignore__`` become ignore
regions (``load_ignore_mask``). Classes are ``class_names`` when given, else the sorted set of
labels. When the image file cannot be found but the JSON embeds it (``imageData``), the
embedded copy is used.
"""

from __future__ import annotations

import base64
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..images import IMAGE_EXTENSIONS, decode_image
from . import _shapes
from ._base import AnnotationDataset, _where, declared_size, read_json

__all__ = ["LabelMeDataset", "IGNORE_LABEL"]

#: Shapes with this label are ignore regions, not instances (LabelMe's own convention).
IGNORE_LABEL = "__ignore__"


class LabelMeDataset(AnnotationDataset):
    """A folder of LabelMe JSON files as a Matterport Dataset; see the module docstring."""

    source = "labelme"

    def load_labelme(
        self,
        path: str | os.PathLike[str],
        class_names: list[str] | None = None,
        *,
        verify_images: bool = True,
        strict: bool = False,
    ) -> None:
        """Register every LabelMe JSON under ``path`` (a folder, searched recursively, or one file).

        Args:
            path: folder of LabelMe JSON files, or a single file.
            class_names: the declared classes (other labels: ``unknown_class``, skipped).
            verify_images: check ``imageHeight``/``imageWidth`` against the image file's header.
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        root = Path(path)
        parsed = self._read_files(root)
        if class_names is not None:
            names = [str(n) for n in class_names]
        else:
            names = sorted({str(s.get("label")) for _, d in parsed for s in d["shapes"]
                            if isinstance(s, dict) and s.get("label") not in (None, "", IGNORE_LABEL)})
        self.register_classes(names)
        index = {n: i + 1 for i, n in enumerate(names)}
        for file, data in parsed:
            self._add_labelme_image(root, file, data, names, index, verify_images)

    # ----------------------------------------------------------------- loading steps
    def _read_files(self, root: Path) -> list[tuple[Path, dict[str, Any]]]:
        """``(file, content)`` of every LabelMe JSON under ``root`` (other JSON files are reported and skipped)."""
        if root.is_dir():
            files = sorted(p for p in root.rglob("*.json") if p.is_file())
        elif root.is_file():
            files = [root]
        else:
            raise DataError(f"{root}: not found; pass a folder of LabelMe .json files")
        parsed = []
        for file in files:
            try:
                data = read_json(file, "LabelMe file")
            except DataError as exc:
                self.report("invalid_annotation", f"{exc}; the file is skipped", file=file)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or "imagePath" not in data:
                self.report("invalid_annotation", f"{file}: not a LabelMe file (no 'shapes' list or 'imagePath'); it is skipped", file=file)
                continue
            parsed.append((file, data))
        if not parsed:
            raise DataError(f"{root}: no LabelMe .json files (with 'shapes' and 'imagePath') found; check the folder")
        return parsed

    def _add_labelme_image(self, root: Path, file: Path, data: dict[str, Any], names: list[str], index: dict[str, int],
                           verify_images: bool) -> None:
        """Register the image of one LabelMe file with its instances and ignore regions."""
        image_path, embedded = self._image_path(file, data)
        declared = declared_size(data, "imageHeight", "imageWidth")
        if embedded:
            size = self._embedded_size(file, data, declared)
        else:
            size = self.find_image_size(image_path, declared, file=file, verify=verify_images)
        if size is None:
            return
        groups = self._groups(file, data["shapes"], str(image_path), size, names, index)
        instances = [g for g in groups if g["class_id"] is not None]
        ignore = [g for g in groups if g["class_id"] is None]
        self.add_image(self.source, str(file.relative_to(root) if root.is_dir() else file.name), image_path,
                       height=size[0], width=size[1], instances=instances, ignore=ignore, annotation_file=str(file),
                       embedded_in=str(file) if embedded else None)

    def _groups(self, file: Path, shapes: list[Any], image: str, size: tuple[int, int], names: list[str],
                index: dict[str, int]) -> list[dict[str, Any]]:
        """The usable shapes joined into instances: one per ``(label, group_id)``, or per shape without
        ``group_id``; ``class_id`` None for ignore regions."""
        h, w = size
        groups: dict[Any, dict[str, Any]] = {}
        for k, s in enumerate(shapes):
            ref = f"shape {k}"
            shape = self._shape(s, file=file, image=image, ref=ref)
            if shape is None:
                continue
            label = str(s.get("label") or "")
            if label != IGNORE_LABEL and label not in index:
                self.report("missing_class" if not label else "unknown_class",
                            f"{file}: {_where(image, ref)}: label {label!r} is not one of {names}; "
                            "the shape is skipped (add it to class_names or fix the label)",
                            image=image, instance=ref, file=file)
                continue
            if not self.check_bounds([shape], h, w, file=file, image=image, instance=ref):
                continue
            gid = s.get("group_id")
            if gid is not None and not isinstance(gid, (int, str)):
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: group_id {gid!r} is not an "
                            "integer; the shape is skipped", image=image, instance=ref, file=file)
                continue
            key = (label, gid) if gid is not None else ("", k)
            if key not in groups:
                groups[key] = {"class_id": None if label == IGNORE_LABEL else index[label], "shapes": [], "ref": ref}
            groups[key]["shapes"].append(shape)
        return list(groups.values())

    def load_image(self, image_id: int) -> np.ndarray:
        """The image file, or the copy embedded in the JSON (``imageData``) when the file is missing."""
        info = self.image_info[image_id]
        if info.get("embedded_in"):
            data = read_json(Path(info["embedded_in"]), "LabelMe file")
            return decode_image(base64.b64decode(data["imageData"]), f"{info['embedded_in']} (imageData)")
        return super().load_image(image_id)

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _image_path(file: Path, data: dict[str, Any]) -> tuple[Path, bool]:
        rel = str(data.get("imagePath") or "").replace("\\", "/")
        candidates = [file.parent / rel, file.parent / Path(rel).name] if rel else []
        candidates += [file.with_suffix(ext) for ext in IMAGE_EXTENSIONS]
        for c in candidates:
            if c.is_file():
                return c, False
        path = candidates[0] if rel else file.with_suffix(".png")
        return path, bool(data.get("imageData"))

    def _embedded_size(self, file: Path, data: dict[str, Any], declared: tuple[int, int] | None) -> tuple[int, int] | None:
        try:
            arr = decode_image(base64.b64decode(data["imageData"]), f"{file} (imageData)")
        except (DataError, ValueError, TypeError) as exc:
            reason = str(exc) if isinstance(exc, DataError) else "not base64"
            self.report("unreadable_image", f"{file}: the image file is missing and imageData cannot be decoded ({reason}); "
                        "the image is skipped (put the image next to the JSON or re-save it in LabelMe)",
                        image=str(file), file=file)
            return None
        size = (int(arr.shape[0]), int(arr.shape[1]))
        if declared is not None and declared != size:
            self.report("size_mismatch", f"{file}: imageData is {size[1]}x{size[0]} but imageWidth x imageHeight says "
                        f"{declared[1]}x{declared[0]}; the image is skipped", image=str(file), file=file)
            return None
        return size

    def _shape(self, s: Any, *, file: Path, image: str, ref: str) -> dict[str, Any] | None:
        if not isinstance(s, dict):
            self.report("invalid_annotation", f"{file}: {ref} is not an object; it is skipped", image=image, instance=ref, file=file)
            return None
        kind = s.get("shape_type") or "polygon"
        points = s.get("points") or []
        try:
            pts = [(float(p[0]), float(p[1])) for p in points]
        except (TypeError, ValueError, IndexError, KeyError, OverflowError):
            self.report("invalid_annotation", f"{file}: {_where(image, ref)}: 'points' must be [[x, y], ...]; it is skipped",
                        image=image, instance=ref, file=file)
            return None
        if self.numbers([v for p in pts for v in p], "points", file=file, image=image, instance=ref) is None:
            return None
        if kind == "polygon":
            flat = self.check_polygon([v for p in pts for v in p], file=file, image=image, instance=ref)
            return None if flat is None else {"type": "polygon", "points": flat}
        if kind in ("rectangle", "circle", "mask") and len(pts) < 2:
            self.report("invalid_annotation", f"{file}: {_where(image, ref)}: {kind} needs 2 points, has {len(pts)}; it is skipped",
                        image=image, instance=ref, file=file)
            return None
        if kind == "rectangle":
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
                self.report("degenerate_polygon", f"{file}: {_where(image, ref)}: rectangle of zero width or height; it is skipped",
                            image=image, instance=ref, file=file)
                return None
            return _shapes.rectangle(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
        if kind == "circle":
            (cx, cy), (px, py) = pts[0], pts[1]
            r = math.hypot(px - cx, py - cy)
            if r <= 0:
                self.report("degenerate_polygon", f"{file}: {_where(image, ref)}: circle of radius 0; it is skipped",
                            image=image, instance=ref, file=file)
                return None
            return _shapes.ellipse(cx, cy, r, r)
        if kind == "mask":
            if not s.get("mask"):
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: mask shape without 'mask' data; it is skipped",
                            image=image, instance=ref, file=file)
                return None
            bitmap = {"type": "bitmap", "x": int(round(pts[0][0])), "y": int(round(pts[0][1])), "png": s["mask"]}
            try:
                _shapes.rasterize([bitmap], 1, 1)  # decodes the PNG once: a broken one is reported now
            except Exception as exc:  # noqa: BLE001 - base64, PNG and Pillow errors alike
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: 'mask' is not a base64 PNG "
                            f"({type(exc).__name__}); the shape is skipped (re-save it in LabelMe)",
                            image=image, instance=ref, file=file)
                return None
            return bitmap
        self.report("unsupported_shape", f"{file}: {_where(image, ref)}: shape_type {kind!r} has no area (use polygon, rectangle, "
                    "circle or mask); it is skipped", image=image, instance=ref, file=file)
        return None

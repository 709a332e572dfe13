"""Shared machinery of the annotation-format loaders.

:class:`AnnotationDataset` is a :class:`~maskrcnn.data.Dataset` whose images carry their
instances as vector shapes (see :mod:`._shapes`) in ``image_info[i]["instances"]`` and rasterises
them only in :meth:`load_mask`. It records non-fatal problems in ``self.problems`` (or raises
them in ``strict`` mode) and offers the small helpers every loader needs: reading a JSON file,
resolving an image file and its size, registering classes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..dataset import Dataset
from ..images import image_size
from ..problems import SEVERITY, Severity, add_problem
from ._shapes import Shape, polygon_area, rasterize, shape_bounds

__all__ = ["AnnotationDataset", "read_json", "declared_size", "OUT_OF_BOUNDS_TOLERANCE"]

#: Vertices may lie this many pixels outside the image before ``out_of_bounds`` is reported.
OUT_OF_BOUNDS_TOLERANCE = 1.0


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, raising a one-line :class:`DataError` naming it when that fails."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; check the path")
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise DataError(f"{path}: not valid JSON ({detail}); re-export the {what}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a {what}; re-export the {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def declared_size(entry: dict[str, Any], height_key: str, width_key: str) -> tuple[int, int] | None:
    """The ``(height, width)`` an annotation file declares for an image (``entry[height_key]``,
    ``entry[width_key]``), or None when either is missing, not an integer or not positive."""
    try:
        h, w = int(entry[height_key]), int(entry[width_key])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _where(image: str | None, instance: Any) -> str:
    """``"photo.jpg region 2"``: the image's file name and the instance reference, for messages."""
    name = Path(image).name if image else ""
    return f"{name} {instance}".strip() if instance is not None else name


class AnnotationDataset(Dataset):
    """A Dataset whose ``image_info`` entries hold ``height``, ``width``, ``instances`` and ``ignore``.

    ``instances`` and ``ignore`` are lists of ``{"class_id": source class id or None, "shapes":
    [shape, ...], "ref": instance reference}``; each instance's mask is the union of its shapes.
    ``class_id`` None in ``ignore`` means the region is ignored for every class.
    """

    #: Source name used with ``add_class`` / ``add_image`` (no dots).
    source = "annotations"

    def __init__(self, class_map: Any = None) -> None:
        super().__init__(class_map)
        self.strict = False
        self._class_lookup: dict[Any, int] = {}

    # ----------------------------------------------------------------- problems
    def report(self, kind: str, message: str, *, image: str | None = None, instance: Any = None,
               file: str | os.PathLike[str] | None = None, severity: Severity | None = None) -> None:
        """Record a non-fatal problem in ``self.problems`` (raise it as a :class:`DataError` when
        ``self.strict``; info-level notes are never raised).

        ``message`` is one line naming the file (and instance) and saying what was done about it.
        """
        entry_severity = severity or SEVERITY.get(kind, "warning")
        if self.strict and entry_severity != "info":
            raise DataError(f"{message} (strict mode: fix it, or load without strict=True to skip it)")
        add_problem(self.problems, kind, message, image=image, instance=instance, file=file, severity=severity)

    # ----------------------------------------------------------------- registration helpers
    def register_classes(self, names: list[str], first_id: int = 1) -> None:
        """``add_class`` for ``names`` with source ids ``first_id, first_id + 1, ...``."""
        for i, name in enumerate(names):
            self.add_class(self.source, first_id + i, str(name))

    def find_image_size(self, path: Path, declared: tuple[int, int] | None, *, file: Path,
                        verify: bool = True) -> tuple[int, int] | None:
        """Size ``(H, W)`` of an image, or None (problem recorded) when it cannot be used.

        Reports ``missing_image`` when the file does not exist, ``unreadable_image`` when its
        header cannot be read and ``size_mismatch`` when ``declared`` disagrees with the file.
        Without ``verify`` a declared size is trusted and the file is not opened.
        """
        where = str(path)
        if not path.is_file():
            self.report("missing_image", f"{file}: image {path} not found; the image is skipped (fix the path or remove its entry)",
                        image=where, file=file)
            return None
        if declared is not None and not verify:
            return declared
        try:
            actual = image_size(path)
        except DataError as exc:
            self.report("unreadable_image", f"{exc}; the image is skipped", image=where, file=file)
            return None
        if declared is not None and tuple(declared) != tuple(actual):
            hint = (" (the file is EXIF-rotated: the annotations were probably made on the unrotated pixels)"
                    if tuple(declared) == tuple(actual)[::-1] else "")
            self.report("size_mismatch",
                        f"{file}: image {path} is {actual[1]}x{actual[0]} (WxH) but the annotation says "
                        f"{declared[1]}x{declared[0]}{hint}; the image is skipped (re-annotate or fix width/height)",
                        image=where, file=file)
            return None
        return actual

    def numbers(self, values: Any, what: str, *, file: Path, image: str | None, instance: Any) -> list[float] | None:
        """``values`` as finite floats, or None (``invalid_annotation`` reported: not numbers, NaN or inf)."""
        try:
            out = [float(v) for v in values]
        except (TypeError, ValueError, OverflowError):
            out = None
        if out is None:
            self.report("invalid_annotation", f"{file}: {_where(image, instance)}: {what} are not numbers; it is skipped",
                        image=image, instance=instance, file=file)
            return None
        if not all(math.isfinite(v) for v in out):
            self.report("invalid_annotation", f"{file}: {_where(image, instance)}: {what} include NaN or infinity; it is "
                        "skipped (fix the coordinates)", image=image, instance=instance, file=file)
            return None
        return out

    def check_polygon(self, points: Any, *, file: Path, image: str, instance: Any) -> list[float] | None:
        """Flat ``[x0, y0, ...]`` float list if ``points`` is a usable polygon, else None (``degenerate_polygon`` or ``invalid_annotation`` reported)."""
        if isinstance(points, (str, bytes, dict)) or not hasattr(points, "__iter__"):
            self.report("invalid_annotation", f"{file}: {_where(image, instance)}: a polygon must be a list [x0, y0, x1, y1, "
                        f"...], not {type(points).__name__}; it is skipped", image=image, instance=instance, file=file)
            return None
        flat = self.numbers(points, "polygon coordinates", file=file, image=image, instance=instance)
        if flat is None:
            return None
        if len(flat) % 2:
            self.report("invalid_annotation", f"{file}: {_where(image, instance)}: polygon has an odd number of coordinates "
                        f"({len(flat)}); it is skipped (write x, y pairs)", image=image, instance=instance, file=file)
            return None
        if len(flat) < 6:
            self.report("degenerate_polygon", f"{file}: {_where(image, instance)}: polygon has {len(flat) // 2} point(s), needs at least 3; it is skipped",
                        image=image, instance=instance, file=file)
            return None
        if polygon_area(flat) == 0.0:
            self.report("degenerate_polygon", f"{file}: {_where(image, instance)}: polygon has zero area (all points on a line); it is skipped",
                        image=image, instance=instance, file=file)
            return None
        return flat

    def outside_image(self, shapes: list[Shape], height: int, width: int, *, file: Path, image: str, instance: Any) -> bool:
        """True (``outside_image`` reported) when every shape lies outside the image: the
        instance's mask would be empty, so the caller skips it."""
        boxes = [shape_bounds(s) for s in shapes]
        if not boxes or any(b is None or (b[2] > 0 and b[3] > 0 and b[0] < width and b[1] < height) for b in boxes):
            return False
        x1, y1 = min(b[0] for b in boxes if b), min(b[1] for b in boxes if b)
        x2, y2 = max(b[2] for b in boxes if b), max(b[3] for b in boxes if b)
        self.report("outside_image", f"{file}: {_where(image, instance)}: shape ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f}) "
                    f"lies outside the {width}x{height} image, so its mask is empty; it is skipped (fix the "
                    "coordinates or the image)", image=image, instance=instance, file=file)
        return True

    def check_bounds(self, shapes: list[Shape], height: int, width: int, *, file: Path, image: str, instance: Any) -> bool:
        """False when every shape lies outside the image (:meth:`outside_image`). Else True,
        reporting ``out_of_bounds`` when a shape reaches more than a pixel outside the image (the
        part outside is clipped)."""
        if self.outside_image(shapes, height, width, file=file, image=image, instance=instance):
            return False
        t = OUT_OF_BOUNDS_TOLERANCE
        for s in shapes:
            b = shape_bounds(s)
            if b is None:
                continue
            x1, y1, x2, y2 = b
            if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
                self.report("out_of_bounds",
                            f"{file}: {_where(image, instance)}: shape reaches ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f}) outside the "
                            f"{width}x{height} image; the part outside is clipped",
                            image=image, instance=instance, file=file)
                return True
        return True

    # ----------------------------------------------------------------- loading
    def _internal_class_id(self, source_id: Any) -> int:
        cid = self._class_lookup.get(source_id)
        if cid is None:
            cid = self.map_source_class_id(f"{self.source}.{source_id}")
            self._class_lookup[source_id] = cid
        return cid

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks ``[H, W, N]`` bool and internal class ids ``[N]`` int32, rasterised now."""
        return self._rasterize_entries(image_id, "instances")

    def load_ignore_instances(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Ignore (crowd) regions one by one: ``[H, W, M]`` bool and internal class ids ``[M]`` (0: every class)."""
        return self._rasterize_entries(image_id, "ignore")

    def _rasterize_entries(self, image_id: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The entries ``image_info[image_id][key]`` as masks ``[H, W, N]`` bool (each the union of its
        shapes) and internal class ids ``[N]`` int32 (0 for ``class_id`` None)."""
        info = self.image_info[image_id]
        h, w = int(info["height"]), int(info["width"])
        entries = info.get(key, [])
        masks = np.zeros((h, w, len(entries)), dtype=bool)
        class_ids = np.zeros((len(entries),), dtype=np.int32)
        for i, entry in enumerate(entries):
            masks[:, :, i] = rasterize(entry["shapes"], h, w)
            class_ids[i] = 0 if entry.get("class_id") is None else self._internal_class_id(entry["class_id"])
        return masks, class_ids

    def load_ignore_mask(self, image_id: int) -> np.ndarray | None:
        """``[H, W]`` bool union of the ignore (crowd) regions, or None when the image has none."""
        if not self.image_info[image_id].get("ignore"):
            return None
        masks, _ = self.load_ignore_instances(image_id)
        return masks.any(axis=2)

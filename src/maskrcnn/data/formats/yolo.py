"""YOLO segmentation labels (Ultralytics layout).

Layout::

    ROOT/images/[SPLIT/]NAME.jpg      (any image extension, sub-folders allowed)
    ROOT/labels/[SPLIT/]NAME.txt      one line per instance: ``class x1 y1 x2 y2 ...``
    ROOT/data.yaml or ROOT/classes.txt (optional class names)

Coordinates are normalised to ``[0, 1]`` by the image width and height (pixel-edge
convention: ``x * width`` is the pixel position). ``class`` is the 0-based YOLO class index;
YOLO class ``k`` becomes internal class ``k + 1``. Class names come from ``class_names``, else
``names`` in ``data.yaml`` (list or ``{index: name}``), else ``classes.txt`` (one per line, in
``ROOT`` or ``ROOT/labels``), else ``class_0 .. class_K``. ``path`` may also be the ``data.yaml``
itself (its ``path:`` key, when present, is the root).

An image without a label file is a background-only image (Ultralytics' rule), reported as
``unlabelled_image`` so the data checker can list them; a 5-value line (a detection box, no
polygon) is ``unsupported_shape``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from ...errors import DataError, first_line
from ..images import iter_image_files
from ._base import AnnotationDataset

__all__ = ["YoloDataset", "read_yolo_names"]

#: Normalised coordinates may exceed [0, 1] by this much before ``out_of_bounds`` is reported.
_NORM_TOLERANCE = 0.01


class YoloDataset(AnnotationDataset):
    """A YOLO segmentation dataset as a Matterport Dataset; see the module docstring."""

    source = "yolo"

    def load_yolo(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        class_names: list[str] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        """Register the images under ``ROOT/images[/split]`` with their ``labels`` files.

        Args:
            path: the dataset root (with ``images/`` and ``labels/``) or its ``data.yaml``.
            split: sub-folder of ``images/`` and ``labels/`` to load (e.g. "train"); None: all.
            class_names: names of YOLO classes 0..K-1 (overrides data.yaml/classes.txt).
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        root, yaml_names = _root_and_names(Path(path))
        images_dir, labels_dir = root / "images", root / "labels"
        if split:
            images_dir, labels_dir = images_dir / split, labels_dir / split
        if not images_dir.is_dir():
            raise DataError(f"{images_dir}: not found; a YOLO dataset has images/ and labels/ folders"
                            + (f" (is split={split!r} right?)" if split else ""))
        images = list(iter_image_files(images_dir))

        parsed = []
        max_class = -1
        for img in images:
            rel = img.relative_to(images_dir)
            label_file = (labels_dir / rel).with_suffix(".txt")
            if not label_file.is_file():
                self.report("unlabelled_image", f"{img}: no label file {label_file}; trained as a background-only image",
                            image=str(img), file=label_file)
                parsed.append((img, rel, label_file, []))
                continue
            rows = self._read_labels(label_file, str(img))
            max_class = max([max_class] + [c for _, c, _ in rows])
            parsed.append((img, rel, label_file, rows))
        if labels_dir.is_dir():
            stems = {(labels_dir / rel).with_suffix(".txt") for _, rel, _, _ in parsed}
            for lf in sorted(labels_dir.rglob("*.txt")):
                if lf not in stems and lf.name != "classes.txt":
                    self.report("orphan_annotation", f"{lf}: label file without an image in {images_dir}; it is ignored", file=lf)

        names = [str(n) for n in class_names] if class_names is not None else yaml_names or _classes_txt(root, labels_dir)
        if names is None:
            names = [f"class_{k}" for k in range(max_class + 1)]
        for k, name in enumerate(names):
            self.add_class(self.source, k, name)

        for img, rel, label_file, rows in parsed:
            size = self.find_image_size(img, None, file=label_file)
            if size is None:
                continue
            h, w = size
            instances = []
            for ref, cls, coords in rows:
                if cls >= len(names):
                    self.report("unknown_class", f"{label_file}: {ref}: class {cls} but only {len(names)} classes are named "
                                f"({names}); the line is skipped", image=str(img), instance=ref, file=label_file)
                    continue
                lo, hi = min(coords), max(coords)
                if lo < -_NORM_TOLERANCE or hi > 1 + _NORM_TOLERANCE:
                    self.report("out_of_bounds", f"{label_file}: {ref}: coordinates span {lo:g}..{hi:g}, outside [0, 1] "
                                "(are they normalised?); the part outside is clipped", image=str(img), instance=ref, file=label_file)
                flat = [v * (w if i % 2 == 0 else h) for i, v in enumerate(coords)]
                flat = self.check_polygon(flat, file=label_file, image=str(img), instance=ref)
                if flat is None:
                    continue
                shape = {"type": "polygon", "points": flat}
                if self.outside_image([shape], h, w, file=label_file, image=str(img), instance=ref):
                    continue
                instances.append({"class_id": cls, "shapes": [shape], "ref": ref})
            self.add_image(self.source, rel.as_posix(), img, height=h, width=w, instances=instances, ignore=[],
                           annotation_file=str(label_file))

    def _read_labels(self, label_file: Path, image: str) -> list[tuple[str, int, list[float]]]:
        """``[(ref, class index, normalised coords)]`` of a label file (bad lines reported)."""
        rows = []
        try:
            text = label_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.report("invalid_annotation", f"{label_file}: cannot be read ({exc}); the image has no instances",
                        image=image, file=label_file)
            return rows
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            ref = f"line {n}"
            try:
                cls_f = float(parts[0])
                coords = [float(v) for v in parts[1:]]
            except ValueError:
                self.report("invalid_annotation", f"{label_file}: {ref}: not numbers; the line is skipped",
                            image=image, instance=ref, file=label_file)
                continue
            if not math.isfinite(cls_f) or cls_f != int(cls_f) or cls_f < 0:
                self.report("invalid_annotation", f"{label_file}: {ref}: class {parts[0]} is not a class index; the line is skipped",
                            image=image, instance=ref, file=label_file)
                continue
            if len(coords) == 4:
                self.report("unsupported_shape", f"{label_file}: {ref}: 4 values after the class: a detection box (cx cy w h) "
                            "or a polygon of only 2 points; Mask R-CNN needs a polygon of at least 3 points, the line is "
                            "skipped", image=image, instance=ref, file=label_file, severity="error")
                continue
            if len(coords) % 2 or len(coords) < 6:
                self.report("degenerate_polygon" if len(coords) % 2 == 0 else "invalid_annotation",
                            f"{label_file}: {ref}: {len(coords)} coordinates; a polygon needs an even "
                            "number, at least 6 (3 points); the line is skipped", image=image, instance=ref,
                            file=label_file, severity="error")
                continue
            rows.append((ref, int(cls_f), coords))
        return rows


def read_yolo_names(data: Any) -> list[str] | None:
    """Class names from a parsed data.yaml: ``names`` as a list or ``{index: name}``."""
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            idx = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        if idx and (min(idx) < 0 or max(idx) >= 100_000):
            return None
        return [idx.get(k, f"class_{k}") for k in range(max(idx) + 1)] if idx else None
    return None


def _root_and_names(path: Path) -> tuple[Path, list[str] | None]:
    yaml_file = None
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        yaml_file, root = path, path.parent
    elif path.is_dir():
        root = path
        for cand in ("data.yaml", "data.yml", "dataset.yaml"):
            if (path / cand).is_file():
                yaml_file = path / cand
                break
    else:
        raise DataError(f"{path}: not found; pass the YOLO dataset folder (with images/ and labels/) or its data.yaml")
    if yaml_file is None:
        return root, None
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{yaml_file}: not valid YAML ({first_line(exc)}); fix it or remove it") from None
    if isinstance(data, dict) and isinstance(data.get("path"), str) and path.is_file():
        p = Path(data["path"])
        root = p if p.is_absolute() else (yaml_file.parent / p)
    return root, read_yolo_names(data)


def _classes_txt(root: Path, labels_dir: Path) -> list[str] | None:
    for cand in (root / "classes.txt", root / "labels" / "classes.txt", labels_dir / "classes.txt"):
        if cand.is_file():
            names = [line.strip() for line in cand.read_text(encoding="utf-8").splitlines() if line.strip()]
            return names or None
    return None

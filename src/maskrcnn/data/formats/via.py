"""VGG Image Annotator (VIA) JSON, versions 1.x and 2.x (Matterport's balloon format).

Accepted layouts:

* the "Export annotations (as json)" file: ``{key: {"filename", "size", "regions", ...}}``
  where ``regions`` is a dict ``{"0": region, ...}`` (VIA 1.x) or a list (VIA 2.x);
* the VIA 2 project file (``{"_via_settings", "_via_img_metadata", "_via_attributes"}``).

Each region has ``shape_attributes`` (pixel-edge coordinates) and ``region_attributes``:

* ``polygon``: ``all_points_x``, ``all_points_y`` (at least 3 points);
* ``rect``: ``x``, ``y``, ``width``, ``height``;
* ``circle``: ``cx``, ``cy``, ``r``; ``ellipse``: ``cx``, ``cy``, ``rx``, ``ry``, optional ``theta``
  (radians). ``point`` and ``polyline`` have no area: reported as ``unsupported_shape``.

Classes: without ``class_attribute`` every region is one class named ``class_name`` (default
"object"). With ``class_attribute="name"`` the region attribute ``name`` names the class (a
text value, or a checkbox/dict value with exactly one ticked option). The classes are
``class_names`` when given, else the attribute's options declared in a VIA 2 project file, else
the sorted set of values found. Images without regions are kept as background-only images.
VIA does not store image sizes: each image's header is read once when loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import DataError
from . import _shapes
from ._base import AnnotationDataset, _where, read_json

__all__ = ["ViaDataset"]


class ViaDataset(AnnotationDataset):
    """A VIA 1.x/2.x JSON file as a Matterport Dataset; see the module docstring."""

    source = "via"

    def load_via(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | None = None,
        class_attribute: str | None = None,
        class_name: str = "object",
        class_names: list[str] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        """Register the images and regions of a VIA JSON file.

        Args:
            annotation_file: the VIA export or project JSON.
            image_dir: folder of the images; default the JSON's folder.
            class_attribute: region attribute whose value names the class; None: one class.
            class_name: the class name when ``class_attribute`` is None.
            class_names: the declared classes (a region naming another class is reported as
                ``unknown_class`` and skipped); default: see the module docstring.
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        file = Path(annotation_file)
        entries, declared_options = _entries(read_json(file, "VIA annotation file"), file, class_attribute)
        root = Path(image_dir) if image_dir is not None else file.parent
        parsed = self._parse_entries(entries, root, class_attribute, class_name, file)
        if class_attribute is None:
            names = [class_name]
        elif class_names is not None:
            names = [str(n) for n in class_names]
        elif declared_options:
            names = declared_options
        else:
            names = sorted({v for _, _, items in parsed for _, _, v in items})
        self.register_classes(names)
        for filename, path, items in parsed:
            self._add_via_image(filename, path, items, names, file)

    # ----------------------------------------------------------------- loading steps
    def _parse_entries(self, entries: list[tuple[str, dict[str, Any]]], root: Path, class_attribute: str | None, class_name: str,
                       file: Path) -> list[tuple[str, Path, list[tuple[str, dict[str, Any], Any]]]]:
        """``(filename, path, [(region ref, shape, class value)])`` per usable entry, in file order."""
        parsed = []
        seen: set[str] = set()
        for key, entry in entries:
            filename = entry.get("filename") or ""
            if not filename or not isinstance(filename, str):
                self.report("invalid_annotation", f"{file}: entry {key!r} has no 'filename' string; it is skipped",
                            instance=str(key), file=file)
                continue
            if filename in seen:
                self.report("duplicate_image", f"{file}: {filename} is listed twice; the second entry is skipped", image=filename, file=file)
                continue
            seen.add(filename)
            path = root / filename.replace("\\", "/")
            regions = self._regions(entry, filename, path, file)
            if regions is None:
                continue
            items = []
            for k, region in enumerate(regions):
                ref = f"region {k}"
                shape = self._shape(region, file=file, image=str(path), ref=ref)
                if shape is None:
                    continue
                value = self._class_value(region, class_attribute, class_name, file=file, image=str(path), ref=ref)
                if value is None:
                    continue
                items.append((ref, shape, value))
            parsed.append((filename, path, items))
        return parsed

    def _regions(self, entry: dict[str, Any], filename: str, path: Path, file: Path) -> list[Any] | None:
        """The entry's regions as a list (VIA 1.x stores a dict); None, reported, when unusable."""
        if "regions" not in entry:
            self.report("invalid_annotation", f"{file}: {filename}: the entry has no 'regions'; the image is skipped "
                        "(write \"regions\": [] for an image without objects)", image=str(path), file=file)
            return None
        regions = entry["regions"] or []
        if isinstance(regions, dict):
            regions = list(regions.values())
        if not isinstance(regions, list):
            self.report("invalid_annotation", f"{file}: {filename}: 'regions' is neither a list nor a dict; the image is skipped",
                        image=str(path), file=file)
            return None
        return regions

    def _add_via_image(self, filename: str, path: Path, items: list[tuple[str, dict[str, Any], Any]], names: list[str],
                       file: Path) -> None:
        """Register one image with its regions of known classes that lie inside it."""
        size = self.find_image_size(path, None, file=file)
        if size is None:
            return
        h, w = size
        index = {n: i + 1 for i, n in enumerate(names)}
        instances = []
        for ref, shape, value in items:
            cid = index.get(value)
            if cid is None:
                self.report("unknown_class", f"{file}: {_where(str(path), ref)}: class {value!r} is not one of {names}; "
                            "the region is skipped (add it to class_names or fix the attribute)",
                            image=str(path), instance=ref, file=file)
                continue
            if not self.check_bounds([shape], h, w, file=file, image=str(path), instance=ref):
                continue
            instances.append({"class_id": cid, "shapes": [shape], "ref": ref})
        self.add_image(self.source, filename, path, height=h, width=w, instances=instances, ignore=[],
                       annotation_file=str(file))

    # ----------------------------------------------------------------- helpers
    def _shape(self, region: Any, *, file: Path, image: str, ref: str) -> dict[str, Any] | None:
        sa = region.get("shape_attributes") if isinstance(region, dict) else None
        if not isinstance(sa, dict):
            self.report("invalid_annotation", f"{file}: {_where(image, ref)}: no 'shape_attributes'; it is skipped",
                        image=image, instance=ref, file=file)
            return None
        name = sa.get("name")
        keys = {"rect": ("x", "y", "width", "height"), "circle": ("cx", "cy", "r"), "ellipse": ("cx", "cy", "rx", "ry")}
        if isinstance(name, str) and name in keys:
            values = self.numbers([sa.get(k) for k in keys[name]] + [sa.get("theta") or 0.0],
                                  f"{name} coordinates ({', '.join(keys[name])})", file=file, image=image, instance=ref)
            if values is None:
                return None
        try:
            if name == "polygon":
                xs, ys = sa.get("all_points_x") or [], sa.get("all_points_y") or []
                if len(xs) != len(ys):
                    self.report("invalid_annotation", f"{file}: {_where(image, ref)}: all_points_x has {len(xs)} values but "
                                f"all_points_y {len(ys)}; it is skipped", image=image, instance=ref, file=file)
                    return None
                flat = self.check_polygon([v for xy in zip(xs, ys) for v in xy], file=file, image=image, instance=ref)
                return None if flat is None else {"type": "polygon", "points": flat}
            if name == "rect":
                x, y, w, h = (float(sa[k]) for k in ("x", "y", "width", "height"))
                if w <= 0 or h <= 0:
                    self.report("degenerate_polygon", f"{file}: {_where(image, ref)}: rect of size {w}x{h}; it is skipped",
                                image=image, instance=ref, file=file)
                    return None
                return _shapes.rectangle(x, y, w, h)
            if name == "circle":
                r = float(sa["r"])
                return self._ellipse(float(sa["cx"]), float(sa["cy"]), r, r, 0.0, file=file, image=image, ref=ref)
            if name == "ellipse":
                return self._ellipse(float(sa["cx"]), float(sa["cy"]), float(sa["rx"]), float(sa["ry"]),
                                     float(sa.get("theta") or 0.0), file=file, image=image, ref=ref)
        except (KeyError, TypeError, ValueError):
            self.report("invalid_annotation", f"{file}: {_where(image, ref)}: {name} region lacks a numeric coordinate; it is skipped",
                        image=image, instance=ref, file=file)
            return None
        self.report("unsupported_shape", f"{file}: {_where(image, ref)}: shape {name!r} has no area (use polygon, rect, circle "
                    "or ellipse); it is skipped", image=image, instance=ref, file=file)
        return None

    def _ellipse(self, cx: float, cy: float, rx: float, ry: float, theta: float, *, file: Path, image: str,
                 ref: str) -> dict[str, Any] | None:
        if rx <= 0 or ry <= 0:
            self.report("degenerate_polygon", f"{file}: {_where(image, ref)}: circle/ellipse with radius 0; it is skipped",
                        image=image, instance=ref, file=file)
            return None
        return _shapes.ellipse(cx, cy, rx, ry, theta)

    def _class_value(self, region: dict[str, Any], attribute: str | None, default: str, *, file: Path, image: str,
                     ref: str) -> str | None:
        """The class name of a region (``default`` without an attribute); None (reported) when missing."""
        if attribute is None:
            return default
        attrs = region.get("region_attributes") or {}
        value = attrs.get(attribute) if isinstance(attrs, dict) else None
        if isinstance(value, dict):  # checkbox: {"option": true, ...}
            ticked = [k for k, v in value.items() if v]
            value = ticked[0] if len(ticked) == 1 else None
        if value is None or (isinstance(value, str) and not value.strip()):
            self.report("missing_class", f"{file}: {_where(image, ref)}: region attribute {attribute!r} is missing or empty; "
                        "the region is skipped (set its class in VIA)", image=image, instance=ref, file=file)
            return None
        return str(value).strip()


def _entries(data: Any, file: Path, class_attribute: str | None) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``[(key, image entry)]`` of a VIA file, and the class options its project declares."""
    options: list[str] = []
    if isinstance(data, dict) and "_via_img_metadata" in data:
        attrs = data.get("_via_attributes")
        for key in ("region", class_attribute or ""):
            attrs = attrs.get(key) if isinstance(attrs, dict) else None
        if isinstance(attrs, dict) and isinstance(attrs.get("options"), dict):
            options = [str(k) for k in attrs["options"]]
        data = data["_via_img_metadata"]
    if isinstance(data, dict) and ("project" in data and "file" in data and "metadata" in data):
        raise DataError(f"{file}: a VIA 3 project is not supported; export it as COCO from VIA 3 and use the coco format")
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "filename" in v for v in data.values()):
        return list(data.items()), options
    if isinstance(data, list) and data and all(isinstance(v, dict) and "filename" in v for v in data):
        return [(str(i), v) for i, v in enumerate(data)], options
    if isinstance(data, dict) and not data:
        raise DataError(f"{file}: the VIA file lists no images; annotate and export again")
    raise DataError(f"{file}: not a VIA 1.x/2.x annotation file (expected {{key: {{'filename', 'regions'}}}}); "
                    "export annotations as JSON from VIA")

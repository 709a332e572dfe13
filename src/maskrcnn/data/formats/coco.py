"""COCO instance-segmentation JSON (``images``, ``annotations``, ``categories``).

* Segmentations may be polygons (a list of ``[x0, y0, x1, y1, ...]`` parts, pixel-edge
  coordinates), uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string);
  they are kept as they are and rasterised with pycocotools in ``load_mask``.
* ``iscrowd: 1`` annotations are not instances: their union is ``load_ignore_mask(image_id)``
  (``[H, W]`` bool) and ``load_ignore_instances`` gives them one by one with their classes.
* Category ids may have gaps (COCO's 1..90): they are mapped, in increasing id order, to the
  contiguous internal ids 1..K; ``class_names`` keeps the category names.
* Images without annotations are kept as background-only images (unless ``class_ids`` selects
  classes: then, as in Matterport, only images with an annotation of those classes are kept).
* Image files are looked up in ``image_dir``; by default in the JSON's folder, then its
  ``images/`` subfolder, then ``../images``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ...errors import DataError
from .. import rle as rle_codec
from ._base import AnnotationDataset, _where, declared_size, read_json

__all__ = ["CocoDataset"]


class CocoDataset(AnnotationDataset):
    """A COCO JSON file as a Matterport Dataset; see the module docstring."""

    source = "coco"

    def load_coco(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str] | None = None,
        class_ids: list[int] | None = None,
        *,
        verify_images: bool = True,
        strict: bool = False,
    ) -> None:
        """Register the categories and images of ``annotation_file``.

        Args:
            annotation_file: the COCO JSON.
            image_dir: folder the ``file_name`` entries are relative to (see module docstring).
            class_ids: COCO category ids to load (others are ignored); None loads all.
            verify_images: open each image's header to check its size against ``width``/``height``
                (a mismatch skips the image with a ``size_mismatch`` problem).
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        file = Path(annotation_file)
        data, categories, annotations = self._read_file(file)
        cats = self._read_categories(categories, file)
        wanted = self._add_categories(cats, class_ids, file)
        images = self._read_images(data["images"], file)
        paths = self._image_paths(images, self._image_roots(file, image_dir), file)
        per_image = self._annotations_per_image(annotations, images, paths, cats, wanted, file)
        for img_id, img in images.items():
            anns = per_image[img_id]
            if class_ids is not None and not anns:
                continue
            self._add_coco_image(img_id, img, paths[img_id], anns, file, verify_images)

    # ----------------------------------------------------------------- loading steps
    def _read_file(self, file: Path) -> tuple[dict[str, Any], list[Any], list[Any]]:
        """The JSON with its ``categories`` and ``annotations`` lists (a file without annotations
        is reported and read as background-only images)."""
        data = read_json(file, "COCO annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{file}: not a COCO annotation file (no 'images' list); pass a COCO instances JSON")
        categories = data.get("categories")
        if not isinstance(categories, list) or not categories:
            raise DataError(f"{file}: no 'categories' list; add the categories ({{'id', 'name'}}) the annotations use")
        annotations = data.get("annotations")
        if annotations is None:
            self.report("no_annotations", f"{file}: no 'annotations' list; every image is background-only (add the "
                        "annotations if this is a training set)", file=file)
            annotations = []
        if not isinstance(annotations, list):
            raise DataError(f"{file}: 'annotations' must be a list of annotation objects; fix the file")
        return data, categories, annotations

    def _add_categories(self, cats: dict[int, str], class_ids: list[int] | None, file: Path) -> set[int]:
        """Add the selected categories (all without ``class_ids``) in id order; returns their ids."""
        if class_ids is not None:
            unknown = [c for c in class_ids if c not in cats]
            if unknown:
                raise DataError(f"{file}: class_ids {unknown} are not category ids of this file; choose among {sorted(cats)}")
            wanted = sorted(set(class_ids))
        else:
            wanted = sorted(cats)
        for cid in wanted:
            self.add_class(self.source, cid, cats[cid])
        return set(wanted)

    def _read_images(self, entries: list[Any], file: Path) -> dict[Any, dict[str, Any]]:
        """The usable ``images`` entries by id (invalid and repeated ones are reported and skipped)."""
        images: dict[Any, dict[str, Any]] = {}
        for k, img in enumerate(entries):
            if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
                self.report("invalid_annotation", f"{file}: images[{k}] has no 'id' or 'file_name'; it is skipped",
                            instance=f"images[{k}]", file=file)
                continue
            if not _is_key(img["id"]) or not isinstance(img["file_name"], str):
                self.report("invalid_annotation", f"{file}: images[{k}] has id {img['id']!r} and file_name "
                            f"{img['file_name']!r}; the id must be an integer (or a string) and file_name a string, the "
                            "image is skipped", instance=f"images[{k}]", file=file)
                continue
            if img["id"] in images:
                self.report("duplicate_image", f"{file}: image id {img['id']} is listed twice; the second entry is skipped",
                            image=str(img["file_name"]), file=file)
                continue
            images[img["id"]] = img
        return images

    def _image_paths(self, images: dict[Any, dict[str, Any]], roots: list[Path], file: Path) -> dict[Any, Path]:
        """Each image's file (see the module docstring); a ``file_name`` leading outside its folder is reported."""
        paths = {i: self._resolve(roots, img["file_name"]) for i, img in images.items()}
        for i, img in images.items():
            if _escapes(img["file_name"]):
                self.report("outside_root", f"{file}: image id {i}: file_name {img['file_name']!r} leads outside the "
                            f"folder it is relative to ({paths[i]}); it is read anyway: move the image into the dataset "
                            "or write its absolute path", image=str(paths[i]), file=file)
        return paths

    def _annotations_per_image(self, annotations: list[Any], images: dict[Any, dict[str, Any]], paths: dict[Any, Path],
                               cats: dict[int, str], wanted: set[int], file: Path) -> dict[Any, list[dict[str, Any]]]:
        """The valid annotations of the wanted categories by image id, each with its reference in ``_ref``."""
        per_image: dict[Any, list[dict[str, Any]]] = {i: [] for i in images}
        for k, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                self.report("invalid_annotation", f"{file}: annotations[{k}] is a {type(ann).__name__}, not an object; "
                            "it is skipped", instance=f"annotation #{k}", file=file)
                continue
            ref = f"annotation {ann['id']}" if _is_key(ann.get("id")) else f"annotation #{k}"
            image_id = ann.get("image_id")
            if not _is_key(image_id) or image_id not in images:
                self.report("unknown_image", f"{file}: {ref} refers to image id {image_id!r}, which is not in 'images'; "
                            "it is skipped (fix image_id)", instance=ref, file=file)
                continue
            image = str(paths[image_id])
            cat = ann.get("category_id")
            if not _is_id(cat) or cat not in cats:
                hint = (f"category ids are integers: write {int(cat)}" if isinstance(cat, str) and cat.strip().isdigit()
                        else "add the category or fix the id")
                self.report("unknown_class", f"{file}: {_where(image, ref)}: category_id {cat!r} "
                            f"is not in 'categories'; it is skipped ({hint})", image=image, instance=ref, file=file)
                continue
            if ann.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: iscrowd is {ann['iscrowd']!r}; it must be "
                            "0 or 1, the annotation is skipped", image=image, instance=ref, file=file)
                continue
            self._check_ignored_fields(ann, file=file, image=image, ref=ref)
            if cat in wanted:
                per_image[image_id].append(dict(ann, _ref=ref))
        return per_image

    def _add_coco_image(self, img_id: Any, img: dict[str, Any], path: Path, anns: list[dict[str, Any]], file: Path,
                        verify_images: bool) -> None:
        """Register one image with its instances and crowd (ignore) regions, unless its size is unusable."""
        size = self.find_image_size(path, declared_size(img, "height", "width"), file=file, verify=verify_images)
        if size is None:
            return
        h, w = size
        instances, ignore = [], []
        for ann in anns:
            shapes = self._shapes(ann, h, w, file=file, image=str(path))
            if not shapes or not self.check_bounds(shapes, h, w, file=file, image=str(path), instance=ann["_ref"]):
                continue
            entry = {"class_id": ann["category_id"], "shapes": shapes, "ref": ann["_ref"]}
            (ignore if ann.get("iscrowd") else instances).append(entry)
        self.add_image(self.source, img_id, path, height=h, width=w, instances=instances, ignore=ignore,
                       annotation_file=str(file))

    # ----------------------------------------------------------------- helpers
    def _read_categories(self, categories: list[Any], file: Path) -> dict[int, str]:
        cats: dict[int, str] = {}
        for k, c in enumerate(categories):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise DataError(f"{file}: categories[{k}] needs an integer 'id' and a 'name'; fix the category list")
            if c["id"] in cats:
                raise DataError(f"{file}: category id {c['id']} is listed twice; give each category its own id")
            if c["id"] <= 0:
                raise DataError(f"{file}: category {c['name']!r} has id {c['id']}; ids must be >= 1 (0 is background)")
            cats[c["id"]] = str(c["name"])
        return cats

    @staticmethod
    def _image_roots(file: Path, image_dir: str | os.PathLike[str] | None) -> list[Path]:
        if image_dir is not None:
            return [Path(image_dir)]
        here = file.parent
        return [here, here / "images", here.parent / "images"]

    def _check_ignored_fields(self, ann: dict[str, Any], *, file: Path, image: str, ref: str) -> None:
        """Report a malformed ``bbox`` or ``area`` (``ignored_field``): boxes and areas come from the mask."""
        for key, ok in (("bbox", _is_numbers(ann.get("bbox"), 4)), ("area", _is_numbers([ann.get("area")], 1))):
            if key in ann and not ok:
                self.report("ignored_field", f"{file}: {_where(image, ref)}: '{key}' is {ann[key]!r}, not "
                            f"{'[x, y, width, height]' if key == 'bbox' else 'a number'}; it is ignored (computed from "
                            "the mask)", image=image, instance=ref, file=file)

    @staticmethod
    def _resolve(roots: list[Path], file_name: str) -> Path:
        name = file_name.replace("\\", "/")
        if os.path.isabs(name):
            return Path(name)
        for root in roots:
            p = root / name
            if p.is_file():
                return p
        return roots[0] / name

    def _shapes(self, ann: dict[str, Any], h: int, w: int, *, file: Path, image: str) -> list[dict[str, Any]]:
        """The shapes of one annotation (empty, with a problem recorded, when unusable)."""
        ref = ann["_ref"]
        seg = ann.get("segmentation")
        if seg is None or seg == []:
            self.report("no_mask", f"{file}: {_where(image, ref)}: no 'segmentation' (a box only); Mask R-CNN needs masks, it is skipped",
                        image=image, instance=ref, file=file)
            return []
        if isinstance(seg, list):
            parts = seg if seg and isinstance(seg[0], list) else [seg]
            shapes = []
            for part in parts:
                flat = self.check_polygon(part, file=file, image=image, instance=ref)
                if flat is not None:
                    shapes.append({"type": "polygon", "points": flat})
            return shapes
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            size = seg["size"]
            if isinstance(size, list) and len(size) == 2 and all(_is_id(v) for v in size) and size != [h, w]:
                self.report("mask_size_mismatch", f"{file}: {_where(image, ref)}: RLE size {size} differs from the image's "
                            f"[{h}, {w}] (height, width); it is skipped (re-export it for this image)",
                            image=image, instance=ref, file=file)
                return []
            problem = rle_codec.validate(seg, h, w)
            if problem is not None:
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: {problem}; it is skipped (re-export the "
                            "mask)", image=image, instance=ref, file=file)
                return []
            return [{"type": "rle", "rle": {"size": [h, w], "counts": seg["counts"]}}]
        self.report("invalid_annotation", f"{file}: {_where(image, ref)}: 'segmentation' is a {type(seg).__name__} but must be "
                    "polygons [[x0, y0, x1, y1, ...], ...] or an RLE {'size': [h, w], 'counts': ...}; it is skipped",
                    image=image, instance=ref, file=file)
        return []


def _is_id(value: Any) -> bool:
    """An integer id (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_key(value: Any) -> bool:
    """An image or annotation id: an integer or a string."""
    return isinstance(value, str) or _is_id(value)


def _is_numbers(values: Any, count: int) -> bool:
    """``values`` is a list of ``count`` finite numbers."""
    return (isinstance(values, list) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _escapes(file_name: str) -> bool:
    """A relative ``file_name`` whose ``..`` parts lead above the folder it is relative to."""
    name = file_name.replace("\\", "/")
    return not os.path.isabs(name) and os.path.normpath(name).split(os.sep)[0] == ".."

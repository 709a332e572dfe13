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

import os
from pathlib import Path
from typing import Any

from ...errors import DataError
from ._base import AnnotationDataset, _where, read_json

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
        data = read_json(file, "COCO annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{file}: not a COCO annotation file (no 'images' list); pass a COCO instances JSON")
        categories = data.get("categories")
        if not isinstance(categories, list) or not categories:
            raise DataError(f"{file}: no 'categories' list; add the categories ({{'id', 'name'}}) the annotations use")
        annotations = data.get("annotations") or []
        if not isinstance(annotations, list):
            raise DataError(f"{file}: 'annotations' must be a list")

        cats = self._read_categories(categories, file)
        if class_ids is not None:
            unknown = [c for c in class_ids if c not in cats]
            if unknown:
                raise DataError(f"{file}: class_ids {unknown} are not category ids of this file; choose among {sorted(cats)}")
            wanted = sorted(set(class_ids))
        else:
            wanted = sorted(cats)
        for cid in wanted:
            self.add_class(self.source, cid, cats[cid])
        wanted_set = set(wanted)

        images: dict[Any, dict[str, Any]] = {}
        for k, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
                self.report("invalid_annotation", f"{file}: images[{k}] has no 'id' or 'file_name'; it is skipped",
                            instance=f"images[{k}]", file=file)
                continue
            if img["id"] in images:
                self.report("duplicate_image", f"{file}: image id {img['id']} is listed twice; the second entry is skipped",
                            image=str(img["file_name"]), file=file)
                continue
            images[img["id"]] = img

        roots = self._image_roots(file, image_dir)
        paths = {i: self._resolve(roots, str(img["file_name"])) for i, img in images.items()}
        per_image: dict[Any, list[dict[str, Any]]] = {i: [] for i in images}
        for k, ann in enumerate(annotations):
            ref = f"annotation {ann.get('id', f'#{k}')}" if isinstance(ann, dict) else f"annotation #{k}"
            if not isinstance(ann, dict) or ann.get("image_id") not in images:
                self.report("unknown_image", f"{file}: {ref} refers to image id "
                            f"{ann.get('image_id') if isinstance(ann, dict) else None!r}, which is not in 'images'; it is skipped",
                            instance=ref, file=file)
                continue
            cat = ann.get("category_id")
            if cat not in cats:
                image = str(paths[ann["image_id"]])
                self.report("unknown_class", f"{file}: {_where(image, ref)}: category_id {cat!r} "
                            f"is not in 'categories'; it is skipped (add the category or fix the id)",
                            image=image, instance=ref, file=file)
                continue
            if cat in wanted_set:
                per_image[ann["image_id"]].append(dict(ann, _ref=ref))

        for img_id, img in images.items():
            anns = per_image[img_id]
            if class_ids is not None and not anns:
                continue
            path = paths[img_id]
            declared = _declared_size(img)
            size = self.find_image_size(path, declared, file=file, verify=verify_images)
            if size is None:
                continue
            h, w = size
            instances, ignore = [], []
            for ann in anns:
                shapes = self._shapes(ann, h, w, file=file, image=str(path))
                if not shapes:
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
            if shapes:
                self.check_bounds(shapes, h, w, file=file, image=image, instance=ref)
            return shapes
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            size = list(seg["size"]) if isinstance(seg["size"], (list, tuple)) else None
            if size != [h, w]:
                self.report("mask_size_mismatch", f"{file}: {_where(image, ref)}: RLE size {seg['size']} differs from the image's "
                            f"[{h}, {w}] (height, width); it is skipped", image=image, instance=ref, file=file)
                return []
            if not isinstance(seg["counts"], (str, bytes, list)):
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: RLE 'counts' must be a string or a list; it is skipped",
                            image=image, instance=ref, file=file)
                return []
            if isinstance(seg["counts"], list) and sum(int(c) for c in seg["counts"]) != h * w:
                self.report("invalid_annotation", f"{file}: {_where(image, ref)}: uncompressed RLE counts sum to "
                            f"{sum(int(c) for c in seg['counts'])}, not height*width={h * w}; it is skipped",
                            image=image, instance=ref, file=file)
                return []
            return [{"type": "rle", "rle": {"size": size, "counts": seg["counts"]}}]
        self.report("invalid_annotation", f"{file}: {_where(image, ref)}: 'segmentation' is neither polygons nor RLE; it is skipped",
                    image=image, instance=ref, file=file)
        return []


def _declared_size(img: dict[str, Any]) -> tuple[int, int] | None:
    try:
        h, w = int(img["height"]), int(img["width"])
    except (KeyError, TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None

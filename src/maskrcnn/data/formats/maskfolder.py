"""Masks stored as image files: one file per instance, or one label image per image.

``instance-masks`` (the Kaggle Data Science Bowl 2018 layout, Matterport's nucleus sample)::

    ROOT/<id>/images/<id>.png      the image (RGBA in DSB, with a constant alpha channel)
    ROOT/<id>/masks/<any>.png      one instance per file: non-zero pixels are inside

All instances are one class (``class_name``, default "object"). ``drop_alpha=True`` (default,
this layout only) returns the RGB channels of an RGBA image whose alpha is constant; a varying
alpha raises a :class:`DataError` rather than being thrown away. A folder without ``masks/`` is a
background-only image (reported as ``unlabelled_image``).

``label-images`` (Cellpose/StarDist style)::

    ROOT/images/NAME.<ext>                       the image (sub-folders allowed)
    ROOT/labels/NAME<label_suffix>.png|.tif      one integer per pixel: 0 background, each
                                                 instance its own value (any values, any order)
    ROOT/labels/NAME<label_suffix>.json          optional: {"<value>": "<class name>"}

Instances come in increasing label value. Classes: one class ``class_name`` unless a class map
is given: ``class_map={value: name}`` for every image and/or the per-image JSON (which wins);
then a value without a class raises a :class:`DataError` when the mask is loaded. The class list
is ``class_names`` when given, else the sorted set of names in the maps.

Masks are read from disk in ``load_mask``; only file names are kept in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import numpy as np

from ...errors import DataError, first_line
from ..images import image_size, iter_image_files, read_binary_mask, read_label_image
from ._base import AnnotationDataset

__all__ = ["InstanceMaskDataset", "LabelImageDataset"]

_LABEL_EXTENSIONS = (".png", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    return list(iter_image_files(folder, recursive=False)) if folder.is_dir() else []


class InstanceMaskDataset(AnnotationDataset):
    """One binary mask file per instance (DSB 2018 layout); see the module docstring."""

    source = "masks"

    def load_instance_masks(
        self,
        root: str | os.PathLike[str],
        drop_alpha: bool = True,
        class_name: str = "object",
        *,
        verify_images: bool = True,
        strict: bool = False,
    ) -> None:
        """Register every ``ROOT/<id>/images/`` image with its ``masks/`` files.

        Args:
            root: folder of per-image folders.
            drop_alpha: return RGB for RGBA images whose alpha channel is constant (DSB).
            class_name: the name of the single class.
            verify_images: read each mask's header and skip masks whose size differs from the
                image's (``mask_size_mismatch``); without it a mismatch raises in ``load_mask``.
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        self.drop_alpha = drop_alpha
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: not found; pass the folder holding one <id>/images/ + <id>/masks/ folder per image")
        folders = sorted(p for p in root.iterdir() if (p / "images").is_dir())
        if not folders:
            raise DataError(f"{root}: no <id>/images/ folders found; expected the DSB layout <id>/images/<id>.png + <id>/masks/*.png")
        self.register_classes([class_name])
        for folder in folders:
            candidates = _image_files(folder / "images")
            preferred = [p for p in candidates if p.stem == folder.name]
            if not candidates:
                self.report("missing_image", f"{folder / 'images'}: no image file; the folder is skipped", image=str(folder), file=folder)
                continue
            if len(candidates) > 1 and not preferred:
                self.report("duplicate_image", f"{folder / 'images'}: {len(candidates)} images and none named {folder.name}.*; "
                            f"using {candidates[0].name}", image=str(candidates[0]), file=folder)
            img = (preferred or candidates)[0]
            size = self.find_image_size(img, None, file=folder)
            if size is None:
                continue
            h, w = size
            if not (folder / "masks").is_dir():
                self.report("unlabelled_image", f"{folder}: no masks/ folder; trained as a background-only image",
                            image=str(img), file=folder)
            masks = []
            for m in _image_files(folder / "masks"):
                if verify_images and not self._mask_fits(m, h, w, img):
                    continue
                masks.append(str(m))
            self.add_image(self.source, folder.name, img, height=h, width=w, mask_paths=masks)

    def _mask_fits(self, mask: Path, h: int, w: int, img: Path) -> bool:
        try:
            mh, mw = image_size(mask)
        except DataError as exc:
            self.report("unreadable_mask", f"{exc}; the instance is skipped", image=str(img), instance=mask.name, file=mask)
            return False
        if (mh, mw) != (h, w):
            self.report("mask_size_mismatch", f"{mask}: mask is {mw}x{mh} but image {img.name} is {w}x{h} (WxH); "
                        "the instance is skipped (re-export the mask at the image size)", image=str(img), instance=mask.name, file=mask)
            return False
        return True

    def load_image(self, image_id: int) -> np.ndarray:
        """The image; with ``drop_alpha`` an RGBA image with constant alpha comes back as RGB."""
        arr = super().load_image(image_id)
        if getattr(self, "drop_alpha", False) and arr.shape[2] == 4:
            alpha = arr[:, :, 3]
            if alpha.size and alpha.min() != alpha.max():
                path = self.image_info[image_id]["path"]
                raise DataError(f"{path}: alpha channel is not constant, so drop_alpha=True would lose information; "
                                "load with drop_alpha=False and image_channel_count: 4, or convert the image to RGB")
            arr = np.ascontiguousarray(arr[:, :, :3])
        return arr

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``[H, W, N]`` bool (one per mask file, in file-name order) and class ids ``[N]`` (all 1)."""
        info = self.image_info[image_id]
        h, w = int(info["height"]), int(info["width"])
        paths = info["mask_paths"]
        masks = np.zeros((h, w, len(paths)), dtype=bool)
        for i, p in enumerate(paths):
            m = read_binary_mask(p)
            if m.shape != (h, w):
                raise DataError(f"{p}: mask is {m.shape[1]}x{m.shape[0]} but image {Path(info['path']).name} is {w}x{h} (WxH); "
                                "re-export the mask at the image size or remove it")
            masks[:, :, i] = m
        return masks, np.full((len(paths),), self._internal_class_id(1), dtype=np.int32)


class LabelImageDataset(AnnotationDataset):
    """One integer label image per image (0 background, one value per instance); see the module docstring."""

    source = "labels"

    def load_label_images(
        self,
        root: str | os.PathLike[str],
        class_map: dict[int, str] | None = None,
        class_names: list[str] | None = None,
        class_name: str = "object",
        images_dir: str = "images",
        labels_dir: str = "labels",
        label_suffix: str = "",
        *,
        verify_images: bool = True,
        strict: bool = False,
    ) -> None:
        """Register ``ROOT/images`` with their ``ROOT/labels`` label images.

        Args:
            root: folder holding ``images_dir`` and ``labels_dir``.
            class_map: ``{label value: class name}`` used for every image (a per-image JSON wins).
            class_names: the declared classes, in internal id order (1..K).
            class_name: the single class when no class map is used.
            images_dir, labels_dir: sub-folder names.
            label_suffix: label files are ``NAME + label_suffix`` (e.g. ``"_masks"`` for Cellpose).
            verify_images: compare each label image's header size with the image's.
            strict: raise the first problem as a :class:`DataError` instead of recording it.
        """
        self.strict = strict
        root = Path(root)
        idir, ldir = root / images_dir, root / labels_dir
        if not idir.is_dir() or not ldir.is_dir():
            raise DataError(f"{root}: expected {images_dir}/ and {labels_dir}/ folders (label images, one integer per instance)")
        global_map = {int(k): str(v) for k, v in (class_map or {}).items()}  # types checked by load_dataset
        entries = []
        used_labels: set[Path] = set()
        for img in iter_image_files(idir):
            rel = img.relative_to(idir)
            base = ldir / rel.parent / (rel.stem + label_suffix)
            label = next((base.with_name(base.name + ext) for ext in _LABEL_EXTENSIONS if base.with_name(base.name + ext).is_file()), None)
            side = base.with_name(base.name + ".json")
            used_labels.update(p for p in (label, side) if p is not None)
            entries.append((img, rel, label, self._sidecar(side, str(img)) if side.is_file() else None))
        for p in sorted(ldir.rglob("*")):
            if p.is_file() and p.suffix.lower() in _LABEL_EXTENSIONS + (".json",) and p not in used_labels:
                self.report("orphan_annotation", f"{p}: label file without an image in {idir}; it is ignored", file=p)

        use_classes = bool(global_map) or any(e[3] is not None for e in entries)
        if class_names is not None:
            names = [str(n) for n in class_names]
        elif use_classes:
            names = sorted(set(global_map.values()) | {n for e in entries if e[3] for n in e[3].values()})
        else:
            names = [class_name]
        self.register_classes(names)
        self.class_index = {n: i + 1 for i, n in enumerate(names)}
        self.use_class_map = use_classes

        for img, rel, label, side in entries:
            size = self.find_image_size(img, None, file=label or img)
            if size is None:
                continue
            h, w = size
            if label is None:
                self.report("unlabelled_image", f"{img}: no label image in {ldir}; trained as a background-only image",
                            image=str(img), file=img)
            elif verify_images and not self._label_fits(label, h, w, img):
                continue
            value_classes = {**global_map, **(side or {})}
            unknown = sorted({n for n in value_classes.values() if n not in self.class_index})
            if unknown:
                self.report("unknown_class", f"{label}: class {unknown[0]!r} is not one of {names}; its instances are skipped",
                            image=str(img), file=label)
            self.add_image(self.source, rel.as_posix(), img, height=h, width=w, label_path=None if label is None else str(label),
                           value_classes=value_classes)

    def _sidecar(self, path: Path, image: str) -> dict[int, str] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else first_line(exc)
            self.report("invalid_annotation", f"{path}: not a {{\"<value>\": \"<class>\"}} JSON ({reason}); it is ignored "
                        "(fix it or delete it)", image=image, file=path)
            return None

    def _label_fits(self, label: Path, h: int, w: int, img: Path) -> bool:
        try:
            lh, lw = image_size(label)
        except DataError as exc:
            self.report("unreadable_mask", f"{exc}; the image is skipped", image=str(img), file=label)
            return False
        if (lh, lw) != (h, w):
            self.report("mask_size_mismatch", f"{label}: label image is {lw}x{lh} but image {img.name} is {w}x{h} (WxH); "
                        "the image is skipped", image=str(img), file=label)
            return False
        return True

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``[H, W, N]`` bool, one per non-zero label value in increasing order, and class ids ``[N]``."""
        info = self.image_info[image_id]
        h, w = int(info["height"]), int(info["width"])
        if info["label_path"] is None:
            return np.zeros((h, w, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        lab = read_label_image(info["label_path"])
        if lab.shape != (h, w):
            raise DataError(f"{info['label_path']}: label image is {lab.shape[1]}x{lab.shape[0]} but the image is {w}x{h} (WxH); "
                            "re-export it at the image size")
        values = np.unique(lab)
        values = values[values != 0]
        masks = lab[:, :, None] == values[None, None, :]
        if not self.use_class_map:
            return masks, np.full((len(values),), self._internal_class_id(1), dtype=np.int32)
        ids = np.zeros((len(values),), dtype=np.int32)
        keep = np.ones((len(values),), dtype=bool)
        for i, v in enumerate(values.tolist()):
            name = info["value_classes"].get(int(v))
            if name is None:
                raise DataError(f"{info['label_path']}: label value {v} has no class; add \"{v}\": \"<class>\" to its .json "
                                "or to class_map")
            cid = self.class_index.get(name)
            if cid is None:  # reported at registration as unknown_class
                keep[i] = False
                continue
            ids[i] = self._internal_class_id(cid)
        return masks[:, :, keep], ids[keep]

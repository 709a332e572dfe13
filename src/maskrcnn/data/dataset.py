"""Matterport's ``Dataset`` API: a registry of classes and images that users subclass.

An existing Matterport subclass works after changing its import::

    from maskrcnn.data import Dataset

    class BalloonDataset(Dataset):
        def load_balloon(self, root, subset): ...
        def load_mask(self, image_id): ...

Images and masks are loaded lazily, one image at a time; nothing holds the whole dataset in memory.

Differences from Matterport, all in the user's favour: ``load_image`` returns the image with its
real channel count and dtype (uint8 or uint16; grayscale stays HxWx1 and a 4th channel is kept)
and the pipeline checks it against ``Config.image_channel_count`` instead of converting silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["Dataset"]


class Dataset:
    """Base class of every dataset.

    Attributes after :meth:`prepare`:
        class_info: list of ``{"source", "id", "name"}``; index 0 is background ("BG").
        image_info: list of ``{"id", "source", "path", **extra}``.
        class_ids: ``np.arange(num_classes)``.
        class_names: names in internal id order.
        num_classes, num_images, image_ids.
        source_class_ids: ``{source: [internal ids]}`` (background belongs to every source).
        problems: what loading skipped or repaired, as dicts ``{"image", "instance", "kind",
            "message", "file"}`` (the kinds are listed in :mod:`maskrcnn.data.formats`; record
            them with :func:`maskrcnn.data.problems.add_problem`); ``check-data`` lists them,
            ``train`` and ``convert`` print a summary. Empty for datasets that report none.
    """

    def __init__(self, class_map: Any = None) -> None:
        self._image_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self.image_info: list[dict[str, Any]] = []
        self.class_info: list[dict[str, Any]] = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids: dict[str, list[int]] = {}
        self.class_from_source_map: dict[str, int] = {}
        self.image_from_source_map: dict[str, int] = {}
        self.sources: list[str] = []
        self.class_names: list[str] = []
        self.num_classes = 0
        self.num_images = 0
        self.class_ids = np.zeros(0, dtype=np.int64)
        self.problems: list[dict[str, Any]] = []
        self._prepared = False

    # ----------------------------------------------------------------- registry
    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        """Register class ``class_id`` of ``source`` (ids are the source's own)."""
        if "." in source:
            raise DataError(f"add_class: source name {source!r} cannot contain a dot; rename the source")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already registered
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source: str, image_id: Any, path: str | Path | None, **kwargs: Any) -> None:
        """Register an image; ``kwargs`` are kept in ``image_info`` for ``load_mask``."""
        info = {"id": image_id, "source": source, "path": None if path is None else str(path)}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id: int) -> str:
        """A string that identifies the image for messages (its path, or source:id)."""
        info = self.image_info[image_id]
        return info.get("path") or f"{info['source']}:{info['id']}"

    def prepare(self, class_map: Any = None) -> None:
        """Build the internal id maps. Call after adding classes and images."""

        def clean_name(name: str) -> str:
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {f"{info['source']}.{info['id']}": i for i, info in enumerate(self.class_info)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": i for i, info in enumerate(self.image_info)}
        self.sources = sorted({i["source"] for i in self.class_info if i["source"]})
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info) if i == 0 or info["source"] == source
            ]
        self._prepared = True

    def map_source_class_id(self, source_class_id: str) -> int:
        """``"coco.12"`` -> internal class id."""
        try:
            return self.class_from_source_map[source_class_id]
        except KeyError:
            raise DataError(f"class {source_class_id!r} is not registered; call add_class() for it before prepare()") from None

    def get_source_class_id(self, class_id: int, source: str) -> int:
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self) -> np.ndarray:
        return self._image_ids

    def source_image_link(self, image_id: int) -> str | None:
        return self.image_info[image_id].get("path")

    def __len__(self) -> int:
        return len(self.image_info)

    # ----------------------------------------------------------------- loading
    def load_image(self, image_id: int) -> np.ndarray:
        """The image as ``[H, W, C]`` uint8 or uint16, channels as stored (EXIF orientation applied)."""
        from .images import read_image

        path = self.image_info[image_id].get("path")
        if path is None:
            raise DataError(f"image {image_id} has no path; override load_image() in {type(self).__name__}")
        return read_image(path)

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks ``[H, W, N]`` bool and class ids ``[N]`` int32 (internal ids).

        The base class has no annotations: it returns no instances (a background-only image,
        which is trained on).
        """
        info = self.image_info[image_id]
        h, w = info.get("height"), info.get("width")
        if h is None or w is None:
            h, w = self.load_image(image_id).shape[:2]
        return np.zeros((h, w, 0), dtype=bool), np.zeros((0,), dtype=np.int32)

    def load_ignore_mask(self, image_id: int) -> np.ndarray | None:
        """Optional ``[H, W]`` bool of regions to ignore in training (COCO crowd regions)."""
        return None

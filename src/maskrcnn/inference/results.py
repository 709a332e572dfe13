"""Detections of one image and their conversions (COCO results, Matterport's dict).

:class:`InstanceResults` holds what every result type shares (class names, score filter, COCO
results); :class:`Detections` (full-size masks) and
:class:`maskrcnn.inference.tiling.TiledDetections` (masks cropped to each instance) add how their
masks are stored: ``select(indices)`` and ``rle()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

__all__ = ["InstanceResults", "Detections"]

ResultsT = TypeVar("ResultsT", bound="InstanceResults")


class InstanceResults:
    """Shared behaviour of per-image results with ``boxes [N, 4]`` xyxy, ``class_ids [N]``,
    ``scores [N]``, ``class_names`` and ``file_name`` attributes; subclasses implement
    :meth:`select` and :meth:`rle`."""

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    file_name: str | None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.class_names[c] if c < len(self.class_names) else str(c) for c in self.class_ids.tolist()]

    def select(self: ResultsT, indices: np.ndarray) -> ResultsT:
        """The detections at ``indices`` (in that order), as a new object of the same type."""
        raise NotImplementedError

    def rle(self) -> list[dict]:
        """COCO RLE (``counts`` as str) of each mask at the full image size."""
        raise NotImplementedError

    def filter(self: ResultsT, min_score: float) -> ResultsT:
        """The detections scoring at least ``min_score``."""
        return self.select(np.flatnonzero(self.scores >= min_score))

    def to_coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict]:
        """COCO results: ``image_id``, ``category_id``, ``bbox`` (x, y, w, h), ``score``, ``segmentation`` (RLE),
        plus ``file_name`` when known. ``category_ids[class_id]`` maps class ids to dataset ids."""
        out = []
        for box, cid, score, seg in zip(self.boxes.tolist(), self.class_ids.tolist(), self.scores.tolist(), self.rle()):
            x1, y1, x2, y2 = box
            d = {"image_id": int(image_id), "category_id": int(category_ids[cid] if category_ids else cid),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score), "segmentation": seg}
            if self.file_name is not None:
                d["file_name"] = self.file_name
            out.append(d)
        return out


@dataclass
class Detections(InstanceResults):
    """Detections of one image, in its original pixel coordinates.

    Attributes:
        boxes: ``[N, 4]`` float32 ``(x1, y1, x2, y2)``; x2/y2 are exclusive edges.
        class_ids: ``[N]`` int64 class ids (1..num_classes-1; 0 is background).
        scores: ``[N]`` float32, sorted descending.
        masks: ``[N, H, W]`` bool at the original image size.
        class_names: the model's class names (index = class id).
        image_size: ``(H, W)``.
        file_name: source file name when detected from a path.
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    class_names: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    file_name: str | None = None

    def select(self, indices: np.ndarray) -> "Detections":
        return Detections(self.boxes[indices], self.class_ids[indices], self.scores[indices], self.masks[indices],
                          self.class_names, self.image_size, self.file_name)

    def rle(self) -> list[dict]:
        """COCO RLE (``counts`` as str) of each mask."""
        from ..data.rle import encode_masks

        return encode_masks(self.masks)

    def to_matterport(self) -> dict[str, np.ndarray]:
        """Matterport's ``detect`` dict: ``rois [N, (y1, x1, y2, x2)]`` int32, ``class_ids``, ``scores``,
        ``masks [H, W, N]`` bool."""
        rois = np.round(self.boxes[:, [1, 0, 3, 2]]).astype(np.int32).reshape(-1, 4)
        h, w = self.image_size
        masks = self.masks.transpose(1, 2, 0) if len(self) else np.zeros((h, w, 0), dtype=bool)
        return {"rois": rois, "class_ids": self.class_ids.astype(np.int32), "scores": self.scores.astype(np.float32),
                "masks": masks}

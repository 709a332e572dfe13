"""Typed containers passed between the stages: a training :class:`Batch` and an :class:`ImageBatch`.

* :class:`Batch` is one loader batch of training samples (what ``data.pipeline.collate`` returns
  and the engine trains on): images and targets of the samples that loaded, and the samples that
  did not.
* :class:`ImageBatch` is what the model's input transform
  (:class:`maskrcnn.modeling.transform.InputTransform`) gives the network: one padded tensor and,
  per image, the geometry that maps results back to the original pixels.

Coordinates: sizes are ``(height, width)``, windows ``(y1, x1, y2, x2)`` integer pixels (y2/x2
exclusive), as in :class:`maskrcnn.data.resize.ResizeInfo`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .data.resize import ResizeInfo

__all__ = ["Batch", "ImageBatch"]


@dataclass
class Batch:
    """One loader batch of training samples; unpacks as ``images, targets, skipped = batch``.

    Attributes:
        images: float ``[C, H, W]`` images in [0, 1], resized by the data pipeline, not padded.
        targets: one target dict per image (the training-sample contract of ``docs/design.md``).
        skipped: the samples that failed to load: the pipeline's ``SkippedSample`` objects, or
            (after :func:`maskrcnn.engine.loader.unpack_batch`) their ``"reference (message)"`` lines.
    """

    images: list[Tensor]
    targets: list[dict[str, Any]]
    skipped: list[Any] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.images, self.targets, self.skipped))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ImageBatch:
    """Images ready for the network, with the geometry of each (see the module doc).

    Attributes:
        tensor: ``[B, C, H, W]`` float, normalised, each image zero-padded bottom/right to the
            batch's size (a multiple of ``Config.size_divisibility``).
        image_sizes: ``(h, w)`` of each image inside ``tensor``: after resizing, including the
            padding of Matterport's ``square`` / ``pad64`` modes (what proposals and detections
            are clipped to).
        windows: ``(y1, x1, y2, x2)`` of each image's real (non-padding) pixels in ``tensor``.
        original_sizes: ``(H, W)`` of each image before resizing.
        resizes: each image's :class:`~maskrcnn.data.resize.ResizeInfo` (``None`` when the images
            came already resized, as in training).
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    windows: list[tuple[int, int, int, int]]
    original_sizes: list[tuple[int, int]]
    resizes: list[ResizeInfo] | None = None

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(H, W)`` of ``tensor``."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])

    @property
    def scales(self) -> list[float]:
        """Each image's resize scale (1.0 when not resized here)."""
        return [1.0] * len(self) if self.resizes is None else [r.scale for r in self.resizes]

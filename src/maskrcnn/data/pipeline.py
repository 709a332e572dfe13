"""The training data pipeline: a ``torch.utils.data.Dataset`` of ``(image, target)`` and ``collate``.

Implements the "Training sample contract" of ``docs/design.md``. Per sample:

1. ``dataset.load_image`` -> ``[H, W, C]``; the channel count must equal
   ``Config.image_channel_count`` (a mismatch is a ``DataError``, never a silent conversion).
2. ``dataset.load_mask`` -> ``[H, W, N]`` bool + ``[N]`` class ids; checked (mask count equals
   class id count, mask size equals image size, ids in ``1..num_classes-1``), moved to
   ``[N, H, W]`` uint8, empty masks dropped, at most ``max_gt_instances`` kept (random choice).
   ``dataset.load_ignore_mask`` -> optional ``[H, W]`` bool, checked likewise.
3. ``train=True``: flips / 90-degree rotations (:meth:`Augmentation.geometric`).
4. Resize per ``Config.image_resize_mode`` (:func:`maskrcnn.data.resize.resize_image`: the geometry
   of :func:`~maskrcnn.data.resize.plan_resize`, the rule the model's input transform uses at
   inference), the scale jitter multiplied into the resize scale; masks and ignore mask get the
   same geometry. A size the mode cannot resize is a ``DataError`` (the sample is skipped).
5. ``train=True``: random crop and photometric changes (:meth:`Augmentation.after_resize`), then
   ``augment_fn(sample, rng, image_id)`` when given (e.g. Matterport's imgaug ``augmentation``,
   :mod:`maskrcnn.compat.mrcnn.model`).
6. Instances with fewer than ``aug_min_area`` pixels (training) or no pixel left are dropped;
   boxes are recomputed from the masks; optional mini-masks (``Config.use_mini_mask``).

Background-only images give ``N = 0`` targets; they are never skipped.

**Skipped samples.** When preparing a sample raises :class:`~maskrcnn.errors.DataError` (an
unreadable image, a wrong channel count, masks that do not fit the image ...), ``__getitem__``
returns a :class:`SkippedSample` ``(index, image_id, reference, message)`` instead of
``(image, target)`` (with ``skip_errors=False`` the error is raised). It is a small picklable
object, so it crosses DataLoader worker processes; :func:`collate` removes it from the batch and
returns it in ``Batch.skipped`` (:class:`maskrcnn.structures.Batch`), which the trainer logs
(reference = the file) and counts. A batch may therefore hold fewer images than requested, or
none. Other exceptions (bugs) are raised.

**Randomness.** Every random choice of a sample comes from
``numpy.random.default_rng([seed, epoch, index])``: a sample depends only on
``(seed, epoch, index)``, not on the worker that loads it or on the order, so a resumed run
reproduces it exactly. Call :meth:`TrainingDataset.set_epoch` before creating each epoch's
DataLoader iterator (it is copied into non-persistent workers at that moment), or index the dataset
with ``(epoch, index)`` pairs (e.g. from the sampler), which works with persistent workers too.
With ``train=False`` the epoch is always 0 (only the ``crop`` resize mode draws anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import DataError, first_line
from ..structures import Batch
from .augment import Augmentation, Sample, boxes_from_masks, build_augmentation
from .dataset import Dataset
from .images import check_channels, to_float_tensor
from .minimask import minimize_masks
from .resize import resize_image
from .validate import check_load_mask

__all__ = ["TrainingDataset", "SkippedSample", "Batch", "collate"]


@dataclass(frozen=True)
class SkippedSample:
    """A sample that could not be prepared; returned by ``TrainingDataset[i]`` instead of a pair.

    Attributes:
        index: position in the ``TrainingDataset``.
        image_id: the dataset's internal image id.
        reference: ``dataset.image_reference(image_id)`` (usually the file path).
        message: the one-line ``DataError`` message.
    """

    index: int
    image_id: int
    reference: str
    message: str

    def __str__(self) -> str:
        return f"skipped {self.reference}: {self.message}"


def collate(batch: list[Any]) -> Batch:
    """Split a list of samples into ``Batch(images, targets, skipped)``.

    ``(image, target)`` pairs go to ``images`` / ``targets`` (same order);
    :class:`SkippedSample` items (and ``None``) are left out of them, the former listed in
    ``skipped``. Images are not padded (the model pads to ``size_divisibility``).
    """
    images: list[torch.Tensor] = []
    targets: list[dict[str, Any]] = []
    skipped: list[SkippedSample] = []
    for item in batch:
        if item is None:
            continue
        if isinstance(item, SkippedSample):
            skipped.append(item)
            continue
        image, target = item
        images.append(image)
        targets.append(target)
    return Batch(images, targets, skipped)


class TrainingDataset(torch.utils.data.Dataset):
    """``(image, target)`` samples for the model from a :class:`~maskrcnn.data.Dataset`.

    Args:
        dataset: a prepared Matterport-style dataset.
        config: resize mode and sizes, mini-masks, ``max_gt_instances``, ``aug_*``,
            ``image_channel_count``, ``num_classes``.
        train: apply augmentation (and the ``aug_min_area`` filter).
        seed: base of every random choice (usually ``Config.seed``).
        skip_errors: return :class:`SkippedSample` for a ``DataError`` (default) instead of raising.
        augment_fn: ``(Sample, rng, image_id) -> Sample`` applied after the built-in augmentation
            (training only); it may change pixels, masks and labels but not the image size.

    Items: ``(image float32 [C, H, W] in [0, 1], target)`` with ``target`` = ``boxes`` float32
    ``[N, 4]`` xyxy, ``labels`` int64 ``[N]``, ``masks`` uint8 ``[N, H, W]`` (or ``[N, mh, mw]``
    mini-masks, see :mod:`maskrcnn.data.minimask`), ``ignore`` bool ``[H, W]`` (only when the
    dataset has one), ``image_id`` int, ``orig_size`` ``(H, W)`` before resizing, ``window``
    ``(y1, x1, y2, x2)`` of the real (non-padding) pixels.
    """

    #: the trainer batches a ready ``TrainingDataset`` with this (``engine.loader.as_training_dataset``)
    collate = staticmethod(collate)

    def __init__(self, dataset: Dataset, config: Config, train: bool = True, seed: int = 0,
                 skip_errors: bool = True,
                 augment_fn: Callable[[Sample, np.random.Generator, int], Sample] | None = None) -> None:
        self.dataset = dataset
        self.config = config
        self.train = train
        self.seed = int(seed)
        self.skip_errors = skip_errors
        self.epoch = 0
        self.augmentation: Augmentation = build_augmentation(config)
        self.augment_fn = augment_fn
        self.image_ids = np.asarray(dataset.image_ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices plain integer indexes use."""
        self.epoch = int(epoch)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of sample ``index`` in ``epoch`` (default: the current epoch)."""
        e = (self.epoch if epoch is None else int(epoch)) if self.train else 0
        return np.random.default_rng([self.seed, e, int(index)])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]] | SkippedSample:
        if isinstance(item, tuple):
            epoch, index = int(item[0]), int(item[1])
        else:
            epoch, index = self.epoch, int(item)
        image_id = int(self.image_ids[index])
        try:
            return self.load(index, epoch)
        except DataError as exc:
            if not self.skip_errors:
                raise
            return SkippedSample(index, image_id, self._reference(image_id), first_line(exc))

    def _reference(self, image_id: int) -> str:
        try:
            return str(self.dataset.image_reference(image_id))
        except Exception:  # noqa: BLE001 - a reference is only for messages
            return f"image {image_id}"

    # ------------------------------------------------------------------ one sample
    def load(self, index: int, epoch: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Prepare sample ``index`` (raises ``DataError`` instead of returning a skip)."""
        cfg = self.config
        rng = self.rng(index, epoch)
        image_id = int(self.image_ids[index])
        ref = self._reference(image_id)

        image, masks, labels, ignore = self._load_raw(image_id, ref)
        orig_size = (int(image.shape[0]), int(image.shape[1]))

        # empty masks out, then the cap (random choice, order kept)
        keep = masks.any(axis=(1, 2))
        if not keep.all():
            masks, labels = masks[keep], labels[keep]
        if len(masks) > cfg.max_gt_instances:
            chosen = np.sort(rng.choice(len(masks), cfg.max_gt_instances, replace=False))
            masks, labels = masks[chosen], labels[chosen]

        sample = Sample(image, masks, labels, ignore)
        aug = self.augmentation
        if self.train:
            sample = aug.geometric(sample, rng)
        jitter = aug.scale_factor(rng) if self.train else 1.0

        tensor = to_float_tensor(np.ascontiguousarray(sample.image))
        tensor, info = resize_image(tensor, cfg.image_resize_mode, cfg.image_min_dim, cfg.image_max_dim,
                                    cfg.image_min_scale, jitter=jitter, rng=rng, name=ref)
        sample = Sample(
            tensor.permute(1, 2, 0).numpy(),
            info.resize_masks(sample.masks),
            sample.labels,
            None if sample.ignore is None else info.resize_masks(np.ascontiguousarray(sample.ignore)[None].astype(np.uint8))[0].astype(bool),
            info.window,
        )
        if self.train:
            sample = aug.after_resize(sample, rng)
            if self.augment_fn is not None:
                size = sample.size
                sample = self.augment_fn(sample, rng, image_id)
                if sample.size != size or sample.masks.shape[1:] != size:
                    raise DataError(f"{ref}: the augmentation changed the image size from {size[0]}x{size[1]} to "
                                    f"{sample.size[0]}x{sample.size[1]}; use augmenters that keep the size")

        min_area = max(1, cfg.aug_min_area) if self.train else 1
        masks = np.ascontiguousarray(sample.masks)
        keep = masks.sum(axis=(1, 2), dtype=np.int64) >= min_area
        masks, labels = masks[keep], sample.labels[keep]
        boxes = boxes_from_masks(masks)
        if cfg.use_mini_mask:
            masks = minimize_masks(masks, boxes, tuple(cfg.mini_mask_shape))

        out_image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1), dtype=np.float32))
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
            "image_id": image_id,
            "orig_size": orig_size,
            "window": tuple(int(v) for v in sample.full_window()),
        }
        if sample.ignore is not None:
            target["ignore"] = torch.from_numpy(np.ascontiguousarray(sample.ignore, dtype=bool))
        return out_image, target

    def _load_raw(self, image_id: int, ref: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Image ``[H, W, C]``, masks ``[N, H, W]`` uint8, labels ``[N]`` int64, ignore ``[H, W]`` bool, validated."""
        cfg = self.config
        image = np.asarray(self.dataset.load_image(image_id))
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise DataError(f"{ref}: load_image returned shape {image.shape}; return an [H, W, C] array")
        check_channels(image, cfg.image_channel_count, ref)
        h, w = image.shape[:2]

        raw_masks, class_ids = self.dataset.load_mask(image_id)
        loaded = check_load_mask(raw_masks, class_ids, (h, w), cfg.num_classes)
        if loaded.problems:
            raise DataError(f"{ref}: {loaded.problems[0].message}")
        # a [N, H, W] view of the [H, W, N] array, not a copy: the crop resize mode then copies only
        # the crop's source region (dense images hold hundreds of full-size masks)
        masks = np.moveaxis(loaded.masks, 2, 0).view(np.uint8)

        ignore = self.dataset.load_ignore_mask(image_id)
        if ignore is not None:
            ignore = np.asarray(ignore)
            if ignore.shape != (h, w):
                raise DataError(f"{ref}: ignore mask is {ignore.shape} but the image is {h}x{w}; "
                                "load_ignore_mask must return an [H, W] bool array")
            ignore = ignore != 0
        return image, masks, loaded.class_ids, ignore

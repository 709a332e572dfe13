"""From a dataset to batches on the device: wrapping, class statistics, loaders, batch unpacking.

The trainer accepts either a Matterport-style :class:`maskrcnn.data.Dataset` (wrapped here in
``maskrcnn.data.pipeline.TrainingDataset``) or a ready ``torch.utils.data.Dataset`` whose items
follow the training-sample contract of ``docs/design.md`` (``(image, target)`` or ``None``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..structures import Batch
from .samplers import TrainingSampler

__all__ = [
    "Batch",
    "as_training_dataset",
    "base_dataset",
    "default_collate",
    "image_class_ids",
    "class_statistics",
    "build_loader",
    "unpack_batch",
    "move_to_device",
    "image_references",
]


def as_training_dataset(dataset: Any, config: Config, train: bool, seed: int) -> tuple[Any, Callable]:
    """(torch dataset, collate function) for ``dataset``.

    A :class:`maskrcnn.data.Dataset` is wrapped in the data pipeline's ``TrainingDataset``; any
    other object is used as is, with its own ``collate`` attribute when it has one.
    """
    from ..data.dataset import Dataset

    if isinstance(dataset, Dataset):
        from ..data import pipeline

        return pipeline.TrainingDataset(dataset, config, train=train, seed=seed), pipeline.collate
    return dataset, getattr(dataset, "collate", default_collate)


def default_collate(batch: Sequence[Any]) -> Batch:
    """Drop ``None`` items (failed samples) and split the rest into images and targets."""
    kept = [b for b in batch if b is not None]
    skipped = ["<unknown>"] * (len(batch) - len(kept))
    return Batch([b[0] for b in kept], [b[1] for b in kept], skipped)


def unpack_batch(batch: Any) -> Batch:
    """Normalise what a collate function returned into a :class:`Batch`.

    Accepted: a :class:`~maskrcnn.structures.Batch` or another object with ``images``, ``targets``
    and optionally ``skipped``; a tuple ``(images, targets)`` or ``(images, targets, skipped)``.
    Skipped samples become ``"reference (message)"`` lines.
    """
    if hasattr(batch, "images") and hasattr(batch, "targets"):
        return Batch(list(batch.images), list(batch.targets), [_describe_skip(s) for s in getattr(batch, "skipped", []) or []])
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        skipped = [_describe_skip(s) for s in batch[2]] if len(batch) == 3 and batch[2] else []
        return Batch(list(batch[0]), list(batch[1]), skipped)
    raise TypeError(f"collate returned {type(batch).__name__}; expected (images, targets[, skipped])")


def _describe_skip(item: Any) -> str:
    """``"reference (message)"`` of a pipeline ``SkippedSample``, or ``str(item)``."""
    ref = getattr(item, "reference", None)
    if ref is None:
        return str(item)
    message = getattr(item, "message", "")
    return f"{ref} ({message})" if message else str(ref)


def base_dataset(dataset: Any) -> Any:
    """The Matterport-style dataset under a training wrapper (or ``dataset`` itself)."""
    seen = 0
    while hasattr(dataset, "dataset") and seen < 4 and not hasattr(dataset, "load_mask"):
        dataset = dataset.dataset
        seen += 1
    return dataset


def image_references(dataset: Any, targets: Sequence[dict[str, Any]]) -> list[str]:
    """File names (or ``source:id``) of the images of ``targets``, for messages."""
    base = base_dataset(dataset)
    out = []
    for t in targets:
        image_id = t.get("image_id")
        if image_id is None:
            continue
        image_id = int(image_id)
        ref = base.image_reference(image_id) if hasattr(base, "image_reference") else str(image_id)
        out.append(str(ref))
    return out


def image_class_ids(dataset: Any) -> list[np.ndarray] | None:
    """Class ids of the instances of every image, or None when the dataset cannot tell.

    Entry ``k`` belongs to item ``k`` of ``dataset`` (through its ``image_ids`` when it wraps a
    Matterport dataset). Uses, in order: ``dataset.image_class_ids(i)``; ``image_info[i]["class_ids"]``; the source
    class ids of ``image_info[i]["instances"]`` (annotation formats); the class ids of
    ``load_mask(i)`` (loads each image's masks once). An image whose masks cannot be loaded
    counts as having no instances.
    """
    base = base_dataset(dataset)
    ids = getattr(dataset, "image_ids", None)
    ids = [int(i) for i in ids] if ids is not None and len(ids) == len(dataset) else list(range(len(base)))
    if hasattr(base, "image_class_ids") and callable(base.image_class_ids):
        return [np.asarray(base.image_class_ids(i), dtype=np.int64).ravel() for i in ids]
    if not hasattr(base, "load_mask"):
        return None
    out = []
    for i in ids:
        info = base.image_info[i] if hasattr(base, "image_info") else {}
        if "class_ids" in info:
            out.append(np.asarray(info["class_ids"], dtype=np.int64).ravel())
            continue
        registered = _registered_class_ids(base, info)
        if registered is not None:
            out.append(registered)
            continue
        try:
            out.append(np.asarray(base.load_mask(i)[1], dtype=np.int64).ravel())
        except Exception:  # noqa: BLE001 - a broken sample is reported when it is trained on
            out.append(np.zeros(0, dtype=np.int64))
    return out


def _registered_class_ids(base: Any, info: dict[str, Any]) -> np.ndarray | None:
    """Class ids of an annotation-format image from its registered ``instances`` (no rasterising)."""
    instances = info.get("instances")
    if not isinstance(instances, list) or not hasattr(base, "class_from_source_map"):
        return None
    ids = []
    for inst in instances:
        key = f"{info.get('source')}.{inst.get('class_id') if isinstance(inst, dict) else None}"
        if key not in base.class_from_source_map:
            return None
        ids.append(base.class_from_source_map[key])
    return np.asarray(ids, dtype=np.int64)


def class_statistics(class_ids: Sequence[np.ndarray], num_classes: int, factors: np.ndarray | None = None) -> dict[str, list]:
    """Per class: images containing it, instances, and expected instances per epoch under ``factors``."""
    images = np.zeros(num_classes, dtype=np.int64)
    instances = np.zeros(num_classes, dtype=np.int64)
    expected = np.zeros(num_classes, dtype=np.float64)
    for i, ids in enumerate(class_ids):
        ids = ids[(ids >= 0) & (ids < num_classes)]
        counts = np.bincount(ids, minlength=num_classes)
        instances += counts
        images += counts > 0
        expected += counts * (1.0 if factors is None else factors[i])
    return {"images": images.tolist(), "instances": instances.tolist(), "expected": expected.tolist()}


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: Any,
    collate: Callable,
    sampler: TrainingSampler,
    batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over ``sampler``'s current epoch.

    Its generator is private and seeded from ``(seed, epoch, rank)``, so creating a loader never
    draws from the global torch generator (an exact resume depends on that).
    """
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + sampler.epoch * 101 + sampler.rank) % 2**63)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=g,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=False,
    )


def move_to_device(batch: Batch, device: torch.device) -> Batch:
    """Images and target tensors on ``device`` (non-blocking from pinned memory)."""
    nb = device.type == "cuda"
    images = [im.to(device, non_blocking=nb) for im in batch.images]
    targets = [{k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in batch.targets]
    return Batch(images, targets, batch.skipped)

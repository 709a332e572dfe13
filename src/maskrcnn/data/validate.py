"""The ``Dataset.load_mask`` contract, checked in one place (training pipeline and data checker).

``load_mask(image_id)`` returns ``(masks, class_ids)``: masks ``[H, W, N]`` (bool, or any
numeric type where non-zero is inside) of the image's height and width, and ``N`` class ids,
integers in ``1..num_classes-1`` (internal ids). ``N = 0`` is a background-only image; an empty
``[0]``-sized 2-D array is accepted for it.

:func:`check_load_mask` returns the masks as bool, the ids as int64 and every violation as a
:class:`MaskProblem`; the pipeline raises the first one as a :class:`~maskrcnn.errors.DataError`,
the data checker lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MaskProblem", "LoadedMasks", "check_load_mask"]


@dataclass(frozen=True)
class MaskProblem:
    """One violation of the contract.

    ``kind``: ``mask_shape`` (not ``[H, W, N]``), ``count_mismatch`` (N masks, another number of
    ids), ``size_mismatch`` (masks not of the image's size) or ``undeclared_class`` (an id
    outside ``1..num_classes-1``, or not an integer; ``instance`` is its index).
    """

    kind: str
    message: str
    instance: int | None = None


@dataclass(frozen=True)
class LoadedMasks:
    """What :func:`check_load_mask` returns.

    ``masks``: ``[H, W, N]`` bool, or None when the array is not ``[H, W, N]`` at all.
    ``class_ids``: ``[N]`` int64 (undeclared ids kept as given, rounded; see ``declared``).
    ``declared``: ``[N]`` bool, True where the class id is valid.
    """

    masks: np.ndarray | None
    class_ids: np.ndarray
    declared: np.ndarray
    problems: list[MaskProblem]


def check_load_mask(masks: Any, class_ids: Any, image_size: tuple[int, int] | None, num_classes: int,
                    class_names: list[str] | None = None) -> LoadedMasks:
    """Check what ``load_mask`` returned against the image size ``(H, W)`` (None: unknown) and the
    class count (background included). ``class_names`` only improves the messages."""
    problems: list[MaskProblem] = []
    masks = np.asarray(masks)
    ids = np.asarray(class_ids).reshape(-1)
    if masks.ndim == 2 and masks.size == 0 and image_size is not None:
        masks = np.zeros((*image_size, 0), dtype=bool)
    if masks.ndim != 3:
        problems.append(MaskProblem("mask_shape", f"load_mask returned masks of shape {masks.shape}; return [H, W, N] "
                                    "bool (N instances, possibly 0)"))
        return LoadedMasks(None, np.zeros((0,), dtype=np.int64), np.zeros((0,), dtype=bool), problems)
    if masks.dtype != bool:
        masks = masks != 0
    n = masks.shape[2]
    if len(ids) != n:
        problems.append(MaskProblem("count_mismatch", f"load_mask returned {n} masks but {len(ids)} class ids; "
                                    "return one class id per mask"))
    if image_size is not None and masks.shape[:2] != tuple(image_size):
        h, w = image_size
        problems.append(MaskProblem("size_mismatch", f"masks are {masks.shape[1]}x{masks.shape[0]} but the image is "
                                    f"{w}x{h} (WxH); masks must have the image's height and width"))
    ids = ids[:n]
    integral = (np.issubdtype(ids.dtype, np.integer) or (np.issubdtype(ids.dtype, np.floating)
                                                         and bool(np.isfinite(ids).all()) and bool((ids == np.round(ids)).all())))
    if ids.dtype == bool or not integral:
        declared = np.zeros(len(ids), dtype=bool)
        as_int = np.zeros(len(ids), dtype=np.int64)
    else:
        as_int = ids.astype(np.int64)
        declared = (as_int >= 1) & (as_int < num_classes)
    names = ", ".join((class_names or [])[1:6]) + ("..." if num_classes > 6 else "")
    for i in np.flatnonzero(~declared).tolist():
        problems.append(MaskProblem(
            "undeclared_class", f"class id {ids[i].item()!r} is not a declared class (ids 1..{num_classes - 1}"
            + (f": {names}" if names else "") + "); use internal ids (map_source_class_id), register the class "
            "with add_class() or fix the label, and set num_classes to the class count including background", i))
    return LoadedMasks(masks, as_int, declared, problems)

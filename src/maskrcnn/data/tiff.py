"""TIFF layout rules shared by the image reader and tiled detection (re-exported by
:mod:`maskrcnn.data.images`): which axes of a tifffile series are the image and which the channels.

A series is squeezed (singleton axes dropped, never Y or X); what remains must be ``[H, W]`` or
three axes, one of them channels: a named ``S`` (samples) or ``C`` axis, else the smaller of the
first and last axis (the first on a tie).
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError

__all__ = ["tiff_channel_axis", "tiff_squeeze", "tiff_orientation", "tiff_hwc"]


def tiff_channel_axis(shape: tuple[int, ...], axes: str) -> int | None:
    """Index of the channel axis of a (squeezed, see :func:`tiff_squeeze`) TIFF series shape, None for 2-D.

    A named ``S`` (samples) or ``C`` axis wins; otherwise (e.g. ``"QYX"``, a stack of pages) the
    smaller of the first and last axis holds the channels.
    """
    if len(shape) == 2:
        return None
    for letter in ("S", "C"):
        if letter in axes:
            return axes.index(letter)
    return 2 if shape[2] < shape[0] else 0


def tiff_squeeze(shape: tuple[int, ...], axes: str, name: str) -> tuple[tuple[int, ...], str, list[int]]:
    """Drop singleton axes (never Y or X) of a TIFF series; return the new shape, axes and the kept
    indices. Raises :class:`DataError` when more than 3 axes remain (not one image with channels)."""
    keep = [i for i, (n, a) in enumerate(zip(shape, axes)) if n != 1 or a in "YX"]
    if len(keep) < 2:
        keep = list(range(len(shape)))[-2:]
    new_shape = tuple(shape[i] for i in keep)
    new_axes = "".join(axes[i] for i in keep) if len(axes) == len(shape) else ""
    if len(new_shape) > 3:
        raise DataError(
            f"cannot read image {name}: TIFF with shape {tuple(shape)} (axes {axes}) is not one 2-D image "
            "with channels; save one image per file as [H, W, C] or [C, H, W]"
        )
    return new_shape, new_axes, keep


def tiff_orientation(tif: Any) -> int:
    """Orientation tag (274) of the first page of an open ``tifffile.TiffFile``; 1 when absent or malformed."""
    try:
        tag = tif.pages[0].tags.get(274)
        return int(tag.value) if tag is not None else 1
    except Exception:
        return 1


def tiff_hwc(shape: tuple[int, ...], ch: int | None) -> tuple[int, int, int]:
    """``(H, W, C)`` of a squeezed TIFF series shape with channel axis ``ch`` (None: one channel)."""
    hw = [n for i, n in enumerate(shape) if i != ch]
    return hw[0], hw[1], (shape[ch] if ch is not None else 1)

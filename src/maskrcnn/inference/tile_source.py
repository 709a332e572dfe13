"""An image read region by region, for tiled detection of images larger than memory allows twice.

:func:`open_tiled_image` wraps a path, numpy array (or memory map), ``[C, H, W]`` tensor or PIL
image in a :class:`TileSource` without decoding or copying more than the format requires: numpy
arrays and memory maps are sliced without copying; uncompressed TIFFs are memory-mapped; PNG/JPEG
are decoded once by PIL and cropped per tile; anything else is read whole by
:func:`maskrcnn.data.images.read_image`. Each region comes out as the reader would return it
(``[h, w, C]`` uint8/uint16/float32).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["TileSource", "open_tiled_image"]

class TileSource:
    """An image read region by region: ``height``, ``width``, ``read(x0, y0, x1, y1) -> [h, w, C]``.

    ``kind`` says how it is held: ``"array"`` (an array in memory, sliced), ``"memmap"`` (a file
    mapped into memory, read on access), ``"pil"`` (decoded once by PIL, cropped per tile).
    ``nbytes`` is the size of the decoded image.
    """

    def __init__(self, array: Any = None, pil: Any = None, kind: str = "array", name: str = "image",
                 normalise: bool = False, owned: bool = False) -> None:
        self.array, self.pil, self.kind, self.name, self._normalise = array, pil, kind, name, normalise
        self._owned = owned  # a PIL image this module opened (closed by close()), not the caller's
        if pil is not None:
            self.width, self.height = pil.size
            bands = len(pil.getbands()) if pil.mode not in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV") else 3
            depth = 2 if pil.mode.startswith("I;16") else 4 if pil.mode in ("I", "F") else 1
            self.nbytes = self.width * self.height * bands * depth
        else:
            self.height, self.width = int(array.shape[0]), int(array.shape[1])
            self.nbytes = int(np.prod(array.shape)) * array.dtype.itemsize

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        from ..data.images import normalize_pixels, pil_image_to_array

        if self.pil is not None:
            return pil_image_to_array(self.pil.crop((x0, y0, x1, y1)), self.name)
        tile = self.array[y0:y1, x0:x1]
        return normalize_pixels(np.asarray(tile), self.name) if self._normalise else tile

    def close(self) -> None:
        if self.pil is not None and self._owned:
            self.pil.close()
        self.array = self.pil = None


@contextlib.contextmanager
def _no_pixel_limit() -> Iterator[None]:
    """Tiled detection is for huge images: lift PIL's decompression-bomb limit while opening one."""
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def open_tiled_image(image: Any, name: str | None = None) -> TileSource:
    """A :class:`TileSource` over a path, numpy array (or memmap), ``[C, H, W]`` tensor or PIL image,
    without decoding or copying more than the format requires (see the module doc)."""
    import torch

    if isinstance(image, TileSource):
        return image
    if isinstance(image, (str, os.PathLike)):
        return _open_path(Path(image))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise DataError(f"{name or 'image'}: tensor of shape {tuple(t.shape)}; expected [C, H, W] or [H, W]")
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return TileSource(array=t.permute(1, 2, 0).numpy(), name=name or "image")  # a view, no copy
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise DataError(f"{name or 'image'}: array of shape {image.shape}; expected [H, W] or [H, W, C]")
        return TileSource(array=image, kind="memmap" if isinstance(image, np.memmap) else "array",
                          name=name or "image")
    if hasattr(image, "mode") and hasattr(image, "size"):
        from ..data.images import EXIF_ORIENTATION_TAG as _EXIF_ORIENTATION

        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        if orientation != 1:
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
        return TileSource(pil=image, kind="pil", name=name or "image")
    raise DataError(f"{name or 'image'}: unsupported input type {type(image).__name__}; pass a path, numpy array, "
                    "tensor or PIL image")


def _open_path(path: Path) -> TileSource:
    from PIL import Image

    from ..data.images import TIFF_MAGIC as _TIFF_MAGIC, check_image_file as _check_file, \
        is_16bit_colour_png as _png_needs_16bit_decoder, pil_orientation as _pil_orientation, read_image

    _check_file(path)
    name = str(path)
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head[:4] in _TIFF_MAGIC:
        mapped = _memmap_tiff(path)
        if mapped is not None:
            return TileSource(array=mapped, kind="memmap", name=name, normalise=True)
    elif not (head[:8] == b"\x89PNG\r\n\x1a\n" and _png_needs_16bit_decoder(head)):
        try:
            with _no_pixel_limit():
                im = Image.open(path)
                if _pil_orientation(im) == 1:
                    im.load()  # decode once; tiles are crops of PIL's buffer
                    return TileSource(pil=im, kind="pil", name=name, owned=True)
                im.close()
        except Exception:  # let read_image report the problem in its words
            pass
    with _no_pixel_limit():
        return TileSource(array=read_image(path), name=name)


def _memmap_tiff(path: Path) -> np.ndarray | None:
    """The first series of an uncompressed, contiguous, unrotated TIFF as a read-only ``[H, W, C]``
    memory map (a view, nothing read yet); None when the file cannot be mapped."""
    import tifffile

    from ..data.images import tiff_channel_axis as _tiff_channel_axis, tiff_orientation as _tiff_orientation, \
        tiff_squeeze as _tiff_squeeze

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), str(series.axes)
            if _tiff_orientation(tif) != 1:
                return None
        arr = tifffile.memmap(path, mode="r")
        new_shape, new_axes, _ = _tiff_squeeze(shape, axes, str(path))
        arr = arr.reshape(new_shape)
        ch = _tiff_channel_axis(new_shape, new_axes)
        if ch is not None and ch != 2:
            arr = np.moveaxis(arr, ch, 2)
        return arr
    except Exception:
        return None

"""Reading images from disk with their real channel count and bit depth.

Every reader returns numpy ``[H, W, C]`` arrays, row ``y`` first, column ``x`` second, in the
orientation the image is *displayed* in (EXIF / TIFF orientation applied):

* ``uint8`` or ``uint16`` as stored (a 16-bit PNG stays 16-bit); ``float32`` for floating-point
  TIFFs (values kept as they are).
* Channels as stored: grayscale is ``[H, W, 1]``, gray+alpha ``[H, W, 2]``, RGB ``[H, W, 3]``,
  RGBA ``[H, W, 4]``, a multi-channel TIFF ``[H, W, C]`` for any ``C``. Palette images are
  expanded to RGB (their indices are not intensities); CMYK/YCbCr/LAB are converted to RGB.
* Multi-channel TIFFs are read with tifffile. Planar (channel-first, ``[C, H, W]``) and
  interleaved (channel-last) layouts both come back as ``[H, W, C]``: the file's own axes decide
  when it names them (``S`` samples or ``C`` channels); otherwise the smaller of the first and
  last axis is taken as the channel axis (the first on a tie).

Nothing is converted to match the model: :func:`check_channels` compares the channel count with
``Config.image_channel_count`` and raises a :class:`DataError` that says what to change.

A file that is missing, truncated or not an image raises :class:`DataError` naming it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "read_image",
    "decode_image",
    "image_size",
    "intensity_scale",
    "to_float_tensor",
    "check_channels",
    "read_label_image",
    "read_binary_mask",
    "apply_orientation",
    "IMAGE_EXTENSIONS",
]

#: File name extensions treated as images when scanning folders (lower case, with the dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_PIL_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}


# --------------------------------------------------------------------------- public API


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``[H, W, C]`` uint8/uint16 (float32 for float TIFFs), channels as stored.

    EXIF (and TIFF) orientation is applied, so the array is the image as viewers show it.
    Raises :class:`DataError` naming the file when it is missing, empty, truncated, not an image,
    or has a pixel type other than 8/16-bit integer or float.
    """
    path = Path(path)
    data = _read_bytes(path)
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, TIFF ... bytes) as :func:`read_image` does.

    ``name`` is only used in error messages (the file the bytes came from).
    """
    if not data:
        raise DataError(f"cannot read image {name}: empty file; re-export or remove it")
    try:
        if data[:4] in _TIFF_MAGIC:
            arr = _decode_tiff(io.BytesIO(data), name)
        elif data[:8] == _PNG_MAGIC and _png_needs_16bit_decoder(data):
            arr = _decode_png16(data, name)
        else:
            arr = _decode_pil(io.BytesIO(data), name)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib.error ...
        raise DataError(f"cannot read image {name}: {_reason(exc)}; re-export or remove it") from None
    return arr


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`read_image` would return it, reading only the header.

    EXIF orientations that swap the axes (5-8) are taken into account.
    """
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
            fh.seek(0)
            if magic in _TIFF_MAGIC:
                return _tiff_size(fh, str(path))
            with Image.open(fh) as im:
                w, h = im.size
                orientation = _pil_orientation(im, header_only=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {_reason(exc)}; re-export or remove it") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def intensity_scale(dtype: np.dtype) -> float | None:
    """What pixels of ``dtype`` are divided by to lie in ``[0, 1]``: 255 (uint8), 65535 (uint16),
    1 (bool, float); None for other types (not supported as images)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return 1.0
    return None


def to_float_tensor(arr: np.ndarray) -> "torch.Tensor":
    """``[H, W, C]`` (or ``[H, W]``) image -> float32 tensor ``[C, H, W]`` in ``[0, 1]``.

    uint8 is divided by 255, uint16 by 65535, bool maps to 0/1; float arrays are kept as they
    are (cast to float32).
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"expected an image of shape [H, W, C], got shape {tuple(arr.shape)}")
    scale = intensity_scale(arr.dtype)
    if scale is None:
        raise DataError(f"unsupported image pixel type {arr.dtype}; use uint8, uint16 or float images")
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32, copy=False))
    return t / scale if scale != 1.0 else t


def check_channels(arr: np.ndarray, expected: int, path: str | os.PathLike[str] | None) -> None:
    """Raise :class:`DataError` unless ``arr`` (``[H, W, C]`` or ``[H, W]``) has ``expected`` channels."""
    got = 1 if arr.ndim == 2 else int(arr.shape[-1])
    if got == expected:
        return
    name = Path(path).name if path is not None else "image"
    raise DataError(
        f"{name} has {got} channel{'s' if got != 1 else ''} but image_channel_count={expected}; "
        f"set image_channel_count: {got} (and {got} pixel_mean/pixel_std values) or convert the images"
        + (f" ({path})" if path is not None and str(path) != name else "")
    )


def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A label image (one integer value per instance, 0 background) as ``[H, W]`` integers.

    Palette PNGs give their palette indices; 8/16/32-bit PNG and TIFF are supported.
    Raises :class:`DataError` for multi-channel or floating-point label images.
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        if data[:4] in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                arr = tif.asarray()
            arr = np.squeeze(arr)
        else:
            with Image.open(io.BytesIO(data)) as im:
                orientation = _pil_orientation(im)
                # L, P, I, I;16*, 1 give one integer per pixel (palette indices for P, not colours).
                arr = apply_orientation(np.asarray(im), orientation)
    except Exception as exc:
        raise DataError(f"cannot read label image {path}: {_reason(exc)}; re-export or remove it") from None
    if arr.ndim != 2:
        raise DataError(
            f"label image {path} has shape {tuple(arr.shape)}; expected one integer per pixel "
            "(save it as a single-channel 8/16-bit PNG or TIFF with one value per instance)"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"label image {path} has pixel type {arr.dtype}; save instance ids as integers (uint8/uint16)")
    return arr


def read_binary_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A one-instance mask file as ``[H, W]`` bool: any non-zero value (in any channel) is inside."""
    arr = read_image(path)
    return np.any(arr != 0, axis=2)


def apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF/TIFF orientation code (1-8) to ``[H, W, ...]``, as PIL's ``exif_transpose`` does."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return np.swapaxes(arr, 0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return np.swapaxes(arr[::-1, ::-1], 0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


# --------------------------------------------------------------------------- helpers


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"cannot read image {path}: file not found; check the path or remove it from the annotations")
    if path.is_dir():
        raise DataError(f"cannot read image {path}: it is a folder; point to an image file")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}; check the file's permissions") from None


def _reason(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0].strip()
    low = text.lower()
    if isinstance(exc, UnidentifiedImageError) or "cannot identify image" in low:
        return "not an image or an unsupported format"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large for PIL's decompression-bomb limit (raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine)"
    if isinstance(exc, EOFError) or any(w in low for w in ("truncated", "broken", "unexpected end", "failed to read")):
        return "truncated file"
    return f"corrupt file ({type(exc).__name__}: {text})" if text else f"corrupt file ({type(exc).__name__})"


def _finish(arr: np.ndarray, name: str) -> np.ndarray:
    """Normalise dtype (native byte order; uint8, uint16 or float32) and ensure ``[H, W, C]``."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype == np.int32 or arr.dtype == np.int64 or arr.dtype == np.uint32:
        # PIL's "I" mode holds 16-bit data in int32; keep it when it fits.
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"cannot read image {name}: 32-bit pixel values outside 0..65535; convert it to 16-bit")
        arr = arr.astype(np.uint16)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"cannot read image {name}: unsupported pixel type {arr.dtype}; convert it to uint8, uint16 or float32")
    return np.ascontiguousarray(arr)


def _pil_orientation(im: Image.Image, header_only: bool = False) -> int:
    """EXIF orientation (1-8) of an opened image; 1 when absent or malformed.

    With ``header_only`` a PNG's pixel data is not decoded: only an eXIf chunk before the image
    data counts (PIL's ``getexif`` would decode the whole file to look behind it).
    """
    try:
        if header_only and im.format == "PNG":
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw if isinstance(raw, bytes) and raw.startswith(b"Exif") else b"Exif\x00\x00" + raw)
            return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF: ignore orientation rather than fail the image
        return 1


def _decode_pil(fh: BinaryIO, name: str) -> np.ndarray:
    with Image.open(fh) as im:
        orientation = _pil_orientation(im)
        im.load()
        if im.mode in _PIL_TO_RGB:
            im = im.convert("RGB")
        elif im.mode == "1":
            im = im.convert("L")
        arr = np.asarray(im)  # I;16B gives big-endian uint16, I gives int32: _finish normalises
    return _finish(apply_orientation(arr, orientation), name)


def _png_needs_16bit_decoder(data: bytes) -> bool:
    """True for 16-bit PNGs with colour or alpha, which PIL silently reduces to 8 bits."""
    if len(data) < 26 or data[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = data[24], data[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)


def _decode_png16(data: bytes, name: str) -> np.ndarray:
    import warnings

    import torch

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs (still working)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_png
        except ImportError:
            raise DataError(f"cannot read image {name}: 16-bit colour PNG needs torchvision's PNG decoder, which this "
                            "torchvision lacks; save the image as a 16-bit TIFF") from None
        t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    arr = t.permute(1, 2, 0).numpy()
    if arr.dtype != np.uint16:  # older torchvision returned int32 holding 16-bit values
        arr = arr.astype(np.uint16)
    with Image.open(io.BytesIO(data)) as im:
        orientation = _pil_orientation(im)
    return _finish(apply_orientation(arr, orientation), name)


def _tiff_channel_axis(shape: tuple[int, ...], axes: str) -> int | None:
    """Index of the channel axis of a 3-D TIFF series, or None for 2-D."""
    if len(shape) == 2:
        return None
    for letter in ("S", "C"):
        if letter in axes:
            return axes.index(letter)
    # No named channel axis (e.g. "QYX": a stack of pages): the smaller end axis holds channels.
    return 2 if shape[2] < shape[0] else 0


def _tiff_squeeze(shape: tuple[int, ...], axes: str, name: str) -> tuple[tuple[int, ...], str, list[int]]:
    """Drop singleton axes (never Y or X); return the new shape, axes and the kept indices."""
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


def _tiff_orientation(tif: Any) -> int:
    try:
        tag = tif.pages[0].tags.get(274)
        return int(tag.value) if tag is not None else 1
    except Exception:
        return 1


def _decode_tiff(fh: BinaryIO, name: str) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(fh) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
        arr = series.asarray()
        orientation = _tiff_orientation(tif)
    new_shape, new_axes, _ = _tiff_squeeze(shape, axes, name)
    arr = arr.reshape(new_shape)
    ch = _tiff_channel_axis(new_shape, new_axes)
    if ch is not None and ch != 2:
        arr = np.moveaxis(arr, ch, 2)
    return _finish(apply_orientation(arr, orientation), name)


def _tiff_size(fh: BinaryIO, name: str) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(fh) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
        orientation = _tiff_orientation(tif)
    new_shape, new_axes, _ = _tiff_squeeze(shape, axes, name)
    ch = _tiff_channel_axis(new_shape, new_axes)
    hw = [n for i, n in enumerate(new_shape) if i != ch]
    h, w = hw[0], hw[1]
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)

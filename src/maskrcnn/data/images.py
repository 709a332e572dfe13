"""Reading images from disk with their real channel count and bit depth, safely.

Every reader returns numpy ``[H, W, C]`` arrays, row ``y`` first, column ``x`` second, in the
orientation the image is *displayed* in (EXIF / TIFF orientation applied):

* ``uint8`` or ``uint16`` as stored (a 16-bit PNG stays 16-bit); ``float32`` for floating-point
  TIFFs (values kept as they are, but NaN or infinite values are an error).
* Channels as stored: grayscale is ``[H, W, 1]``, gray+alpha ``[H, W, 2]``, RGB ``[H, W, 3]``,
  RGBA ``[H, W, 4]``, a multi-channel TIFF ``[H, W, C]`` for any ``C``. Palette images are
  expanded to RGB (their indices are not intensities); CMYK/YCbCr/LAB are converted to RGB.
* Multi-channel TIFFs are read with tifffile. Planar (channel-first, ``[C, H, W]``) and
  interleaved (channel-last) layouts both come back as ``[H, W, C]``: the file's own axes decide
  when it names them (``S`` samples or ``C`` channels); otherwise the smaller of the first and
  last axis is taken as the channel axis (the first on a tie).

Nothing is converted to match the model: :func:`check_channels` compares the channel count with
``Config.image_channel_count`` and raises a :class:`DataError` that says what to change.

Hostile or damaged files never crash the process, hang it or exhaust its memory; each raises a
one-line :class:`DataError` naming the file and the fix:

* **Pixel limit** (Pillow's decompression-bomb guard, for every format and decoder), checked from
  the header before anything is decoded: ``H * W`` at most :func:`max_image_pixels` (default
  178,956,970, where Pillow refuses), ``H * W * C`` at most four times that. Set it with the
  environment variable ``MASKRCNN_MAX_IMAGE_PIXELS`` (a count; ``0`` or ``none`` disables it; it
  reaches data-loader workers and wins over the module setting) or in Python with
  ``maskrcnn.data.images.MAX_IMAGE_PIXELS = 400_000_000`` (``None`` disables). It replaces Pillow's.
* **Full decode checks**: a PNG's chunks (CRCs, ``IHDR``, ``IEND``) are checked before decoding
  (:mod:`maskrcnn.data.headers`), and so is the image data of 16-bit colour PNGs, whose libpng
  decoder (torchvision's) crashes the process on any error. Every image is decoded completely
  before use: a truncated or corrupt file is an error, never a partly black image.
* Missing files, folders, broken or looping symbolic links, pipes and devices are refused
  unopened; any decoder exception (``OSError``, ``ValueError``, ``MemoryError``, zlib, struct,
  tifffile errors) becomes a :class:`DataError` naming the file.

:func:`iter_image_files` is the one listing of the image files of a folder
(:data:`IMAGE_EXTENSIONS`), used by ``detect``, streaming and the dataset formats.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, MaskRCNNError, first_line
from .headers import PNG_MAGIC, check_png, png_header, webp_size
from .tiff import tiff_channel_axis, tiff_hwc, tiff_orientation, tiff_squeeze

if TYPE_CHECKING:
    import torch

__all__ = [
    "encoded_image_size", "decode_binary_mask",
    "read_image", "decode_image", "image_size", "intensity_scale", "to_float_tensor", "check_channels",
    "read_label_image", "read_binary_mask", "apply_orientation", "iter_image_files", "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_IMAGE_PIXELS", "MAX_IMAGE_PIXELS", "PIXEL_LIMIT_ENV", "max_image_pixels", "check_pixel_count",
    "check_image_file", "normalize_pixels", "pil_image_to_array", "pil_orientation", "is_16bit_colour_png",
    "tiff_squeeze", "tiff_channel_axis", "tiff_orientation", "TIFF_MAGIC", "PNG_MAGIC", "EXIF_ORIENTATION_TAG",
    "PIL_RGB_MODES",
]

#: File name extensions treated as images when scanning folders (lower case, with the dot).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".ppm", ".pgm")
#: First four bytes of a TIFF (little/big-endian, classic/BigTIFF).
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: The EXIF tag holding the orientation code (1-8).
EXIF_ORIENTATION_TAG = 0x0112
#: PIL modes converted to RGB when read (palette indices and other colour spaces are not intensities).
PIL_RGB_MODES = frozenset({"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"})

#: Default pixel limit (``H * W``): twice Pillow's ``MAX_IMAGE_PIXELS``, where Pillow refuses a file.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
#: The pixel limit in this process (``None`` or 0: no limit); ``MASKRCNN_MAX_IMAGE_PIXELS`` wins when set.
MAX_IMAGE_PIXELS: int | None = DEFAULT_MAX_IMAGE_PIXELS
#: The environment variable that sets the pixel limit (a count; 0 or "none" disables it).
PIXEL_LIMIT_ENV = "MASKRCNN_MAX_IMAGE_PIXELS"
_VALUES_PER_PIXEL_LIMIT = 4  # H * W * C may be at most 4 x the pixel limit (an RGBA image at the limit)
_PIL_LIMIT_LOCK = threading.Lock()
# tifffile logs what it finds wrong in a file; our DataError says it in one line: no last-resort stderr print
logging.getLogger("tifffile").addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- limits and listing


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``MASKRCNN_MAX_IMAGE_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`;
    None when disabled. A malformed variable is a :class:`MaskRCNNError` naming it."""
    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS or None
    if raw.lower() in ("none", "off", "no", "false", "unlimited"):
        return None
    try:
        value = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise MaskRCNNError(f"{PIXEL_LIMIT_ENV}={raw!r}: not a pixel count; set a whole number such as 400000000, "
                            "or 0 to disable the limit")
    return value or None


def check_pixel_count(height: int, width: int, channels: int = 1, name: str = "image") -> None:
    """Raise :class:`DataError` when an image of this size has no pixels or is over the limit
    (:func:`max_image_pixels` for ``H * W``, four times that for ``H * W * C``)."""
    if height < 1 or width < 1:
        raise DataError(f"cannot read image {name}: it has no pixels ({width} x {height}); re-export or remove it")
    limit = max_image_pixels()
    if limit is None:
        return
    pixels = int(height) * int(width)
    values = pixels * max(1, int(channels))
    if pixels <= limit and values <= _VALUES_PER_PIXEL_LIMIT * limit:
        return
    if pixels > limit:
        what, need = f"{width:,} x {height:,} = {pixels:,} pixels is over the limit of {limit:,}", pixels
    else:
        what = (f"{width:,} x {height:,} x {channels:,} channels = {values:,} values is over the limit of "
                f"{_VALUES_PER_PIXEL_LIMIT * limit:,} (4 x the pixel limit)")
        need = -(-values // _VALUES_PER_PIXEL_LIMIT)
    raise DataError(f"cannot read image {name}: {what}, a possible decompression bomb; if the image is genuine, "
                    f"raise the limit: {PIXEL_LIMIT_ENV}={need} (0 disables it)")


def iter_image_files(folder: str | os.PathLike[str], *, recursive: bool = True,
                     extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Iterator[Path]:
    """Image files under ``folder`` in the order of ``sorted(Path(folder).rglob("*"))``, lazily.

    Every entry whose name ends with one of ``extensions`` (any case) and that is not a folder is
    yielded, including broken or looping symbolic links and other non-files, so that reading it
    reports the problem instead of the file silently missing. Each directory is listed (and
    sorted) only when the walk reaches it, so memory holds the names of one directory per level.
    Directory symlinks are followed once (a link back to an ancestor is not walked again).
    Raises :class:`DataError` when ``folder`` is not a folder or cannot be listed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a folder of images, an image file or a video")
    exts = tuple(e.lower() for e in extensions)
    seen: set[str] = set()

    def walk(d: Path) -> Iterator[Path]:
        real = os.path.realpath(d)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted((e.name, _is_dir(e)) for e in it)
        except OSError as exc:
            raise DataError(f"{d}: cannot list the folder ({exc.strerror or exc}); check its permissions") from None
        for name, is_dir in entries:
            if is_dir:
                if recursive:
                    yield from walk(d / name)
            elif name.lower().endswith(exts):
                yield d / name

    yield from walk(root)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symbolic link loop: not a folder (listed, so that reading it reports the loop)
        return False


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``[H, W, C]`` uint8/uint16 (float32 for float TIFFs), channels as stored.

    EXIF (and TIFF) orientation is applied, so the array is the image as viewers show it.
    Raises :class:`DataError` naming the file when it is missing, not a regular file, empty,
    truncated, corrupt, not an image, over the pixel limit, holds NaN/infinite values, or has a
    pixel type other than 8/16-bit integer or float (see the module doc).
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
    with _decoding(name):
        if data[:4] in TIFF_MAGIC:
            arr, orientation = _read_tiff(data, name)
        elif data[:8] == PNG_MAGIC:
            header = png_header(data, name)
            check_pixel_count(header.height, header.width, header.channels, name)
            sixteen = is_16bit_colour_png(data)
            exif = check_png(data, name, image_data=sixteen).exif
            if sixteen:
                arr, orientation = _decode_png16(data), _exif_orientation(exif)
            else:
                arr, orientation = _decode_pil(data, name)
        else:
            webp = webp_size(data)  # Pillow's WebP opener allocates the canvas: check it first
            if webp is not None:
                check_pixel_count(webp[1], webp[0], 4, name)
            arr, orientation = _decode_pil(data, name)
        return normalize_pixels(apply_orientation(arr, orientation), name)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image as :func:`read_image` would return it, reading only the header.

    EXIF orientations that swap the axes (5-8) are taken into account. The pixel limit applies
    (a header claiming more pixels is a :class:`DataError`), but the image data is not checked.
    """
    path = Path(path)
    check_image_file(path)
    with _decoding(str(path)), open(path, "rb") as fh:
        return _header_size(fh, str(path))


def encoded_image_size(data: bytes, name: str) -> tuple[int, int]:
    """``(H, W)`` of encoded image bytes (PNG, JPEG, TIFF ...), as :func:`image_size` reads a file's.

    ``name`` is only used in error messages (where the bytes came from).
    """
    return _header_size(io.BytesIO(data), name)


def _header_size(fh: BinaryIO, name: str) -> tuple[int, int]:
    with _decoding(name):
        head = fh.read(33)
        fh.seek(0)
        if not head:
            raise DataError(f"cannot read image {name}: empty file; re-export or remove it")
        if head[:8] == PNG_MAGIC:
            png_header(head, name)  # its own words for a damaged header (PIL would say "not an image")
        if head[:4] in TIFF_MAGIC:
            return _tiff_size(fh, name)
        webp = webp_size(head)
        if webp is not None:
            check_pixel_count(webp[1], webp[0], 4, name)
        with _open_pil(fh, name) as im:
            w, h = im.size
            orientation = pil_orientation(im, header_only=True)
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

    Palette PNGs give their palette indices; 8/16/32-bit PNG and TIFF are supported; the
    orientation tag is applied as for :func:`read_image`, and so are its checks (pixel limit,
    corrupt or truncated files). Raises :class:`DataError` for multi-channel or floating-point
    label images.
    """
    path = Path(path)
    data = _read_bytes(path)
    name = str(path)
    if not data:
        raise DataError(f"cannot read label image {path}: empty file; re-export or remove it")
    with _decoding(name, what="label image"):
        if data[:4] in TIFF_MAGIC:
            arr, orientation = _read_tiff(data, name)
            arr = np.squeeze(arr)
        else:
            if data[:8] == PNG_MAGIC:
                check_png(data, name)
            with _open_pil(io.BytesIO(data), name) as im:
                im.load()
                orientation = pil_orientation(im)
                # L, P, I, I;16*, 1 give one integer per pixel (palette indices for P, not colours).
                arr = np.asarray(im)
        arr = apply_orientation(arr, orientation)
    if arr.ndim != 2:
        raise DataError(
            f"label image {path} has shape {tuple(arr.shape)}; expected one integer per pixel "
            "(save it as a single-channel 8/16-bit PNG or TIFF with one value per instance)"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"label image {path} has pixel type {arr.dtype}; save instance ids as integers (uint8/uint16)")
    return np.ascontiguousarray(arr)


def read_binary_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A one-instance mask file as ``[H, W]`` bool: any non-zero value (in any channel) is inside."""
    arr = read_image(path)
    return np.any(arr != 0, axis=2)


def decode_binary_mask(data: bytes, name: str) -> np.ndarray:
    """Encoded one-instance mask bytes (a PNG ...) as ``[H, W]`` bool, as :func:`read_binary_mask` reads a file."""
    return np.any(decode_image(data, name) != 0, axis=2)


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


# --------------------------------------------------------------------------- building blocks (public)


def check_image_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`DataError` unless ``path`` is a regular file that exists: names the file and
    says what it is instead (missing, a folder, a broken or looping symbolic link, a pipe or device)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"cannot read image {path}: broken symbolic link; fix the link or remove it") from None
        raise DataError(f"cannot read image {path}: file not found; check the path or remove it from the annotations") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"cannot read image {path}: symbolic link loop; fix the link or remove it") from None
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}; check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"cannot read image {path}: it is a folder; point to an image file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"cannot read image {path}: not a regular file (a pipe, socket or device); point to an image file")


def normalize_pixels(arr: np.ndarray, name: str) -> np.ndarray:
    """A decoded ``[H, W]`` or ``[H, W, C]`` array as the readers return it: ``[H, W, C]``, C-contiguous,
    native byte order, uint8 (bool becomes 0/255), uint16 (32-bit integers when they fit) or float32.

    Raises :class:`DataError` naming ``name`` for other pixel types, 32-bit values over 65535 and
    float images holding NaN or infinite values.
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        if arr.size and not np.isfinite(arr).all():
            what = "NaN" if np.isnan(arr).any() else "infinite"
            raise DataError(f"cannot read image {name}: contains {what} values; replace them with numbers "
                            "(e.g. numpy.nan_to_num) and save it again")
    elif arr.dtype == np.int32 or arr.dtype == np.int64 or arr.dtype == np.uint32:
        # PIL's "I" mode holds 16-bit data in int32; keep it when it fits.
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"cannot read image {name}: 32-bit pixel values outside 0..65535; convert it to 16-bit")
        arr = arr.astype(np.uint16)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"cannot read image {name}: unsupported pixel type {arr.dtype}; convert it to uint8, uint16 or float32")
    return np.ascontiguousarray(arr)


def pil_image_to_array(im: Image.Image, name: str) -> np.ndarray:
    """A loaded PIL image as :func:`read_image` returns it, orientation not applied: palette, CMYK,
    YCbCr ... converted to RGB (:data:`PIL_RGB_MODES`), 1-bit to 8-bit, then :func:`normalize_pixels`."""
    return normalize_pixels(_pil_pixels(im), name)


def pil_orientation(im: Image.Image, header_only: bool = False) -> int:
    """EXIF orientation (1-8) of an opened PIL image; 1 when absent or malformed.

    With ``header_only`` a PNG's pixel data is not decoded: only an eXIf chunk before the image
    data counts (PIL's ``getexif`` would decode the whole file to look behind it). Without it,
    load the image first (``im.load()``) so that a decoding error is raised, not hidden here.
    """
    if im.format == "PNG" and not header_only and "exif" not in im.info:
        im.load()  # PIL's getexif would load it here and the error would be swallowed below
    try:
        if header_only and im.format == "PNG":
            return _exif_orientation(im.info.get("exif") or b"")
        return int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF: ignore orientation rather than fail the image
        return 1


def is_16bit_colour_png(data: bytes) -> bool:
    """True for (the first 26 or more bytes of) a 16-bit PNG with colour or alpha, which PIL would
    reduce to 8 bits; these are decoded with torchvision after :func:`maskrcnn.data.png.check_png`."""
    if len(data) < 26 or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = data[24], data[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _decoding(name: str, what: str = "image") -> Iterator[None]:
    """Turn any decoder exception into a one-line :class:`DataError` naming the file."""
    try:
        yield
    except MaskRCNNError:
        raise
    except MemoryError:
        raise DataError(f"cannot read {what} {name}: not enough memory to decode it; free memory, or lower "
                        f"{PIXEL_LIMIT_ENV} to refuse images this large") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib/struct/tifffile errors ...
        raise DataError(f"cannot read {what} {name}: {_reason(exc)}; re-export or remove it") from None


def _read_bytes(path: Path) -> bytes:
    check_image_file(path)
    try:
        return path.read_bytes()
    except MemoryError:
        raise DataError(f"cannot read image {path}: file too large for the memory left; remove it") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}; check the file's permissions") from None


def _reason(exc: BaseException) -> str:
    text = first_line(exc, "")
    low = text.lower()
    if isinstance(exc, UnidentifiedImageError) or "cannot identify image" in low:
        return "not an image or an unsupported format"
    if isinstance(exc, EOFError) or any(w in low for w in ("truncated", "broken", "unexpected end", "failed to read",
                                                           "unpack requires", "expected to read")):
        return "truncated file"
    if "could not create decoder" in low:  # libwebp
        return "truncated or corrupt file"
    kind = type(exc).__name__
    kind = f"{type(exc).__module__}.{kind}" if kind == "error" else kind  # zlib.error, struct.error
    return f"corrupt file ({kind}: {text})" if text else f"corrupt file ({kind})"


def _exif_orientation(raw: bytes) -> int:
    """Orientation (1-8) in raw EXIF bytes (with or without the ``Exif\\0\\0`` prefix); 1 when absent."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw if raw.startswith(b"Exif") else b"Exif\x00\x00" + raw)
        value = int(exif.get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _open_pil(fh: BinaryIO, name: str) -> Image.Image:
    """``Image.open`` (header only) under our pixel limit instead of Pillow's (whatever its value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)
        except Image.DecompressionBombError:
            fh.seek(0)  # over Pillow's limit: open again without it, then apply ours
            with _PIL_LIMIT_LOCK:
                old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(fh)
                finally:
                    Image.MAX_IMAGE_PIXELS = old
    try:
        w, h = im.size
        check_pixel_count(h, w, len(im.getbands()), name)
    except BaseException:
        im.close()
        raise
    return im


def _pil_pixels(im: Image.Image) -> np.ndarray:
    if im.mode in PIL_RGB_MODES:
        im = im.convert("RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return np.asarray(im)  # I;16B gives big-endian uint16, I gives int32: normalize_pixels converts


def _decode_pil(data: bytes, name: str) -> tuple[np.ndarray, int]:
    with _open_pil(io.BytesIO(data), name) as im:
        im.load()  # decode everything first: an error here must not be swallowed by EXIF reading
        return _pil_pixels(im), pil_orientation(im)


def _decode_png16(data: bytes) -> np.ndarray:
    """A 16-bit colour PNG already checked by ``check_png(..., image_data=True)``, decoded by libpng."""
    import torch

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs (still working)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_png
        except ImportError:
            raise DataError("16-bit colour PNG needs torchvision's PNG decoder, which this torchvision lacks; "
                            "save the image as a 16-bit TIFF") from None
        t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    arr = t.permute(1, 2, 0).numpy()
    return arr if arr.dtype == np.uint16 else arr.astype(np.uint16)  # older torchvision: int32 holding 16 bits


def _tiff_layout(tif: Any, name: str) -> tuple[Any, tuple[int, ...], int | None, int]:
    """First series, its squeezed shape and channel axis, and the orientation; size checked, nothing read."""
    if not tif.series:
        raise DataError(f"cannot read image {name}: TIFF without an image; re-export or remove it")
    series = tif.series[0]
    new_shape, new_axes, _ = tiff_squeeze(tuple(series.shape), str(series.axes), name)
    ch = tiff_channel_axis(new_shape, new_axes)
    check_pixel_count(*tiff_hwc(new_shape, ch), name)
    return series, new_shape, ch, tiff_orientation(tif)


def _read_tiff(data: bytes, name: str) -> tuple[np.ndarray, int]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series, shape, ch, orientation = _tiff_layout(tif, name)
        arr = series.asarray().reshape(shape)
    if ch is not None and ch != 2:
        arr = np.moveaxis(arr, ch, 2)
    return arr, orientation


def _tiff_size(fh: BinaryIO, name: str) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(fh) as tif:
        _, shape, ch, orientation = _tiff_layout(tif, name)
    h, w, _ = tiff_hwc(shape, ch)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)

"""Header and structure checks run before any decoder sees the bytes: PNG (:func:`check_png`) and
the size in a WebP header (:func:`webp_size`, because Pillow allocates a WebP's canvas on opening).

Why: decoders trust the file. Pillow does not verify the CRC of image-data (``IDAT``) chunks, so a
damaged file decodes to a partly wrong image; and torchvision's ``decode_png`` (the only decoder
here that keeps 16-bit colour) crashes the whole process on any libpng error: libpng reports
errors by ``longjmp`` back into torchvision's C++ frame, which then throws a C++ exception through
frames whose objects ``longjmp`` skipped (undefined behaviour: signal 11), and its read callback
throws through libpng's C frames when the data runs out. So the file is checked first, and
torchvision only sees files libpng decodes without raising an error:

* the 8-byte signature, an ``IHDR`` chunk first with valid values (size at least 1 x 1, a bit
  depth that suits the colour type, compression/filter method 0, interlace 0 or 1);
* every chunk complete inside the file, with a correct CRC; an ``IEND`` chunk at the end (bytes
  after it are ignored); ``IDAT`` chunks consecutive and present; ``PLTE`` present for palette
  images, absent for grayscale, 1-256 entries, before the image data; no unknown critical chunk;
* with ``image_data=True`` also the image data: the zlib stream inflates (in bounded pieces,
  never the whole image at once) to exactly the number of bytes the header implies, ends with a
  valid checksum, and every row starts with a filter type 0-4; the size stays within libpng's
  default limit (1,000,000 pixels per side).

Errors are :class:`~maskrcnn.errors.DataError` with one line: ``cannot read image NAME: REASON;
re-export or remove it``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError

__all__ = ["PNG_MAGIC", "PngHeader", "png_header", "check_png", "webp_size"]

#: The 8-byte signature every PNG file starts with.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Bit depths allowed for each colour type (PNG spec, table 11.1).
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7 passes as (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
#: libpng's default user limit on width and height (PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX).
LIBPNG_MAX_SIDE = 1_000_000
_INFLATE_PIECE = 1 << 22  # bytes of image data inflated at a time


@dataclass(frozen=True)
class PngHeader:
    """The ``IHDR`` values of a PNG: size in pixels, bit depth per sample, colour type, interlace;
    ``exif``: the raw ``eXIf`` chunk wherever it is in the file (filled by :func:`check_png` only)."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    exif: bytes = b""

    @property
    def channels(self) -> int:
        """Samples per pixel as stored (a palette image has 1: its index)."""
        return _SAMPLES[self.colour_type]

    def row_bytes(self, width: int) -> int:
        """Bytes of one filtered row of ``width`` pixels, without its filter-type byte."""
        return (width * self.channels * self.bit_depth + 7) // 8

    def rows(self) -> list[tuple[int, int]]:
        """``(row count, row bytes)`` of each pass (one pass unless Adam7-interlaced; empty passes left out)."""
        if not self.interlace:
            return [(self.height, self.row_bytes(self.width))]
        out = []
        for x0, y0, dx, dy in _ADAM7:
            w = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            h = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if w and h:
                out.append((h, self.row_bytes(w)))
        return out

    def data_size(self) -> int:
        """Bytes of the inflated image data: every row of every pass plus its filter-type byte."""
        return sum(n * (1 + rb) for n, rb in self.rows())


def _fail(name: str, reason: str) -> DataError:
    return DataError(f"cannot read image {name}: {reason}; re-export or remove it")


def png_header(data: bytes, name: str) -> PngHeader:
    """The validated ``IHDR`` of PNG bytes (signature, first chunk, CRC, allowed values)."""
    if data[:8] != PNG_MAGIC:
        raise _fail(name, "not a PNG file (bad signature)")
    if len(data) < 33:
        raise _fail(name, "truncated file (PNG header cut short)")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise _fail(name, "corrupt PNG (the first chunk is not a 13-byte IHDR)")
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise _fail(name, "corrupt PNG (CRC error in chunk IHDR)")
    width, height, depth, colour, compression, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if not (1 <= width <= 2**31 - 1 and 1 <= height <= 2**31 - 1):
        raise _fail(name, f"corrupt PNG header (size {width} x {height})")
    if colour not in _DEPTHS or depth not in _DEPTHS[colour]:
        raise _fail(name, f"corrupt PNG header (bit depth {depth} with colour type {colour})")
    if compression != 0 or filt != 0 or interlace not in (0, 1):
        raise _fail(name, f"corrupt PNG header (compression {compression}, filter {filt}, interlace {interlace})")
    return PngHeader(width, height, depth, colour, interlace)


def check_png(data: bytes, name: str, *, image_data: bool = False) -> PngHeader:
    """Check the chunk structure of PNG bytes (see the module doc); with ``image_data`` also the
    inflated image data. Returns the header; raises :class:`DataError` naming ``name``."""
    header = png_header(data, name)
    view = memoryview(data)
    idat: list[memoryview] = []
    idat_done = False  # an IDAT run has ended: another IDAT is an error
    palette = False
    exif = b""
    pos = 33
    while True:
        if pos + 12 > len(data):
            raise _fail(name, "truncated file (PNG ends before its IEND chunk)")
        length, ctype = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if length > 2**31 - 1 or not ctype.isalpha():
            raise _fail(name, f"corrupt PNG (bad chunk at byte {pos})")
        label = ctype.decode("ascii")
        if end > len(data):
            raise _fail(name, f"truncated file (chunk {label} cut short)")
        if zlib.crc32(view[pos + 4:pos + 8 + length]) != struct.unpack(">I", view[end - 4:end])[0]:
            raise _fail(name, f"corrupt PNG (CRC error in chunk {label})")
        if ctype == b"IDAT":
            if idat_done:
                raise _fail(name, "corrupt PNG (image data split by other chunks)")
            idat.append(view[pos + 8:end - 4])
        else:
            idat_done = bool(idat)
            if ctype == b"IEND":
                break
            if ctype == b"PLTE":
                if header.colour_type in (0, 4) or palette or idat or not 0 < length <= 768 or length % 3:
                    raise _fail(name, "corrupt PNG (misplaced or malformed PLTE chunk)")
                palette = True
            elif ctype == b"eXIf":
                exif = bytes(view[pos + 8:end - 4])
            elif ctype[0] < 0x61:  # an upper-case first letter: a critical chunk a decoder must understand
                raise _fail(name, f"corrupt PNG (unexpected critical chunk {label})")
        pos = end
    if not idat:
        raise _fail(name, "corrupt PNG (no image data)")
    if header.colour_type == 3 and not palette:
        raise _fail(name, "corrupt PNG (palette image without a PLTE chunk)")
    if image_data:
        if max(header.width, header.height) > LIBPNG_MAX_SIDE:
            raise DataError(f"cannot read image {name}: {header.width:,} x {header.height:,} pixels is more than the 16-bit "
                            f"PNG decoder's {LIBPNG_MAX_SIDE:,} pixels per side; save it as a 16-bit TIFF")
        _check_image_data(header, idat, name)
    return replace(header, exif=exif) if exif else header


def _check_image_data(header: PngHeader, idat: list[memoryview], name: str) -> None:
    """Inflate the image data piece by piece: exact size, valid zlib stream, filter types 0-4."""
    # filter-type bytes sit at arithmetic progressions: (first offset, stride, count) per pass
    segments = []
    offset = 0
    for n, rb in header.rows():
        segments.append((offset, 1 + rb, n))
        offset += n * (1 + rb)
    expected = offset
    inflater = zlib.decompressobj()
    pos = 0
    try:
        for part in idat:
            pending: bytes | memoryview = part
            while not inflater.eof:
                # an empty input still drains output zlib holds back once a piece is full
                out = inflater.decompress(pending, _INFLATE_PIECE)
                pending = inflater.unconsumed_tail
                if pos + len(out) > expected:
                    raise _fail(name, "corrupt PNG (more image data than the header's size)")
                _check_filters(np.frombuffer(out, dtype=np.uint8), pos, segments, name)
                pos += len(out)
                if not out and not pending:
                    break
            if inflater.eof:
                break
    except zlib.error as exc:
        raise _fail(name, f"corrupt PNG image data ({exc})") from None
    if not inflater.eof or pos != expected:
        raise _fail(name, f"truncated or corrupt PNG image data ({pos:,} of {expected:,} bytes)")


def _check_filters(piece: np.ndarray, pos: int, segments: list[tuple[int, int, int]], name: str) -> None:
    """Raise unless every filter-type byte inside ``piece`` (which starts at ``pos``) is 0-4."""
    end = pos + len(piece)
    for first, stride, count in segments:
        last = first + (count - 1) * stride
        if last < pos or first >= end:
            continue
        k = max(0, -(-(pos - first) // stride))  # first row whose filter byte is at or after pos
        start = first + k * stride - pos
        if start < len(piece):
            sel = piece[start::stride][: count - k]
            if sel.size and int(sel.max()) > 4:
                raise _fail(name, "corrupt PNG image data (bad row filter type)")


def webp_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a WebP's first chunk (VP8X canvas, VP8L or VP8 frame header); None
    when ``data`` is not a WebP or the header cannot be read (the decoder then reports it)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind, payload = data[12:16], data[20:30]
    if kind == b"VP8X" and len(payload) >= 10:
        return 1 + int.from_bytes(payload[4:7], "little"), 1 + int.from_bytes(payload[7:10], "little")
    if kind == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(payload[6:8], "little") & 0x3FFF, int.from_bytes(payload[8:10], "little") & 0x3FFF
    return None

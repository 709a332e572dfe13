"""Hostile and damaged image files for ``tests/test_bad_input_images.py``, made in a few bytes.

:data:`CASES` maps a file name to ``(builder, fragments)``: ``builder(path)`` writes the file (or
makes the folder, link or pipe) at ``path``; every fragment must be in the one-line error that
reading it gives (besides the file name). Header bombs claim a huge size in a file of a few
hundred bytes, so a reader that trusts the header allocates gigabytes or crashes.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile
from PIL import Image

RNG = np.random.default_rng(12)
LIMIT_FIX = "MASKRCNN_MAX_IMAGE_PIXELS"
REEXPORT = "re-export or remove it"


# --------------------------------------------------------------------------- encoders


def chunk(tag: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk with its CRC (or the given wrong one)."""
    value = zlib.crc32(tag + data) if crc is None else crc
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", value & 0xFFFFFFFF)


def png(width: int, height: int, depth: int, colour: int, idat: bytes | list[bytes], *, interlace: int = 0,
        before: bytes = b"", between: bytes = b"", end: bool = True) -> bytes:
    """A PNG from its parts: IHDR, chunks ``before`` the image data, IDAT chunk(s), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    parts = idat if isinstance(idat, list) else [idat]
    body = between.join(chunk(b"IDAT", p) for p in parts)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + before + body + (chunk(b"IEND", b"") if end else b""))


def png16(arr: np.ndarray, *, filter_byte: int = 0, extra_rows: int = 0) -> bytes:
    """A 16-bit PNG of ``[H, W, C]`` uint16 (C 1-4), written by hand: PIL cannot write colour ones."""
    h, w, c = arr.shape
    rows = [bytes([filter_byte]) + arr[i].astype(">u2").tobytes() for i in range(h)]
    rows += rows[:1] * extra_rows
    return png(w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], zlib.compress(b"".join(rows)))


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    """``arr`` saved by PIL in ``fmt`` (tifffile for TIFF)."""
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, arr, **kw)
    else:
        Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def rgb(h: int = 32, w: int = 40) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def good_png() -> bytes:
    return encode(rgb(), "PNG")


def tiff_claim(width: int, height: int, samples: int = 1, bits: int = 8, data: bytes = b"\x00" * 16) -> bytes:
    """A little-endian TIFF whose one strip is ``data`` whatever the size its tags claim."""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 0), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, len(data))]
    ifd_size = 2 + 12 * len(tags) + 4
    tags[5] = (273, 4, 1, 8 + ifd_size)
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def gif_claim(width: int, height: int) -> bytes:
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + frame + b";"


def bmp_claim(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 14 + 40) + info + b"\x00" * 64


def jpeg_claim(width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header claims ``width x height`` (no real scan data)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def webp_claim(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def damage_idat(data: bytes, fix_crc: bool) -> bytes:
    """``data`` (a PNG with one IDAT) with 24 bytes in the middle of its image data overwritten."""
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    body = bytearray(data[start + 8:start + 8 + length])
    body[length // 2:length // 2 + 24] = b"\xa5" * 24
    crc = None if fix_crc else zlib.crc32(b"IDAT" + data[start + 8:start + 8 + length])
    return data[:start] + chunk(b"IDAT", bytes(body), crc) + data[start + 12 + length:]


def wrong_crc(data: bytes, tag: bytes) -> bytes:
    """``data`` (a PNG) with the CRC of its first ``tag`` chunk flipped."""
    at = data.index(tag) - 4
    end = at + 12 + struct.unpack(">I", data[at:at + 4])[0]
    return data[:end - 4] + bytes(b ^ 0xFF for b in data[end - 4:end]) + data[end:]


def cut(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


# --------------------------------------------------------------------------- cases


def _bytes(make: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make())


def _symlink_loop(path: Path) -> None:
    other = path.with_name(path.name + ".other")
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _dangling(path: Path) -> None:
    os.symlink("does-not-exist.png", path)


def _u16(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)


def _float_tiff(values: np.ndarray) -> Callable[[], bytes]:
    return lambda: encode(values, "TIFF", photometric="minisblack", planarconfig="contig")


def _nan_one() -> np.ndarray:
    a = RNG.random((16, 16)).astype(np.float64)
    a[3, 4] = np.nan
    return a


def _inf_some() -> np.ndarray:
    a = RNG.random((16, 16, 3)).astype(np.float32)
    a[0, :, 1] = np.inf
    return a


def _corrupt_deflate_tiff() -> bytes:
    data = bytearray(encode(RNG.integers(0, 256, (64, 64), dtype=np.uint8), "TIFF", compression="zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        start, size = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data[start + size // 2:start + size // 2 + 40] = b"\xff" * 40  # inside the compressed strip
    return bytes(data)


def _bad_ifd_offset() -> bytes:
    data = bytearray(encode(rgb(8, 8), "TIFF"))
    data[4:8] = struct.pack("<I", 10**8)
    return bytes(data)


BOMB = ["over the limit", LIMIT_FIX]
CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    # empty, not an image, wrong content
    "empty.png": (_bytes(lambda: b""), ["empty file", REEXPORT]),
    "empty.jpg": (_bytes(lambda: b""), ["empty file"]),
    "empty.tif": (_bytes(lambda: b""), ["empty file"]),
    "random.png": (_bytes(lambda: RNG.bytes(3000)), ["not an image", REEXPORT]),
    "random.jpg": (_bytes(lambda: RNG.bytes(3000)), ["not an image"]),
    "random.gif": (_bytes(lambda: RNG.bytes(3000)), ["not an image"]),
    "random.bmp": (_bytes(lambda: RNG.bytes(3000)), ["not an image"]),
    "random.webp": (_bytes(lambda: RNG.bytes(3000)), ["not an image"]),
    "page.jpg": (_bytes(lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"), ["not an image"]),
    "notes.png": (_bytes(lambda: b"just some notes, saved with the wrong name\n" * 20), ["not an image"]),
    "signature_only.png": (_bytes(lambda: b"\x89PNG\r\n\x1a\n"), ["truncated"]),
    "magic_only.tif": (_bytes(lambda: b"II*\x00"), [REEXPORT]),
    "magic_only.gif": (_bytes(lambda: b"GIF89a"), [REEXPORT]),
    "magic_only.jpg": (_bytes(lambda: b"\xff\xd8\xff"), [REEXPORT]),
    # truncated files of each format
    "cut8.png": (_bytes(lambda: cut(good_png())), ["truncated", "IDAT"]),
    "cut_header.png": (_bytes(lambda: good_png()[:30]), ["truncated"]),
    "cut16.png": (_bytes(lambda: cut(png16(_u16(20, 24, 3)))), ["truncated"]),
    "cut_gray16.png": (_bytes(lambda: cut(encode(_u16(30, 20, 1)[:, :, 0], "PNG"))), ["truncated"]),
    "cut.jpg": (_bytes(lambda: cut(encode(rgb(), "JPEG"))), ["truncated"]),
    "cut.gif": (_bytes(lambda: cut(encode(rgb(), "GIF"))), ["truncated"]),
    "cut.bmp": (_bytes(lambda: cut(encode(rgb(), "BMP"))), ["truncated"]),
    "cut.tif": (_bytes(lambda: cut(encode(rgb(), "TIFF"))), [REEXPORT]),
    "cut.webp": (_bytes(lambda: cut(encode(rgb(), "WEBP"))), [REEXPORT]),
    "cut.jp2": (_bytes(lambda: cut(encode(rgb(), "JPEG2000"))), [REEXPORT]),
    "cut.ppm": (_bytes(lambda: cut(encode(rgb(), "PPM"))), ["truncated"]),
    "cut.pgm": (_bytes(lambda: cut(encode(rgb()[:, :, 0], "PPM"))), ["truncated"]),
    # header bombs: a few hundred bytes claiming billions of pixels
    "bomb8.png": (_bytes(lambda: png(20000, 20000, 8, 2, zlib.compress(b"\x00" * 100))), ["20,000 x 20,000", *BOMB]),
    "bomb16.png": (_bytes(lambda: png(20000, 20000, 16, 2, zlib.compress(b"\x00" * 100))), ["400,000,000 pixels", *BOMB]),
    "bomb_gray16.png": (_bytes(lambda: png(30000, 30000, 16, 0, zlib.compress(b"\x00" * 100))), BOMB),
    "bomb_palette.png": (_bytes(lambda: png(40000, 9000, 8, 3, zlib.compress(b"\x00" * 100),
                                            before=chunk(b"PLTE", b"\x00" * 3))), BOMB),
    "bomb.gif": (_bytes(lambda: gif_claim(65535, 65535)), ["65,535 x 65,535", *BOMB]),
    "bomb.bmp": (_bytes(lambda: bmp_claim(30000, 30000)), BOMB),
    "bomb.jpg": (_bytes(lambda: jpeg_claim(65500, 65500)), BOMB),
    "bomb.tif": (_bytes(lambda: tiff_claim(100000, 100000)), ["100,000 x 100,000", *BOMB]),
    "bomb16.tif": (_bytes(lambda: tiff_claim(50000, 50000, bits=16)), BOMB),
    "bomb.ppm": (_bytes(lambda: b"P6\n100000 100000\n255\n" + b"\x00" * 64), BOMB),
    "bomb.webp": (_bytes(lambda: webp_claim(16383, 16383)), BOMB),
    "channels.tif": (_bytes(lambda: tiff_claim(4000, 4000, samples=65535)), ["65,535 channels", "values", *BOMB]),
    "wide16.png": (_bytes(lambda: png(2_000_000, 1, 16, 2, zlib.compress(b"\x00" * 100))), ["per side", "16-bit TIFF"]),
    # damaged PNG structure or image data
    "crc_idat.png": (_bytes(lambda: wrong_crc(good_png(), b"IDAT")), ["CRC error in chunk IDAT", REEXPORT]),
    "crc_ihdr.png": (_bytes(lambda: wrong_crc(good_png(), b"IHDR")), ["CRC error in chunk IHDR"]),
    "crc_iend.png": (_bytes(lambda: wrong_crc(good_png(), b"IEND")), ["CRC error in chunk IEND"]),
    "crc_idat16.png": (_bytes(lambda: wrong_crc(png16(_u16(8, 8, 3)), b"IDAT")), ["CRC error in chunk IDAT"]),
    "corrupt_idat.png": (_bytes(lambda: damage_idat(good_png(), fix_crc=True)), ["corrupt", REEXPORT]),
    "corrupt_idat16.png": (_bytes(lambda: damage_idat(png16(_u16(32, 32, 4)), fix_crc=True)), ["corrupt PNG image data"]),
    "short_data16.png": (_bytes(lambda: png(64, 64, 16, 2, zlib.compress(b"\x00" * 100))), ["PNG image data", "100 of"]),
    "raw_data16.png": (_bytes(lambda: png(64, 64, 16, 6, b"\x00" * 100)), ["corrupt PNG image data"]),
    "bad_filter16.png": (_bytes(lambda: png16(_u16(6, 5, 3), filter_byte=9)), ["bad row filter type"]),
    "extra_rows16.png": (_bytes(lambda: png16(_u16(6, 5, 3), extra_rows=3)), ["more image data"]),
    "split_idat16.png": (_bytes(lambda: png(4, 4, 16, 2, [b"x\x9c", zlib.compress(b"\x00" * 100)[2:]],
                                            between=chunk(b"tEXt", b"a\x00b"))), ["split"]),
    "no_iend.png": (_bytes(lambda: good_png()[:-12]), ["truncated", "IEND"]),
    "no_idat.png": (_bytes(lambda: png(8, 8, 8, 0, [])), ["no image data"]),
    "zero_width.png": (_bytes(lambda: png(0, 8, 8, 0, zlib.compress(b"\x00" * 8))), ["size 0 x 8"]),
    "bad_depth.png": (_bytes(lambda: png(8, 8, 3, 2, zlib.compress(b"\x00" * 8))), ["bit depth 3"]),
    "critical_chunk.png": (_bytes(lambda: png(8, 8, 8, 0, zlib.compress(b"\x00" * 72), before=chunk(b"ABCD", b"?"))),
                           ["critical chunk ABCD"]),
    "palette_without_plte.png": (_bytes(lambda: png(8, 8, 8, 3, zlib.compress(b"\x00" * 72))), ["PLTE"]),
    # TIFF: empty, NaN/Inf, layouts and pixel types a model cannot use
    "zero_width.tif": (_bytes(lambda: tiff_claim(0, 10)), ["no pixels", REEXPORT]),
    "nan.tif": (_bytes(_float_tiff(np.full((16, 16), np.nan, np.float32))), ["contains NaN values", "nan_to_num"]),
    "nan_one.tif": (_bytes(_float_tiff(_nan_one())), ["contains NaN values"]),
    "inf.tif": (_bytes(_float_tiff(_inf_some())), ["contains infinite values"]),
    "neg_inf16.tif": (_bytes(_float_tiff(np.full((8, 8), -np.inf, np.float16))), ["contains infinite values"]),
    "stack.tif": (_bytes(lambda: encode(RNG.integers(0, 256, (2, 3, 8, 9), dtype=np.uint8), "TIFF",
                                        photometric="minisblack")), ["one image per file"]),
    "complex.tif": (_bytes(lambda: encode(np.ones((8, 8), np.complex64), "TIFF")), ["unsupported pixel type"]),
    "int32.tif": (_bytes(lambda: encode(np.full((8, 8), 70000, np.int32), "TIFF")), ["outside 0..65535"]),
    "corrupt_deflate.tif": (_bytes(_corrupt_deflate_tiff), [REEXPORT]),
    "bad_ifd.tif": (_bytes(_bad_ifd_offset), [REEXPORT]),
    # not a file
    "folder.png": (lambda p: p.mkdir(), ["it is a folder"]),
    "dangling.png": (_dangling, ["broken symbolic link"]),
    "loop.png": (_symlink_loop, ["symbolic link loop"]),
    "fifo.png": (lambda p: os.mkfifo(p), ["not a regular file"]),
    "missing.png": (lambda p: None, ["file not found"]),
}

#: Cases that are not files: a folder walk does not list them as images (or lists them as links).
NOT_LISTED = {"folder.png", "missing.png"}
#: Cases that crashed the interpreter (signal 11 in libpng) or allocated gigabytes before the fix.
USED_TO_CRASH = {"bomb16.png", "short_data16.png", "raw_data16.png", "corrupt_idat16.png", "bad_filter16.png",
                 "extra_rows16.png", "split_idat16.png", "wide16.png", "cut16.png", "bomb.tif", "bomb16.tif",
                 "channels.tif"}


def make(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write the named cases (default: all) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(CASES):
        build, _ = CASES[name]
        build(folder / name)
        paths.append(folder / name)
    return paths

"""TFRecord files read without TensorFlow: the framing and its checksums.

A TFRecord file is a sequence of records, each::

    uint64 length            little-endian
    uint32 masked_crc32c(length bytes)
    bytes  data[length]
    uint32 masked_crc32c(data)

``masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), with CRC-32C
(Castagnoli). Both checksums are verified. A record whose data checksum is wrong is reported
and skipped (the next record starts right after it); a wrong length checksum or a truncated
file ends the file there (nothing after it can be framed). CRC-32C comes from the
``google-crc32c`` package when it is installed (C speed) and from a table otherwise.
Compressed (GZIP/ZLIB) TFRecord files are not supported; they are reported as such.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["crc32c", "masked_crc", "RecordEntry", "iter_records", "read_record", "is_tfrecord_name",
           "looks_like_tfrecord", "frame_record", "count_records", "MAX_RECORD_BYTES"]

#: Largest record accepted (a length above it is treated as a corrupt header): 1 GiB.
MAX_RECORD_BYTES = 1 << 30
_HEADER = 12
_MASK_DELTA = 0xA282EAD8
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
SUFFIXES = (".tfrecord", ".tfrecords", ".record", ".records")


def _table() -> list[int]:
    poly, table = 0x82F63B78, []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def _crc32c_python(data: bytes) -> int:
    global _TABLE
    if _TABLE is None:
        _TABLE = _table()
    table, crc = _TABLE, 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: ``crc32c(b"123456789") == 0xE3069283``."""
    try:
        import google_crc32c
    except ImportError:
        return _crc32c_python(data)
    return int(google_crc32c.value(bytes(data)))


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord record (length, its masked CRC, data, its masked CRC)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


@dataclass(frozen=True)
class RecordEntry:
    """One record of a file: its index, the offset of its header, and its data or the problem.

    ``data`` is None when the record is unusable; ``problem`` then says why in a few words and
    ``fatal`` tells whether the rest of the file is lost too.
    """

    index: int
    offset: int
    data: bytes | None
    problem: str | None = None
    fatal: bool = False


def is_tfrecord_name(path: str | os.PathLike[str]) -> bool:
    """A TFRecord file name: ``.tfrecord``/``.record`` (+``s``) or a shard ``NAME-00003-of-00010``."""
    p = Path(path)
    return p.suffix.lower() in SUFFIXES or bool(_SHARD.search(p.name))


def looks_like_tfrecord(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with a TFRecord header whose length checksum is right."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER)
    except OSError:
        return False
    return len(head) == _HEADER and struct.unpack("<I", head[8:])[0] == masked_crc(head[:8])


def _read_one(fh: BinaryIO, index: int, offset: int, size: int) -> RecordEntry:
    header = fh.read(_HEADER)
    if len(header) < _HEADER:
        return RecordEntry(index, offset, None, f"truncated header ({len(header)} of {_HEADER} bytes)", fatal=True)
    length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
    if masked_crc(length_bytes) != length_crc:
        what = "gzip-compressed TFRecord files are not supported (write them uncompressed)" \
            if offset == 0 and header[:2] == b"\x1f\x8b" else "length checksum mismatch (corrupt header)"
        return RecordEntry(index, offset, None, what, fatal=True)
    (length,) = struct.unpack("<Q", length_bytes)
    if length > MAX_RECORD_BYTES or offset + _HEADER + length + 4 > size:
        left = size - offset - _HEADER
        return RecordEntry(index, offset, None, f"truncated record ({length} data bytes announced, {max(0, left)} left "
                                                "in the file)", fatal=True)
    data = fh.read(length)
    footer = fh.read(4)
    if len(data) < length or len(footer) < 4:
        return RecordEntry(index, offset, None, "truncated record", fatal=True)
    if masked_crc(data) != struct.unpack("<I", footer)[0]:
        return RecordEntry(index, offset, None, "data checksum mismatch (corrupt record)")
    return RecordEntry(index, offset, data)


def iter_records(path: str | os.PathLike[str]) -> Iterator[RecordEntry]:
    """Every record of a TFRecord file, checked; stops after a fatal problem (see :class:`RecordEntry`).

    Raises ``OSError`` when the file cannot be opened.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        index, offset = 0, 0
        while offset < size:
            entry = _read_one(fh, index, offset, size)
            yield entry
            if entry.fatal:
                return
            offset = fh.tell()
            index += 1


def read_record(path: str | os.PathLike[str], offset: int, index: int = 0) -> RecordEntry:
    """The record whose header starts at ``offset`` (as :func:`iter_records` gave it), checked again."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(offset)
        return _read_one(fh, index, offset, size)


def count_records(path: str | os.PathLike[str]) -> int:
    """Number of records in a file, reading only the headers (checksums of the data not verified)."""
    count, offset = 0, 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while offset + _HEADER <= size:
            header = fh.read(_HEADER)
            if masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                break
            offset += _HEADER + struct.unpack("<Q", header[:8])[0] + 4
            if offset > size:
                break
            fh.seek(offset)
            count += 1
    return count

"""Writing TF Object Detection API files for the tests, independently of the code under test.

The protobuf wire format of ``tf.train.Example`` and the TFRecord framing (CRC-32C, bit by
bit) are written by hand here, so the reader is checked against the specification rather than
against itself.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- CRC-32C, framing


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


def write_tfrecord(path: Path, records: Sequence[bytes]) -> Path:
    path.write_bytes(b"".join(frame(r) for r in records))
    return path


# --------------------------------------------------------------------------- protobuf wire format


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: ten bytes of two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def feature(values: Any) -> bytes:
    """A ``Feature``: bytes/str -> bytes_list, float -> float_list (packed), int -> int64_list (packed)."""
    values = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if values and isinstance(values[0], (bytes, str)):
        return _ld(1, b"".join(_ld(1, v.encode() if isinstance(v, str) else v) for v in values))
    if values and isinstance(values[0], (float, np.floating)):
        return _ld(2, _ld(1, struct.pack(f"<{len(values)}f", *values)))
    if values:
        return _ld(3, _ld(1, b"".join(_varint(int(v)) for v in values)))
    return _ld(1, b"")


def example(features: dict[str, Any]) -> bytes:
    """A serialized ``tf.train.Example`` (``Features`` map entries: key 1, value 2)."""
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, feature(v))) for k, v in features.items())
    return _ld(1, entries)


# --------------------------------------------------------------------------- TF OD API records


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def od_example(image: np.ndarray, masks: np.ndarray, *, labels: Sequence[int] | None = None,
               texts: Sequence[str] | None = None, mask_mode: str = "png", filename: str = "img.png",
               boxes: np.ndarray | None = None, extra: dict[str, Any] | None = None,
               drop: Sequence[str] = ()) -> bytes:
    """An Example as TF OD API's tools write it: ``masks [N, H, W]`` bool as PNGs (``png``),
    one ``N*H*W`` byte string (``raw_bytes``) or ``N*H*W`` floats (``raw_float``)."""
    h, w = image.shape[:2]
    n = len(masks)
    if boxes is None:
        boxes = np.zeros((n, 4), dtype=np.float32)
        for i, m in enumerate(masks):
            ys, xs = np.nonzero(m)
            boxes[i] = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    feats: dict[str, Any] = {
        "image/encoded": png(image), "image/format": "png", "image/filename": filename,
        "image/height": h, "image/width": w,
        "image/object/bbox/xmin": [float(b[0]) for b in boxes], "image/object/bbox/ymin": [float(b[1]) for b in boxes],
        "image/object/bbox/xmax": [float(b[2]) for b in boxes], "image/object/bbox/ymax": [float(b[3]) for b in boxes],
    }
    if labels is not None:
        feats["image/object/class/label"] = list(labels)
    if texts is not None:
        feats["image/object/class/text"] = list(texts)
    if mask_mode == "png":
        feats["image/object/mask"] = [png(m.astype(np.uint8) * 255) for m in masks]
    elif mask_mode == "raw_bytes":
        feats["image/object/mask"] = [masks.astype(np.uint8).tobytes()]
    elif mask_mode == "raw_float":
        feats["image/object/mask"] = [float(v) for v in masks.astype(np.float32).reshape(-1)]
    for key in drop:
        feats.pop(key, None)
    feats.update(extra or {})
    return example(feats)


LABEL_MAP = """# classes with a gap in the ids
item {
  id: 1
  name: 'cat'
}
item { id: 3 name: "dog" display_name: "Dog" }
item: { id: 7, name: 'bird' }
"""


def shapes(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """``[n, H, W]`` bool rectangles and discs, each non-empty."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        cy, cx = rng.integers(4, h - 4), rng.integers(4, w - 4)
        r = int(rng.integers(2, 5))
        out[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if i % 2 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r + 1)
    return out


def make_dataset(folder: Path, *, label_map: str | None = LABEL_MAP, name: str = "train.tfrecord",
                 seed: int = 0) -> tuple[Path, list[dict[str, Any]]]:
    """Three records: PNG masks with labels, raw float masks with texts only, raw byte masks.

    Returns the file and, per record, ``{"image", "masks", "labels"}`` (label-map ids) as written.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [(24, 32, [1, 3], None, "png"), (20, 28, None, ["Dog"], "raw_float"), (16, 20, [7, 1], ["bird", "cat"], "raw_bytes")]
    truth, records = [], []
    for k, (h, w, labels, texts, mode) in enumerate(specs):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        n = len(labels or texts)
        masks = shapes(rng, h, w, n)
        records.append(od_example(image, masks, labels=labels, texts=texts, mask_mode=mode, filename=f"img{k}.png"))
        truth.append({"image": image, "masks": masks, "labels": labels or [3]})
    if label_map is not None:
        (folder / "label_map.pbtxt").write_text(label_map)
    return write_tfrecord(folder / name, records), truth

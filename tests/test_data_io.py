"""Reading images: bit depths, channel counts, layouts, EXIF orientation, broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageOps

from maskrcnn.data.images import (
    apply_orientation,
    check_channels,
    decode_image,
    image_size,
    read_binary_mask,
    read_image,
    read_label_image,
    to_float_tensor,
)
from maskrcnn.errors import DataError

RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, size=shape, dtype=np.uint16)


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG (gray 0, RGB 2, gray+alpha 4, RGBA 6) written by hand: PIL cannot write colour ones."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- bit depth and channels


def test_rgb_png_is_read_exactly_with_its_size(tmp_path: Path) -> None:
    a = _u8(20, 30, 3)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    out = read_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "rgb.png") == (20, 30)


def test_grayscale_8_and_16_bit_keep_one_channel_and_depth(tmp_path: Path) -> None:
    g8, g16 = _u8(21, 17), _u16(21, 17)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out8, out16 = read_image(tmp_path / "g8.png"), read_image(tmp_path / "g16.png")
    assert out8.shape == (21, 17, 1) and out8.dtype == np.uint8
    assert out16.shape == (21, 17, 1) and out16.dtype == np.uint16
    np.testing.assert_array_equal(out8[:, :, 0], g8)
    np.testing.assert_array_equal(out16[:, :, 0], g16)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16_bit_colour_png_is_not_reduced_to_8_bits(tmp_path: Path, channels: int) -> None:
    a = _u16(12, 9, channels)
    _png16(tmp_path / "c16.png", a)
    out = read_image(tmp_path / "c16.png")
    assert out.dtype == np.uint16 and out.shape == (12, 9, channels)
    np.testing.assert_array_equal(out, a)
    assert image_size(tmp_path / "c16.png") == (12, 9)


def test_rgba_keeps_alpha(tmp_path: Path) -> None:
    a = _u8(10, 11, 4)
    Image.fromarray(a, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (10, 11, 4)
    np.testing.assert_array_equal(out, a)


def test_palette_image_becomes_its_rgb_colours(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 7] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    colours = np.array(palette[:9], dtype=np.uint8).reshape(3, 3)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, colours[idx])


# --------------------------------------------------------------------------- TIFF layouts


def test_five_channel_tiff_in_every_layout_reads_as_hwc(tmp_path: Path) -> None:
    a = _u16(20, 30, 5)
    planar = np.ascontiguousarray(a.transpose(2, 0, 1))
    tifffile.imwrite(tmp_path / "contig.tif", a, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "separate.tif", planar, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "pages_chw.tif", planar)  # 5 pages of 20x30
    tifffile.imwrite(tmp_path / "pages_hwc.tif", a)  # tifffile's default: 20 pages of 30x5
    tifffile.imwrite(tmp_path / "imagej.tif", planar, imagej=True, metadata={"axes": "CYX"})
    for name in ("contig", "separate", "pages_chw", "pages_hwc", "imagej"):
        out = read_image(tmp_path / f"{name}.tif")
        assert out.shape == (20, 30, 5) and out.dtype == np.uint16, name
        np.testing.assert_array_equal(out, a, err_msg=name)
        assert image_size(tmp_path / f"{name}.tif") == (20, 30), name


def test_rgbd_tiff_and_float_tiff(tmp_path: Path) -> None:
    rgbd = _u8(8, 9, 4)
    tifffile.imwrite(tmp_path / "rgbd.tif", rgbd, photometric="rgb", extrasamples=["unspecified"])
    np.testing.assert_array_equal(read_image(tmp_path / "rgbd.tif"), rgbd)
    depth = RNG.random((8, 9), dtype=np.float32) * 10
    tifffile.imwrite(tmp_path / "depth.tif", depth)
    out = read_image(tmp_path / "depth.tif")
    assert out.dtype == np.float32 and out.shape == (8, 9, 1)
    np.testing.assert_array_equal(out[:, :, 0], depth)


def test_tiff_with_too_many_axes_is_an_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", _u8(2, 3, 8, 9), photometric="minisblack")
    with pytest.raises(DataError, match=r"stack\.tif.*one image per file"):
        read_image(tmp_path / "stack.tif")


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(tmp_path: Path, orientation: int) -> None:
    a = _u8(6, 10, 3)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    out = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, expected)
    assert image_size(tmp_path / "o.png") == expected.shape[:2]
    np.testing.assert_array_equal(apply_orientation(a, orientation), expected)


def test_exif_rotated_jpeg_is_upright(tmp_path: Path) -> None:
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[:8, :8] = 255  # a white block top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (32, 16, 3)
    assert image_size(tmp_path / "r.jpg") == (32, 16)
    assert out[:8, -8:].mean() > 240 and out[:8, :8].mean() < 15  # the block is now top-right


# --------------------------------------------------------------------------- broken files


def test_truncated_missing_and_garbage_files_raise_one_line_data_errors(tmp_path: Path) -> None:
    Image.fromarray(_u8(64, 64, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(tmp_path / "full.tif", _u8(64, 64, 3))
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        "cut.png": "truncated file",
        "cut.tif": "truncated file",
        "junk.jpg": "not an image",
        "empty.png": "empty file",
        "nope.png": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(DataError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert f"cannot read image {tmp_path / name}" in msg and reason in msg and "\n" not in msg
        assert msg.endswith(("re-export or remove it", "remove it from the annotations"))
    with pytest.raises(DataError, match="junk.jpg: not an image"):
        image_size(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match=r"bytes.png \(imageData\)"):
        decode_image(b"\x89PNG\r\n\x1a\nbroken", "bytes.png (imageData)")


# --------------------------------------------------------------------------- tensors and channel checks


def test_to_float_tensor_scales_by_bit_depth() -> None:
    a8 = np.array([[[0, 255, 51]]], dtype=np.uint8)
    a16 = np.array([[[0, 65535, 13107]]], dtype=np.uint16)
    t8, t16 = to_float_tensor(a8), to_float_tensor(a16)
    assert t8.dtype == torch.float32 and t8.shape == (3, 1, 1)
    torch.testing.assert_close(t8[:, 0, 0], torch.tensor([0.0, 1.0, 0.2]))
    torch.testing.assert_close(t16[:, 0, 0], torch.tensor([0.0, 1.0, 0.2]))
    f = np.full((2, 3, 5), 7.5, dtype=np.float64)
    tf = to_float_tensor(f)
    assert tf.shape == (5, 2, 3) and tf.dtype == torch.float32 and float(tf.max()) == 7.5
    assert to_float_tensor(np.zeros((4, 6), dtype=np.uint8)).shape == (1, 4, 6)
    with pytest.raises(DataError, match="int16"):
        to_float_tensor(np.zeros((2, 2, 1), dtype=np.int16))


def test_check_channels_names_the_file_and_the_fix() -> None:
    check_channels(np.zeros((4, 4, 3), np.uint8), 3, "a.png")
    check_channels(np.zeros((4, 4), np.uint8), 1, "g.png")
    with pytest.raises(DataError) as info:
        check_channels(np.zeros((4, 4, 4), np.uint8), 3, "image.png")
    assert str(info.value) == ("image.png has 4 channels but image_channel_count=3; set image_channel_count: 4 "
                               "(and 4 pixel_mean/pixel_std values) or convert the images")


# --------------------------------------------------------------------------- masks


def test_label_images_keep_values_and_palette_indices(tmp_path: Path) -> None:
    lab = np.zeros((5, 6), dtype=np.uint16)
    lab[1:3, 1:4], lab[4, :] = 300, 7
    Image.fromarray(lab).save(tmp_path / "l16.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "l16.png"), lab)
    tifffile.imwrite(tmp_path / "l32.tif", lab.astype(np.uint32) * 1000)
    np.testing.assert_array_equal(read_label_image(tmp_path / "l32.tif"), lab.astype(np.uint32) * 1000)
    idx = (lab > 0).astype(np.uint8) * 2
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    im.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "pal.png"), idx)
    Image.fromarray(_u8(5, 6, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png has shape \(5, 6, 3\)"):
        read_label_image(tmp_path / "rgb.png")


def test_binary_mask_any_nonzero_is_inside(tmp_path: Path) -> None:
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1, 2], m[3, 4] = 255, 1
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_binary_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.sum() == 2 and out[1, 2] and out[3, 4]

"""Hostile and damaged images (issue 12 item 3): every reader path (PIL, the 16-bit PNG decoder,
tifffile) gives a one-line DataError naming the file and the fix; folder runs (``detect``,
``check-data``) skip and list every bad file and go on. Cases that crashed the interpreter
(signal 11 in libpng) or allocated gigabytes before the fix run in child processes, so a
regression fails the test instead of killing the test runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import _hostile_images as H
from _bad_input import ROOT, assert_one_line_error, run_cli, run_cli_subprocess
from maskrcnn.data import images as images_mod
from maskrcnn.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIXEL_LIMIT_ENV,
    check_pixel_count,
    image_size,
    max_image_pixels,
    read_image,
    read_label_image,
)
from maskrcnn.errors import DataError, MaskRCNNError

IN_PROCESS = [name for name in H.CASES if name not in H.USED_TO_CRASH]


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


# --------------------------------------------------------------------------- the reader API


@pytest.mark.parametrize("name", IN_PROCESS)
def test_reader_refuses_hostile_file_in_one_line(tmp_path: Path, name: str) -> None:
    (path,) = H.make(tmp_path, [name])
    with pytest.raises(MaskRCNNError) as info:
        read_image(path)
    assert_one_line_error(info, str(path), *H.CASES[name][1])


def _read_in_child(paths: list[Path]) -> tuple[int, dict[str, str]]:
    """``read_image`` of each path in a child process: exit status and ``{path: error message}``."""
    code = ("import json, sys\nfrom maskrcnn.data.images import read_image\nfrom maskrcnn.errors import MaskRCNNError\n"
            "out = {}\nfor p in sys.argv[1:]:\n    try:\n        read_image(p); out[p] = 'read'\n"
            "    except MaskRCNNError as exc:\n        out[p] = str(exc)\nprint(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if proc.returncode == 0 and lines else {})


@pytest.fixture(scope="module")
def crash_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, str]]:
    folder = tmp_path_factory.mktemp("crash")
    return _read_in_child(H.make(folder, sorted(H.USED_TO_CRASH)))


@pytest.mark.parametrize("name", sorted(H.USED_TO_CRASH))
def test_reader_refuses_files_that_used_to_crash(crash_cases: tuple[int, dict[str, str]], name: str) -> None:
    code, messages = crash_cases
    assert code == 0, f"the child reading the files died with status {code}"
    (message,) = [m for p, m in messages.items() if Path(p).name == name]
    assert "\n" not in message and name in message and message != "read"
    for fragment in H.CASES[name][1]:
        assert fragment.lower() in message.lower(), (fragment, message)


@pytest.mark.parametrize("name", [n for n in IN_PROCESS if n.startswith("bomb")] + ["channels.tif"])
def test_image_size_refuses_bombs_from_the_header(tmp_path: Path, name: str) -> None:
    (path,) = H.make(tmp_path, [name])
    with pytest.raises(DataError) as info:
        image_size(path)
    assert_one_line_error(info, str(path), *H.BOMB)


@pytest.mark.parametrize("name", ["bomb8.png", "bomb.tif", "crc_idat.png", "corrupt_idat.png", "cut.tif",
                                  "no_iend.png", "fifo.png", "empty.png", "random.png"])
def test_label_reader_refuses_hostile_file(tmp_path: Path, name: str) -> None:
    (path,) = H.make(tmp_path, [name])
    with pytest.raises(DataError) as info:
        read_label_image(path)
    assert_one_line_error(info, str(path), *H.CASES[name][1])


@pytest.mark.parametrize("name, data", [
    ("png_named.jpg", lambda a: H.encode(a, "PNG")),
    ("tiff_named.png", lambda a: H.encode(a, "TIFF")),
    ("bmp_named.gif", lambda a: H.encode(a, "BMP")),
])
def test_the_content_decides_the_format_not_the_extension(tmp_path: Path, name: str, data) -> None:
    a = H.rgb(12, 17)
    (tmp_path / name).write_bytes(data(a))
    np.testing.assert_array_equal(read_image(tmp_path / name), a)


def test_corrupt_image_data_is_an_error_not_a_partly_black_image(tmp_path: Path) -> None:
    """The decode error used to be swallowed while reading the EXIF orientation (an eXIf chunk or not)."""
    exif = H.chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00")
    good = H.good_png()
    with_exif = good[:33] + exif + good[33:]
    for name, data in {"plain.png": good, "exif.png": with_exif}.items():
        (tmp_path / name).write_bytes(data)
        assert read_image(tmp_path / name).shape[2] == 3
        (tmp_path / f"bad_{name}").write_bytes(H.damage_idat(data, fix_crc=True))
        with pytest.raises(DataError, match=f"bad_{name}: corrupt"):
            read_image(tmp_path / f"bad_{name}")
    assert read_image(tmp_path / "exif.png").shape[:2] == (40, 32)  # orientation 6 still applied


def test_valid_16_bit_colour_pngs_still_read_exactly(tmp_path: Path) -> None:
    """The checks before libpng accept real files: every colour type, odd sizes, Adam7 interlacing."""
    for i, (h, w, c) in enumerate([(1, 1, 3), (7, 13, 4), (16, 9, 2), (33, 5, 3)]):
        a = H._u16(h, w, c)
        (tmp_path / f"{i}.png").write_bytes(H.png16(a))
        np.testing.assert_array_equal(read_image(tmp_path / f"{i}.png"), a)
    a = H._u16(11, 14, 3)
    rows: list[bytes] = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = a[y0::dy, x0::dx]
        rows += [b"\x00" + r.astype(">u2").tobytes() for r in sub] if sub.size else []
    (tmp_path / "adam7.png").write_bytes(H.png(14, 11, 16, 2, zlib.compress(b"".join(rows)), interlace=1))
    np.testing.assert_array_equal(read_image(tmp_path / "adam7.png"), a)


# --------------------------------------------------------------------------- the pixel limit


def _write(fmt: str, path: Path, h: int, w: int) -> None:
    if fmt == "png16":
        path.write_bytes(H.png16(H._u16(h, w, 3)))
    elif fmt == "gray16":
        Image.fromarray(H._u16(h, w, 1)[:, :, 0]).save(path)
    elif fmt == "tiff":
        tifffile.imwrite(path, H.rgb(h, w))
    else:
        Image.fromarray(H.rgb(h, w)).save(path, fmt)


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("png16", "png"), ("gray16", "png"), ("JPEG", "jpg"),
                                      ("GIF", "gif"), ("BMP", "bmp"), ("tiff", "tif"), ("WEBP", "webp"),
                                      ("PPM", "ppm"), ("JPEG2000", "jp2")])
def test_an_image_at_the_limit_reads_and_one_pixel_row_more_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   fmt: str, ext: str) -> None:
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 60 * 50)
    _write(fmt, tmp_path / f"at.{ext}", 60, 50)
    _write(fmt, tmp_path / f"over.{ext}", 61, 50)
    assert read_image(tmp_path / f"at.{ext}").shape[:2] == (60, 50)
    assert image_size(tmp_path / f"at.{ext}") == (60, 50)
    for reader in (read_image, image_size):
        with pytest.raises(DataError) as info:
            reader(tmp_path / f"over.{ext}")
        assert_one_line_error(info, f"over.{ext}", "50 x 61 = 3,050 pixels", "limit of 3,000", f"{PIXEL_LIMIT_ENV}=3050")


def test_the_limit_is_set_by_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(H.rgb(60, 50)).save(tmp_path / "a.png")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "2999")
    with pytest.raises(DataError, match="limit of 2,999"):
        read_image(tmp_path / "a.png")
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 10**9)  # the variable wins over the module setting
    assert max_image_pixels() == 2999
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "3_000")
    assert read_image(tmp_path / "a.png").shape == (60, 50, 3)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 10)
    for off in ("0", "none", "OFF"):  # disabled, whatever the module setting
        monkeypatch.setenv(PIXEL_LIMIT_ENV, off)
        assert max_image_pixels() is None and read_image(tmp_path / "a.png").shape == (60, 50, 3)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "lots")
    with pytest.raises(MaskRCNNError) as info:
        read_image(tmp_path / "a.png")
    assert_one_line_error(info, PIXEL_LIMIT_ENV, "'lots'", "0 to disable")


def test_the_module_setting_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 178_956_970
    check_pixel_count(DEFAULT_MAX_IMAGE_PIXELS, 1)
    with pytest.raises(DataError, match="178,956,971 pixels"):
        check_pixel_count(DEFAULT_MAX_IMAGE_PIXELS + 1, 1, name="x.png")
    with pytest.raises(DataError, match="715,827,881 values"):  # within the pixel limit, too many channels
        check_pixel_count(1, 1, 4 * DEFAULT_MAX_IMAGE_PIXELS + 1)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", None)
    check_pixel_count(10**6, 10**6, 3)
    with pytest.raises(DataError, match="no pixels"):  # an empty image is never allowed
        check_pixel_count(0, 5)


# --------------------------------------------------------------------------- folder runs through the CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint: enough for the CLI to detect (what it finds does not matter here)."""
    import torch

    from maskrcnn import Config
    from maskrcnn.modeling import build_model
    from maskrcnn.weights import save_checkpoint

    torch.manual_seed(0)
    config = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                    num_classes=2, class_names=["BG", "thing"], image_min_dim=64, image_max_dim=64,
                    post_nms_rois_inference=20, detection_max_instances=4)
    model = build_model(config)
    return save_checkpoint(model, config, tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def _good_images(folder: Path) -> list[str]:
    """Three readable images of two sizes (one a PNG named .jpg), in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "good_a.png").write_bytes(H.encode(H.rgb(40, 48), "PNG"))
    (folder / "good_b.jpg").write_bytes(H.encode(H.rgb(40, 48), "PNG"))
    (folder / "good_c.tif").write_bytes(H.encode(H.rgb(56, 30), "TIFF"))
    return [str(folder / n) for n in ("good_a.png", "good_b.jpg", "good_c.tif")]


def _skip_lines(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skipped")]


def _assert_each_listed(lines: list[str], folder: Path, names: list[str]) -> None:
    for name in names:
        mine = [line for line in lines if str(folder / name) + ":" in line]
        assert len(mine) == 1, (name, lines)
        for fragment in H.CASES[name][1]:
            assert fragment.lower() in mine[0].lower(), (fragment, mine[0])


def test_detect_skips_and_lists_every_hostile_file_and_processes_the_rest(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    good = _good_images(folder)
    H.make(folder)
    listed = [n for n in H.CASES if n not in H.NOT_LISTED]
    result = run_cli_subprocess("detect", folder, "--weights", checkpoint, "--out", tmp_path / "out", "--device", "cpu",
                                "--batch-size", "2", timeout=300)
    assert result.code == 0, result.err[-3000:]
    assert "Traceback" not in result.err
    _assert_each_listed(_skip_lines(result.err), folder, listed)
    info = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [i["file_name"] for i in info["images"]] == good
    assert [(i["height"], i["width"]) for i in info["images"]] == [(40, 48), (40, 48), (56, 30)]
    assert sorted(s["file_name"] for s in info["skipped"]) == sorted(str(folder / n) for n in listed)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["good_a.png", "good_b.png", "good_c.png"]
    assert "3 images" in result.out and f"skipped {len(listed)} unreadable" in result.out


def test_detect_jsonl_lists_each_skipped_file(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    good = _good_images(folder)
    bad = ["crc_idat.png", "nan.tif", "bomb.gif", "page.jpg", "fifo.png", "dangling.png"]
    H.make(folder, bad)
    result = run_cli("detect", folder, "--weights", checkpoint, "--out", tmp_path / "out", "--device", "cpu", "--jsonl")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    _assert_each_listed(_skip_lines(result.err), folder, bad)
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["file_name"] for s in skipped) == sorted(str(folder / n) for n in bad)
    assert all(s["file_name"] in s["error"] for s in skipped)
    images = [json.loads(line) for line in (tmp_path / "out" / "images.jsonl").read_text().splitlines()]
    assert [i["file_name"] for i in images] == good and [i["id"] for i in images] == [1, 2, 3]
    assert "skipped 6 unreadable" in result.out and "skipped.jsonl" in result.out


@pytest.mark.parametrize("mode", [[], ["--jsonl"], ["--tile", "64", "--tile-overlap", "8"]])
def test_detect_exits_1_when_every_input_is_unreadable(tmp_path: Path, checkpoint: Path, mode: list[str]) -> None:
    folder = tmp_path / "in"
    bad = ["cut.jpg", "crc_ihdr.png", "nan.tif"]
    H.make(folder, bad)
    result = run_cli("detect", folder, folder / "cut.jpg", "--weights", checkpoint, "--out", tmp_path / "out",
                     "--device", "cpu", *mode)
    assert result.code == 1, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = _skip_lines(result.err)
    _assert_each_listed(lines[:3], folder, bad)
    assert len(lines) == 4  # cut.jpg given twice (in the folder and by name): listed twice
    assert "0 images" in result.out


def test_detect_tiled_skips_bad_files_and_goes_on(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "in"
    good = _good_images(folder)
    H.make(folder, ["bomb.tif", "corrupt_idat.png", "loop.png"])
    result = run_cli("detect", folder, "--weights", checkpoint, "--out", tmp_path / "out", "--device", "cpu",
                     "--tile", "32", "--tile-overlap", "8")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    _assert_each_listed(_skip_lines(result.err), folder, ["bomb.tif", "corrupt_idat.png", "loop.png"])
    info = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [i["file_name"] for i in info["images"]] == good and len(info["skipped"]) == 3


def _dsb(root: Path, files: dict[str, bytes | None]) -> None:
    """An instance-mask folder dataset (ROOT/<id>/images/<file>), no masks: every image background only."""
    for name, data in files.items():
        d = root / Path(name).stem / "images"
        d.mkdir(parents=True)
        if data is not None:
            (d / name).write_bytes(data)


def test_check_data_reports_every_bad_image_of_fifty(tmp_path: Path) -> None:
    """Five corrupt images among 50 (IDAT damaged with a valid CRC, a bad CRC, truncated, empty, HTML): all five
    are reported, each once, by name."""
    files: dict[str, bytes | None] = {f"img{i:02d}.png": H.encode(H.rgb(16, 16), "PNG") for i in range(50)}
    bad = {"img03.png": H.damage_idat(files["img03.png"], fix_crc=True), "img11.png": H.wrong_crc(files["img11.png"], b"IDAT"),
           "img27.png": H.cut(files["img27.png"]), "img38.png": b"", "img49.png": b"<html>not found</html>"}
    files.update(bad)
    _dsb(tmp_path / "ds", files)
    result = run_cli("check-data", tmp_path / "ds", "--json", "--format", "instance-masks")
    assert result.code == 1, result.err
    errors = [f for f in json.loads(result.out)["findings"] if f["severity"] == "error"]
    assert sorted(Path(f["image"]).name for f in errors) == sorted(bad)
    assert all(f["kind"] == "unreadable_image" and Path(f["image"]).name in f["message"] for f in errors)


def test_check_data_reports_hostile_images_without_crashing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in H.CASES:
        H.make(root / name.replace(".", "_") / "images", [name])
    (root / "fine" / "images").mkdir(parents=True)
    (root / "fine" / "images" / "fine.png").write_bytes(H.good_png())
    result = run_cli_subprocess("check-data", root, "--json", "--format", "instance-masks", timeout=300)
    assert result.code == 1, result.err[-3000:]
    assert "Traceback" not in result.err
    findings = json.loads(result.out)["findings"]
    named = {Path(f["image"]).name for f in findings if f["severity"] == "error" and f["image"]}
    # a folder or missing file in images/ leaves the sample without an image: reported by its folder
    assert named == {n for n in H.CASES if n not in H.NOT_LISTED} | {"folder_png", "missing_png"}
    for f in findings:
        if f["kind"] == "unreadable_image" and Path(f["image"]).name.startswith("bomb"):
            assert "over the limit" in f["message"] and PIXEL_LIMIT_ENV in f["message"]

"""Bad command-line values and the CLI's safety nets: numeric flags, ``--device``, commands whose
module cannot be imported, OS errors about user paths and multi-line messages, each one line."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from _bad_input import assert_clean_error, run_cli
from maskrcnn import cli
from maskrcnn.commands import args as A
from maskrcnn.errors import DataError, first_line

DETECT = ["detect", "img.png", "--weights", "w.pth", "--out", "o"]
TRAIN = ["train", "--config", "shapes_demo", "--data", "shapes:2"]
DEMO = ["demo", "--out", "o"]
CHECK = ["check-data", "data.json"]
PLAN = ["plan", "--config", "shapes_demo"]


@pytest.mark.parametrize("argv,flag,fix", [
    (DETECT + ["--score", "2"], "--score", "from 0 to 1"),
    (DETECT + ["--score", "-0.1"], "--score", "from 0 to 1"),
    (DETECT + ["--score", "nan"], "--score", "NaN"),
    (DETECT + ["--score", "inf"], "--score", "NaN"),
    (DETECT + ["--score", "high"], "--score", "e.g. 0.5"),
    (DETECT + ["--batch-size", "0"], "--batch-size", "at least 1"),
    (DETECT + ["--batch-size", "1.5"], "--batch-size", "whole number"),
    (DETECT + ["--tile", "-512"], "--tile", "at least 1"),
    (DETECT + ["--tile", "512", "--tile-overlap", "-1"], "--tile-overlap", "at least 0"),
    (TRAIN + ["--minutes", "0"], "--minutes", "above 0"),
    (TRAIN + ["--minutes", "-30"], "--minutes", "above 0"),
    (TRAIN + ["--minutes", "nan"], "--minutes", "NaN"),
    (DEMO + ["--minutes", "0"], "--minutes", "above 0"),
    (DEMO + ["--seed", "-1"], "--seed", "at least 0"),
    (DEMO + ["--threads", "0"], "--threads", "at least 1"),
    (CHECK + ["--duplicate-iou", "1.5"], "--duplicate-iou", "from 0 to 1"),
    (CHECK + ["--max-per-kind", "0"], "--max-per-kind", "at least 1"),
    (CHECK + ["--tiny-area", "-4"], "--tiny-area", "at least 0"),
    (CHECK + ["--imbalance-ratio", "0"], "--imbalance-ratio", "above 0"),
    (PLAN + ["--steps", "0"], "--steps", "at least 1"),
    (PLAN + ["--headroom", "-0.1"], "--headroom", "at least 0"),
    (PLAN + ["--instances", "0"], "--instances", "at least 1"),
])
def test_bad_numeric_flags_are_usage_errors(argv: list[str], flag: str, fix: str) -> None:
    result = run_cli(*argv)
    line = assert_clean_error(result, f"argument {flag}", fix)
    assert line.startswith(f"maskrcnn {argv[0]}: error:")


@pytest.mark.parametrize("text,expected", [("0", 0.0), ("1", 1.0), ("0.25", 0.25), (" 1e-3", 0.001)])
def test_probability_accepts_the_closed_interval(text: str, expected: float) -> None:
    assert A.probability(text) == expected


def test_good_numeric_flags_parse() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(DETECT + ["--score", "0", "--batch-size", "1", "--tile", "64", "--tile-overlap", "0"])
    assert (args.score, args.batch_size, args.tile, args.tile_overlap) == (0.0, 1, 64, 0)
    args = parser.parse_args(TRAIN + ["--minutes", "0.5"])
    assert args.minutes == 0.5
    assert A.positive_int("7") == 7 and A.non_negative_int("0") == 0 and A.positive_float("1e-3") == 0.001


@pytest.mark.parametrize("argv", [DETECT, TRAIN, PLAN, ["evaluate", "--weights", "w.pth", "--data", "d.json"]],
                         ids=["detect", "train", "plan", "evaluate"])
@pytest.mark.parametrize("device,fragment", [("bogus", "not a device name"), ("cuda:x", "not a device name"),
                                             ("cuda", "use --device cpu"), ("cuda:3", "use --device cpu")])
def test_bad_device_is_one_line_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str],
                                                device: str, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli(*argv, "--device", device)
    assert_clean_error(result, f"device {device!r}", fragment)
    assert list(tmp_path.iterdir()) == []  # nothing was written


# ------------------------------------------------------------------------------ command modules


def _fail_import(monkeypatch: pytest.MonkeyPatch, command: str, exc: BaseException) -> None:
    real = importlib.import_module

    def fake(name: str, *a: Any, **k: Any) -> Any:
        if name == f"maskrcnn.commands.{command}":
            raise exc
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", fake)


def test_a_command_missing_a_package_says_which(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _fail_import(monkeypatch, "check_data", ModuleNotFoundError("No module named 'skimage'", name="skimage"))
    result = run_cli("check-data", "data.json", "--json")
    line = assert_clean_error(result, "check-data is unavailable", "'skimage'", "pip install scikit-image")
    assert line == result.err.strip()
    assert run_cli("config", "--set", "epochs=3").code == 0  # the other commands still work
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    assert "check-data" in capsys.readouterr().out and "unavailable" in cli.build_parser().format_help()


@pytest.mark.parametrize("exc", [
    ModuleNotFoundError("No module named 'maskrcnn.nowhere'", name="maskrcnn.nowhere"),
    ImportError("cannot import name 'gone' from 'maskrcnn.data'"),
    SyntaxError("invalid syntax"),
])
def test_real_import_errors_of_a_command_are_not_hidden(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    _fail_import(monkeypatch, "detect", exc)
    with pytest.raises(type(exc)):
        cli.main(["config"])


def test_a_package_missing_at_run_time_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskrcnn.commands import config as command

    def run(args: Any) -> int:
        raise ModuleNotFoundError("No module named 'imageio'", name="imageio")

    monkeypatch.setattr(command, "run", run)
    assert_clean_error(run_cli("config"), "maskrcnn config needs a package", "'imageio'", "pip install imageio")

    def broken(args: Any) -> int:
        raise ModuleNotFoundError("No module named 'maskrcnn.gone'", name="maskrcnn.gone")

    monkeypatch.setattr(command, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["config"])


# ------------------------------------------------------------------------------ OS errors, one line


@pytest.mark.parametrize("exc,fragments", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out/x.json"), ("/data/out/x.json", "permission denied")),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/w.pth"), ("/data/w.pth", "is a folder")),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/x"), ("/data/file/x", "is a file")),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/a.png"), ("/data/out/a.png", "no space left")),
    (OSError(errno.ENOSPC, "No space left on device"), ("no space left", "free some space")),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), ("/ro/x", "read-only")),
    (FileExistsError(errno.EEXIST, "File exists", "/data/out"), ("/data/out", "already exists")),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", "/b"), None),
    (OSError(errno.EIO, "Input/output error", "/a"), None),
])
def test_os_errors_about_user_paths_are_one_line(monkeypatch: pytest.MonkeyPatch, exc: OSError,
                                                 fragments: tuple[str, ...] | None) -> None:
    from maskrcnn.commands import config as command

    def run(args: Any) -> int:
        raise exc

    monkeypatch.setattr(command, "run", run)
    if fragments is None:  # not about a path the user chose: a bug, shown with its traceback
        with pytest.raises(OSError):
            cli.main(["config"])
        return
    result = run_cli("config")
    assert result.err.count("\n") == 1
    assert_clean_error(result, *fragments)
    monkeypatch.setenv("MASKRCNN_DEBUG", "1")
    with pytest.raises(OSError):
        cli.main(["config"])


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """A real write failure: ``maskrcnn config`` has no output path, so ``detect`` with a model."""
    import numpy as np
    from PIL import Image

    from maskrcnn import Config
    from maskrcnn.modeling import build_model
    from maskrcnn.weights import save_checkpoint

    cfg = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                 num_classes=2, image_min_dim=64, image_max_dim=64, detection_max_instances=5)
    ck = save_checkpoint(build_model(cfg), cfg, tmp_path / "m.safetensors")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "taken"
    out.write_text("not a folder")
    result = run_cli("detect", tmp_path / "a.png", "--weights", ck, "--out", out, "--device", "cpu")
    assert_clean_error(result, str(out))
    assert out.read_text() == "not a folder"


def test_multi_line_user_errors_print_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskrcnn.commands import config as command

    def run(args: Any) -> int:
        raise DataError("images/a.png: unreadable\n  (truncated file)\n")

    monkeypatch.setattr(command, "run", run)
    result = run_cli("config")
    assert result.err == "error: images/a.png: unreadable; (truncated file)\n"


@pytest.mark.parametrize("exc,default,expected", [
    (ValueError("\n  images/a.png: truncated file  \n  (more detail)"), None, "images/a.png: truncated file"),
    (OSError(), None, "OSError"),
    (RuntimeError(" \n\t"), "out of memory", "out of memory"),
    (KeyError("height"), "", "'height'"),
])
def test_first_line_is_the_first_non_blank_line_or_the_default(exc: BaseException, default: str | None,
                                                               expected: str) -> None:
    assert first_line(exc, default) == expected


@pytest.mark.parametrize("text,limit,expected", [
    ("x" * 10, 10, "x" * 10),
    ("x" * 11, 10, "x" * 7 + "..."),
    ("  abc  \nmore", 3, "abc"),
    ("x" * 500, None, "x" * 500),
])
def test_first_line_cuts_a_long_line_to_the_limit(text: str, limit: int | None, expected: str) -> None:
    assert first_line(ValueError(text), limit=limit) == expected

"""Bad input to ``maskrcnn export`` and to running an exported model (``load`` / ``detect --weights x.onnx``):
each case is one ``error:`` line (exit 2) or one-line ``MaskRCNNError`` naming the file or flag and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import maskrcnn  # noqa: E402
from maskrcnn.export.onnx import export_onnx  # noqa: E402
from maskrcnn.weights import save_checkpoint  # noqa: E402

from _bad_input import assert_clean_error, assert_one_line_error, run_cli  # noqa: E402
from test_predictor_inputs import biased_model, photo  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its export (model.onnx + model.json) and an image, made once."""
    root = tmp_path_factory.mktemp("export_bad")
    model = biased_model()
    ck = save_checkpoint(model, model.config, root / "tiny.safetensors")
    onnx_path, side = export_onnx(model, root / "model.onnx")
    Image.fromarray(photo(40, 50)).save(root / "img.png")
    return {"ck": ck, "onnx": onnx_path, "side": side, "img": root / "img.png"}


def _copy(good: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    onnx_path, side = tmp_path / "model.onnx", tmp_path / "model.json"
    shutil.copy(good["onnx"], onnx_path)
    shutil.copy(good["side"], side)
    return onnx_path, side


def _missing_onnx(good, tmp_path):
    return tmp_path / "nothing.onnx"


def _no_sidecar(good, tmp_path):
    onnx_path, side = _copy(good, tmp_path)
    side.unlink()
    return onnx_path


def _sidecar_not_json(good, tmp_path):
    onnx_path, side = _copy(good, tmp_path)
    side.write_text("{not json")
    return onnx_path


def _sidecar_of_another_export(good, tmp_path):
    onnx_path, side = _copy(good, tmp_path)
    meta = json.loads(side.read_text())
    meta["files"]["model.onnx"] = "0" * 64
    side.write_text(json.dumps(meta))
    return onnx_path


def _truncated_onnx(good, tmp_path):
    onnx_path, _ = _copy(good, tmp_path)
    onnx_path.write_bytes(onnx_path.read_bytes()[:5000])  # the sidecar's hash no longer matches
    return onnx_path


def _corrupt_onnx_matching_sidecar(good, tmp_path):
    import hashlib

    onnx_path, side = _copy(good, tmp_path)
    junk = b"\x08\x07garbage, not a protobuf" * 50
    onnx_path.write_bytes(junk)
    meta = json.loads(side.read_text())
    meta["files"]["model.onnx"] = hashlib.sha256(junk).hexdigest()
    side.write_text(json.dumps(meta))
    return onnx_path


def _sidecar_bad_config(good, tmp_path):
    import hashlib

    onnx_path, side = _copy(good, tmp_path)
    meta = json.loads(side.read_text())
    meta["config"]["num_classes"] = -3
    meta["files"]["model.onnx"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))
    return onnx_path


def _sidecar_not_ours(good, tmp_path):
    onnx_path, side = _copy(good, tmp_path)
    side.write_text(json.dumps({"names": ["a"]}))
    return onnx_path


ONNX_CASES = {
    "missing .onnx": (_missing_onnx, ["nothing.onnx", "no such", "export"]),
    "sidecar missing": (_no_sidecar, ["model.json", "missing", "export"]),
    "sidecar not JSON": (_sidecar_not_json, ["model.json", "not a valid sidecar", "export"]),
    "sidecar of another export": (_sidecar_of_another_export, ["model.json", "does not match", "export"]),
    "truncated .onnx": (_truncated_onnx, ["model.json", "does not match", "export"]),
    "corrupt .onnx with its hash": (_corrupt_onnx_matching_sidecar, ["model.onnx", "cannot load", "export"]),
    "sidecar with a bad config": (_sidecar_bad_config, ["model.json", "invalid config", "export"]),
    "sidecar of another tool": (_sidecar_not_ours, ["model.json", "not a maskrcnn export", "export"]),
}


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_exported_model_is_one_line(case, good, tmp_path):
    make, fragments = ONNX_CASES[case]
    path = make(good, tmp_path)
    with pytest.raises(Exception) as exc:
        maskrcnn.load(path, device="cpu")
    assert_one_line_error(exc, *fragments)
    result = run_cli("detect", good["img"], "--weights", path, "--out", tmp_path / "out")
    assert_clean_error(result, *fragments)


EXPORT_CASES = {
    "unknown format": (["--format", "tensorrt"], ["--format tensorrt", "onnx"]),
    "--imgsz without tflite": (["--imgsz", "320"], ["--imgsz", "tflite"]),
    "--int8 without calibration": (["--int8"], ["--int8", "--calibration"]),
    "--calibration that does not exist": (["--int8", "--calibration", "nope"], ["--calibration nope", "no such folder"]),
    "--calibration without --int8": (["--calibration", "cal"], ["--calibration", "--int8"]),
    "--validation without --int8": (["--validation", "val.json"], ["--validation", "--int8"]),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_bad_export_options_are_one_line(case, good, tmp_path):
    extra, fragments = EXPORT_CASES[case]
    result = run_cli("export", "--weights", good["ck"], "--out", tmp_path / "m.onnx", *extra)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "m.onnx").exists()


TFLITE_CASES = {
    "--calibration with tflite": (["--int8", "--calibration", "cal"], ["--calibration", "dynamic-range", "drop"]),
    "--imgsz not a multiple of 32": (["--imgsz", "100"], ["--imgsz 100", "multiple of", "96"]),
    "--validation without --int8": (["--validation", "val.json"], ["--validation", "--int8"]),
}


@pytest.mark.parametrize("case", list(TFLITE_CASES))
def test_bad_tflite_export_options_are_one_line(case, good, tmp_path):
    extra, fragments = TFLITE_CASES[case]
    result = run_cli("export", "--weights", good["ck"], "--format", "tflite", "--out", tmp_path / "m.tflite", *extra)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "m.tflite").exists()


def test_tflite_export_without_the_converter_is_one_line(good, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    result = run_cli("export", "--weights", good["ck"], "--format", "tflite", "--out", tmp_path / "m.tflite")
    assert_clean_error(result, "--format tflite", "litert-torch", "pip install")
    assert not (tmp_path / "m.tflite").exists()


def _onnx_named_tflite(good, tmp_path):
    """An ONNX file under a .tflite name, with a matching sidecar."""
    import hashlib

    path, side = tmp_path / "model.tflite", tmp_path / "model.json"
    shutil.copy(good["onnx"], path)
    meta = json.loads(good["side"].read_text())
    meta["files"] = {"model.tflite": hashlib.sha256(path.read_bytes()).hexdigest()}
    side.write_text(json.dumps(meta))
    return path


def test_a_tflite_that_is_not_one_is_one_line(good, tmp_path):
    """A file LiteRT cannot read: one line, not a traceback."""
    pytest.importorskip("ai_edge_litert")
    with pytest.raises(Exception) as exc:
        maskrcnn.load(_onnx_named_tflite(good, tmp_path), device="cpu")
    assert_one_line_error(exc, "model.tflite", "LiteRT cannot load it", "export")


def test_a_tflite_without_the_interpreter_is_one_line(good, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import ai_edge_litert -> ImportError
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(Exception) as exc:
        maskrcnn.load(_onnx_named_tflite(good, tmp_path), device="cpu")
    assert_one_line_error(exc, "model.tflite", "ai-edge-litert", "pip install")


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("openvino", "m.xml")])
def test_calibration_folder_without_images_is_one_line(good, tmp_path, fmt, name):
    if fmt == "openvino":
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    empty = tmp_path / "cal"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = run_cli("export", "--weights", good["ck"], "--format", fmt, "--out", tmp_path / name, "--int8",
                     "--calibration", empty)
    assert_clean_error(result, "--calibration", "cal", "no readable image", "folder")
    assert not (tmp_path / name).exists()


def test_export_of_an_exported_model_or_missing_weights(good, tmp_path):
    assert_clean_error(run_cli("export", "--weights", good["onnx"], "--out", tmp_path / "m.onnx"),
                       "model.onnx", "already an exported model", "checkpoint")
    assert_clean_error(run_cli("export", "--weights", tmp_path / "none.safetensors", "--out", tmp_path / "m.onnx"),
                       "none.safetensors")


@pytest.mark.parametrize("kw, field", [({"detection_min_confidence": 0.3}, "detection_min_confidence"),
                                       ({"fast": True}, "fast")])
def test_changing_an_exported_models_config_is_one_line(kw, field, good):
    with pytest.raises(Exception) as exc:
        maskrcnn.load(good["onnx"], device="cpu", **kw)
    assert_one_line_error(exc, "model.onnx", field, "export again")


def test_detect_fast_on_an_export_is_one_line(good, tmp_path):
    result = run_cli("detect", good["img"], "--weights", good["onnx"], "--out", tmp_path / "o", "--fast")
    assert_clean_error(result, "model.onnx", "fast", "export again")


def test_tta_on_an_export_is_one_line(good, tmp_path):
    """Test-time views run in PyTorch only: --tta on an exported model names it and the fix."""
    result = run_cli("detect", good["img"], "--weights", good["onnx"], "--out", tmp_path / "o", "--tta", "flips")
    assert_clean_error(result, "model.onnx", "tta_views", "checkpoint")


def test_wrong_channel_count_into_an_export_is_one_line(good):
    p = maskrcnn.load(good["onnx"], device="cpu")
    with pytest.raises(Exception) as exc:
        p.detect(torch.rand(5, 30, 40))
    assert_one_line_error(exc, "5 channels", "3")

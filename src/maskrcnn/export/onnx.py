"""Export a model (``model.onnx``, or OpenVINO's ``model.xml`` + ``.bin``, plus a ``model.json``
sidecar) and read the sidecar back.

The graph is :class:`~maskrcnn.export.graph.ExportGraph` traced with PyTorch's TorchScript-based
exporter (``torch.onnx.export(dynamo=False)``; torchvision's ``roi_align`` and ``nms`` have
symbolic functions there) at opset :data:`OPSET`, with dynamic batch, height, width and
detection axes. The file is checked with ``onnx.checker`` before it is written (atomically).
``fmt="openvino"`` converts that ONNX model with ``openvino.convert_model`` (fp32 weights kept)
and writes OpenVINO's IR instead.

The sidecar (:data:`SIDECAR_SUFFIX`, next to the model) holds what a runtime needs besides the
graph: the class names, the full config, the input and output contract (:func:`io_contract`)
and the SHA-256 of each file of the export (``files``), so that a sidecar of another export, or
a changed or truncated model file, is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import WeightsError
from ..inference.predictor import class_names_of
from ..modeling import MaskRCNN
from ..utils.files import atomic_write_bytes, atomic_write_json
from ..weights import file_sha256
from .graph import INPUT_NAMES, OUTPUT_NAMES, ExportGraph, check_exportable

__all__ = ["OPSET", "SIDECAR_SUFFIX", "FORMATS", "export_model", "export_onnx", "io_contract", "read_sidecar",
           "sidecar_path", "update_sidecar"]

#: ONNX opset of the export (RoIAlign and NonMaxSuppression as ONNX Runtime runs them).
OPSET = 17
SIDECAR_SUFFIX = ".json"
FORMAT_NAME = "maskrcnn-export"
FORMAT_VERSION = 1
#: Model formats and the suffix of their model file.
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
#: Default side of the fixed ``imgsz x imgsz`` input of a TFLite export.
TFLITE_IMGSZ = 512


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(model_path).with_suffix(SIDECAR_SUFFIX)


def io_contract(config: Config) -> dict[str, Any]:
    """The exported graph's inputs and outputs: names, dtypes, layouts and meaning."""
    c = config.image_channel_count
    return {
        "inputs": {
            "images": {"dtype": "float32", "shape": ["batch", c, "height", "width"], "layout": "NCHW",
                       "range": [0.0, 1.0],
                       "meaning": "images scaled to [0, 1] (uint8 / 255, uint16 / 65535), each at the top-left of a "
                                  "zero-padded batch; the graph normalises and resizes "
                                  f"({config.detect_resize_mode}, min {config.image_min_dim}, max {config.image_max_dim})"},
            "sizes": {"dtype": "int64", "shape": ["batch", 2], "meaning": "real (height, width) of each image"},
        },
        "outputs": {
            "boxes": {"dtype": "float32", "shape": ["detections", 4],
                      "meaning": "x1, y1, x2, y2 in original image pixels (x2, y2 exclusive edges)"},
            "scores": {"dtype": "float32", "shape": ["detections"],
                       "meaning": "class score, descending within an image (config mask_scoring: maskness multiplies it by "
                                  "maskrcnn.inference.scoring.maskness of mask_probs outside the graph)"},
            "labels": {"dtype": "int64", "shape": ["detections"], "meaning": "class id (index into class_names; 0 is background)"},
            "mask_probs": {"dtype": "float32", "shape": ["detections", config.mask_pool_size * 2, config.mask_pool_size * 2],
                           "meaning": "mask probability inside the box (covering it exactly with config mask_paste: subpixel); "
                                      "paste with maskrcnn.inference.paste.paste_masks(..., mode=mask_paste)"},
            "batch_index": {"dtype": "int64", "shape": ["detections"],
                            "meaning": "image of each detection; detections are grouped by image in ascending order"},
        },
    }


def export_onnx(model: MaskRCNN, out: str | os.PathLike[str], **kw: Any) -> tuple[Path, Path]:
    """:func:`export_model` to ONNX."""
    return export_model(model, out, fmt="onnx", **kw)


def export_model(model: MaskRCNN, out: str | os.PathLike[str], *, fmt: str = "onnx", opset: int = OPSET,
                 calibration: str | os.PathLike[str] | None = None, calibration_images: int = 300,
                 on_skip: Any = None, int8: bool = False, imgsz: int = TFLITE_IMGSZ) -> tuple[Path, Path]:
    """Export ``model`` to ``out`` (``.onnx``, ``.xml`` for ``fmt="openvino"``, ``.tflite`` for
    ``fmt="tflite"``) and its sidecar; returns both paths. The model is put in eval mode on the CPU
    (in place: move it back if it was elsewhere).

    ``fmt="tflite"`` writes the dense parts at a fixed ``imgsz`` (:mod:`maskrcnn.export.tflite`;
    ``int8``: dynamic-range int8 weights, no calibration); ``opset`` and ``calibration`` do not apply.

    ``calibration`` (a folder of images): write the int8 model instead
    (:func:`maskrcnn.export.quantize.quantize_int8` for ONNX,
    :func:`~maskrcnn.export.quantize.quantize_openvino_int8` (NNCF) for OpenVINO), calibrated on up
    to ``calibration_images`` of them (unreadable ones go to ``on_skip(name, error)``); the
    sidecar's ``int8`` entry describes it.
    Raises :class:`~maskrcnn.config.ConfigError` when the config cannot be exported
    (:func:`~maskrcnn.export.graph.check_exportable`).
    """
    import onnx

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    config = model.config
    check_exportable(config)
    if fmt == "tflite":
        return _export_tflite(model, out, imgsz, int8)
    graph = ExportGraph(model.cpu().eval())
    gen = torch.Generator().manual_seed(0)
    c = config.image_channel_count
    # two images of different sizes, so that nothing in the trace is specialised to one of them
    images = torch.rand((2, c, 80, 96), generator=gen)
    sizes = torch.tensor([[80, 96], [64, 72]], dtype=torch.int64)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "sizes": {0: "batch"},
            **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is checked below
        torch.onnx.export(graph, (images, sizes), buf, dynamo=False, opset_version=opset, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=axes, do_constant_folding=True)
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    meta = _meta(config, fmt, opset=opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        if calibration is None:
            files = {out.name: data}
        else:
            fp32 = _write_export(Path(tmp) / "fp32.onnx", {"fp32.onnx": data}, meta)[0]
            files = _int8(fp32, fmt, out.name, calibration, calibration_images, on_skip, meta)
        if fmt == "openvino" and calibration is None:
            from .openvino import onnx_to_openvino

            files = onnx_to_openvino(data, Path(tmp), out.stem)
    return _write_export(out, files, meta)


def _meta(config: Config, fmt: str, **extra: Any) -> dict[str, Any]:
    """The sidecar's content (without ``files``) of an export of ``config`` in ``fmt``. An exported
    model detects once: test-time views (``tta_views``, ``tta_scales``) run in PyTorch only and are dropped here."""
    if config.tta_views or config.tta_scales:
        print(f"note: tta_views={list(config.tta_views)}, tta_scales={list(config.tta_scales)} are not exported "
              "(test-time augmentation runs in PyTorch only); the exported model detects once", file=sys.stderr)
        config = config.replace(tta_views=[], tta_scales=[])
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_format": fmt, **extra,
            "torch": torch.__version__, "class_names": class_names_of(config), "config": config.model_dump(mode="json"),
            **io_contract(config)}


def _export_tflite(model: MaskRCNN, out: Path, imgsz: int, int8: bool) -> tuple[Path, Path]:
    """The TFLite export: the dense parts (:func:`maskrcnn.export.tflite.convert_tflite`) at a fixed
    ``imgsz``; the sidecar's config is the fixed-size one and its ``tflite`` entry lists the glue."""
    from .tflite import convert_tflite, fixed_size_config, tflite_meta

    config = fixed_size_config(model.config, imgsz)
    data = convert_tflite(model, config, int8=int8)
    meta = _meta(config, "tflite", tflite=tflite_meta(config, int8))
    if int8:
        meta["int8"] = {"method": "ai-edge-quantizer dynamic_wi8_afp32 (dynamic range)", "weights": "int8 per channel",
                        "activations": "float32, quantised on the fly per run", "calibration": None}
    out.parent.mkdir(parents=True, exist_ok=True)
    return _write_export(out, {out.name: data}, meta)


def _int8(fp32: Path, fmt: str, name: str, calibration: str | os.PathLike[str], calibration_images: int,
          on_skip: Any, meta: dict[str, Any]) -> dict[str, bytes]:
    """The files of the int8 export ``name`` of the fp32 ONNX export ``fp32`` (ONNX Runtime's
    quantisation for ONNX, NNCF's for OpenVINO); sets ``meta["int8"]``."""
    import onnx

    if fmt == "openvino":
        from .openvino import save_openvino
        from .quantize import quantize_openvino_int8

        model, meta["int8"] = quantize_openvino_int8(fp32, calibration, max_images=calibration_images, on_skip=on_skip)
        return save_openvino(model, fp32.parent, Path(name).stem)
    from .quantize import quantize_int8

    data, meta["int8"] = quantize_int8(fp32, calibration, max_images=calibration_images, on_skip=on_skip)
    onnx.checker.check_model(onnx.load_from_string(data))
    return {name: data}


def _write_export(out: Path, files: dict[str, bytes], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write the export's files (``out`` and any others, e.g. OpenVINO's ``.bin``, next to it) and
    the sidecar (``meta`` plus each file's SHA-256), atomically, the sidecar last."""
    for name, data in files.items():
        atomic_write_bytes(out.parent / name, data)
    side = sidecar_path(out)
    atomic_write_json(side, {**meta, "model_file": out.name,
                             "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}})
    return out, side


def update_sidecar(model_path: str | os.PathLike[str], key: str, value: Any) -> Path:
    """Set ``key`` of an existing sidecar (e.g. the measured accuracy of an int8 export)."""
    side = sidecar_path(model_path)
    meta = json.loads(side.read_text(encoding="utf-8"))
    meta[key] = value
    return atomic_write_json(side, meta)


def read_sidecar(model_path: str | os.PathLike[str]) -> tuple[Config, dict[str, Any]]:
    """The config and sidecar dict of an exported ``model_path``; a one-line :class:`WeightsError`
    when the model or its sidecar is missing, unreadable, or belongs to another export."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise WeightsError(f"{model_path}: no such file; pass a model written by `maskrcnn export`")
    side = sidecar_path(model_path)
    if not side.is_file():
        raise WeightsError(f"{side}: the sidecar of {model_path.name} is missing; keep the .json that "
                           f"`maskrcnn export` wrote next to the {model_path.suffix} (or export again)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{side}: not a valid sidecar ({exc.__class__.__name__}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or not isinstance(meta.get("config"), dict):
        raise WeightsError(f"{side}: not a maskrcnn export sidecar (no format {FORMAT_NAME!r} with a config); "
                           "export the model again")
    files = meta.get("files")
    if not isinstance(files, dict) or model_path.name not in files:
        raise WeightsError(f"{side}: sidecar does not list {model_path.name} (it belongs to another export); "
                           "export the model again")
    for name, digest in files.items():
        path = model_path.parent / str(name)
        if not path.is_file():
            raise WeightsError(f"{path}: missing (part of this export, listed in {side.name}); export the model again")
        if digest != file_sha256(path):
            raise WeightsError(f"{side}: sidecar does not match {name} (another export, or the file was changed or "
                               "truncated); export the model again")
    # exports written before Config.mask_paste existed have torchvision's mask frame in the graph
    fields = {"mask_paste": "torchvision", **meta["config"]}
    try:
        config = Config(**fields)
    except Exception as exc:  # a ConfigError or pydantic's ValidationError
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise WeightsError(f"{side}: invalid config in the sidecar ({first}); export the model again") from None
    return config, meta

"""OpenVINO IR (``model.xml`` + ``model.bin``) of an exported ONNX graph.

``openvino.convert_model`` reads the ONNX model (every op of :mod:`maskrcnn.export.graph` has an
OpenVINO counterpart: RoIAlign, NonMaxSuppression, TopK, NonZero, GatherElements, Einsum ...);
weights stay fp32 (``compress_to_fp16=False``), dynamic axes stay dynamic. The int8 IR is NNCF's
quantisation of that model (:func:`maskrcnn.export.quantize.quantize_openvino_int8`: FakeQuantize
ops, run in int8 by OpenVINO's CPU plugin), written by :func:`save_openvino`.
:class:`maskrcnn.export.runtime.OpenVinoPredictor` runs the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["onnx_to_openvino", "save_openvino"]


def onnx_to_openvino(onnx_model: bytes, workdir: Path, stem: str = "model") -> dict[str, bytes]:
    """``{"<stem>.xml": ..., "<stem>.bin": ...}`` of the ONNX model bytes (``workdir``: a scratch folder)."""
    import openvino as ov

    src = workdir / "for_openvino.onnx"
    src.write_bytes(onnx_model)
    return save_openvino(ov.convert_model(str(src)), workdir, stem)


def save_openvino(model: Any, workdir: Path, stem: str = "model") -> dict[str, bytes]:
    """``{"<stem>.xml": ..., "<stem>.bin": ...}`` of an ``openvino.Model`` (weights as they are: no fp16 compression)."""
    import openvino as ov

    xml = workdir / f"{stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {xml.name: xml.read_bytes(), xml.with_suffix(".bin").name: xml.with_suffix(".bin").read_bytes()}

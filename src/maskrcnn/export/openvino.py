"""OpenVINO IR (``model.xml`` + ``model.bin``) of an exported ONNX graph.

``openvino.convert_model`` reads the ONNX model (every op of :mod:`maskrcnn.export.graph` has an
OpenVINO counterpart: RoIAlign, NonMaxSuppression, TopK, NonZero, GatherElements, Einsum ...);
weights stay fp32 (``compress_to_fp16=False``), dynamic axes stay dynamic. An int8 ONNX model
(QDQ, :mod:`maskrcnn.export.quantize`) converts the same way and runs in int8 on OpenVINO's CPU
plugin. :class:`maskrcnn.export.runtime.OpenVinoPredictor` runs the result.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["onnx_to_openvino"]


def onnx_to_openvino(onnx_model: bytes, workdir: Path, stem: str = "model") -> dict[str, bytes]:
    """``{"<stem>.xml": ..., "<stem>.bin": ...}`` of the ONNX model bytes (``workdir``: a scratch folder)."""
    import openvino as ov

    src = workdir / "for_openvino.onnx"
    src.write_bytes(onnx_model)
    xml = workdir / f"{stem}.xml"
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
    return {xml.name: xml.read_bytes(), xml.with_suffix(".bin").name: xml.with_suffix(".bin").read_bytes()}

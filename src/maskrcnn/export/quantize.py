"""int8 post-training static quantisation of an exported model with ONNX Runtime.

:func:`quantize_int8` calibrates on the user's images (read and converted by the fp32 model's
:class:`~maskrcnn.export.runtime.OnnxPredictor`, one image per run, as detection sees them) and
writes a QDQ model: the weights of :data:`QUANTIZED_OPS` int8 per output channel, their inputs
uint8 per tensor (min/max calibration). Everything else (box decoding, NMS, RoIAlign sampling,
the input transform, sigmoid/softmax) stays fp32, so the graph's contract is unchanged.
What int8 costs in accuracy is measured by ``maskrcnn export --int8 --validation DATA``.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MaskRCNNError

__all__ = ["QUANTIZED_OPS", "quantize_int8"]

#: ONNX ops whose weights and inputs are quantised (the dense layers: backbone, FPN, heads).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def _calibration_feeds(fp32_model: Path, source: str | os.PathLike[str], max_images: int,
                       on_skip: Callable[[str, MaskRCNNError], None] | None) -> Iterator[dict[str, np.ndarray]]:
    """Graph inputs of up to ``max_images`` readable images of ``source`` (unreadable ones go to ``on_skip``)."""
    from ..data.images import to_float_tensor
    from ..inference.streaming import iter_source
    from .runtime import OnnxPredictor, graph_inputs

    predictor = OnnxPredictor(fp32_model)
    used = 0
    for name, item in iter_source(source, on_error=on_skip):
        if used >= max_images:
            return
        try:
            arr = predictor.to_array(item, name)
        except MaskRCNNError as exc:
            if on_skip is not None:
                on_skip(name, exc)
            continue
        used += 1
        yield graph_inputs([to_float_tensor(arr)])


def quantize_int8(fp32_model: str | os.PathLike[str], calibration: str | os.PathLike[str], *, max_images: int = 300,
                  on_skip: Callable[[str, MaskRCNNError], None] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The int8 model (bytes) of the exported ``fp32_model`` (its sidecar next to it) and a
    description of the quantisation (for the sidecar). ``calibration``: a folder of images (or an
    image); a :class:`DataError` naming it when no image can be read."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_model = Path(fp32_model)
    feeds = _calibration_feeds(fp32_model, calibration, max_images, on_skip)
    first = next(feeds, None)
    if first is None:
        raise DataError(f"--calibration {calibration}: no readable image; pass a folder with a few hundred "
                        "of your images")
    feeds = itertools.chain([first], feeds)
    count = 0

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            nonlocal count
            feed = next(feeds, None)
            count += feed is not None
            return feed

    with tempfile.TemporaryDirectory(dir=fp32_model.parent) as tmp:
        out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ONNX Runtime's quantiser warns on the root logger about every shared bias
        try:
            quantize_static(str(fp32_model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZED_OPS))
        finally:
            root.setLevel(level)
        data = out.read_bytes()
    return data, {"method": "onnxruntime quantize_static, QDQ, min/max calibration", "ops": list(QUANTIZED_OPS),
                  "weights": "int8 per output channel", "activations": "uint8 per tensor",
                  "calibration": str(calibration), "calibration_images": count}

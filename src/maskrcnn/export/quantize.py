"""int8 post-training static quantisation of an exported model: ONNX Runtime's for ``.onnx``,
NNCF's for OpenVINO.

:func:`quantize_int8` (ONNX Runtime) calibrates on the user's images (read and converted by the fp32 model's
:class:`~maskrcnn.export.runtime.OnnxPredictor`, one image per run, as detection sees them) and
writes a QDQ model: the weights of :data:`QUANTIZED_OPS` int8 per output channel, their inputs
uint8 per tensor (min/max calibration). Everything else (box decoding, NMS, RoIAlign sampling,
the input transform, sigmoid/softmax) stays fp32, so the graph's contract is unchanged.

:func:`quantize_openvino_int8` (NNCF's ``nncf.quantize`` on the OpenVINO model converted from the
fp32 ONNX graph) calibrates on the same feeds. NNCF would also put quantisers on the inputs of
element-wise ops, pooling, interpolation and concatenations; the ``ignored_scope`` keeps every op
type of the graph but :data:`OPENVINO_QUANTIZED_OPS` in fp32, so only the dense layers are int8,
as on the ONNX Runtime path: box decoding, NMS, RoIAlign sampling and the input transform (element-wise,
gather, TopK, NonMaxSuppression, ROIAlign ops) stay fp32 and so does the residual additions' and
the FPN's upsampling and sums (which costs speed: OpenVINO re-quantises each convolution's input).
``preset=MIXED``: asymmetric activations (the FPN's and heads' inputs are signed, not only
post-ReLU), symmetric weights per output channel; no ``model_type`` (``TRANSFORMER`` is the only
one and is for attention models). NNCF's fast bias correction is kept (its default).

What int8 costs in accuracy is measured by ``maskrcnn export --int8 --validation DATA``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, MaskRCNNError

__all__ = ["OPENVINO_QUANTIZED_OPS", "QUANTIZED_OPS", "quantize_int8", "quantize_openvino_int8"]

#: ONNX ops whose weights and inputs are quantised (the dense layers: backbone, FPN, heads).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: OpenVINO op types that NNCF quantises (the same dense layers; the mask head's transposed convolution too).
OPENVINO_QUANTIZED_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


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


def _checked_feeds(fp32_model: Path, source: str | os.PathLike[str], max_images: int,
                   on_skip: Callable[[str, MaskRCNNError], None] | None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`_calibration_feeds`, or a :class:`DataError` naming ``source`` when no image can be read."""
    feeds = _calibration_feeds(fp32_model, source, max_images, on_skip)
    first = next(feeds, None)
    if first is None:
        raise DataError(f"--calibration {source}: no readable image; pass a folder with a few hundred "
                        "of your images")
    return itertools.chain([first], feeds)


class _Feeds:
    """:func:`_calibration_feeds` as a collection NNCF can iterate more than once (the images are
    read again rather than held: a few hundred at 800 px are gigabytes); ``count``: the feeds of
    the last pass. Unreadable images go to ``on_skip`` on the first pass only."""

    def __init__(self, fp32_model: Path, source: str | os.PathLike[str], max_images: int,
                 on_skip: Callable[[str, MaskRCNNError], None] | None) -> None:
        self.args = (fp32_model, source, max_images)
        self.on_skip, self.count, self.passes = on_skip, 0, 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.passes += 1
        self.count = 0
        for feed in _calibration_feeds(*self.args, self.on_skip if self.passes == 1 else None):
            self.count += 1
            yield feed


def quantize_int8(fp32_model: str | os.PathLike[str], calibration: str | os.PathLike[str], *, max_images: int = 300,
                  on_skip: Callable[[str, MaskRCNNError], None] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The int8 model (bytes) of the exported ``fp32_model`` (its sidecar next to it) and a
    description of the quantisation (for the sidecar). ``calibration``: a folder of images (or an
    image); a :class:`DataError` naming it when no image can be read."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_model = Path(fp32_model)
    feeds = _checked_feeds(fp32_model, calibration, max_images, on_skip)
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


def quantize_openvino_int8(fp32_model: str | os.PathLike[str], calibration: str | os.PathLike[str], *,
                           max_images: int = 300, on_skip: Callable[[str, MaskRCNNError], None] | None = None
                           ) -> tuple[Any, dict[str, Any]]:
    """The int8 OpenVINO model (``openvino.Model``) of the exported fp32 ONNX ``fp32_model`` (its
    sidecar next to it), quantised by NNCF (see the module doc), and a description of the
    quantisation (for the sidecar). ``calibration``: as :func:`quantize_int8`."""
    import nncf
    import openvino as ov

    fp32_model = Path(fp32_model)
    feeds = _Feeds(fp32_model, calibration, max_images, on_skip)
    next(iter(_checked_feeds(fp32_model, calibration, 1, None)))  # the DataError of a source without images, now
    model = ov.convert_model(str(fp32_model))
    types = sorted({op.get_type_name() for op in model.get_ops()} - set(OPENVINO_QUANTIZED_OPS))
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # NNCF logs each op it leaves unquantised at INFO
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout stays the command's report
            quantized = nncf.quantize(model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset.MIXED,
                                      subset_size=max_images,
                                      ignored_scope=nncf.IgnoredScope(types=types, validate=False))
    finally:
        nncf_logger.setLevel(level)
    return quantized, {"method": f"nncf {nncf.__version__} quantize (post-training, min/max calibration, "
                                 "fast bias correction), preset mixed",
                       "ops": list(OPENVINO_QUANTIZED_OPS), "weights": "int8 per output channel, symmetric",
                       "activations": "int8 per tensor, asymmetric", "calibration": str(calibration),
                       "calibration_images": feeds.count}

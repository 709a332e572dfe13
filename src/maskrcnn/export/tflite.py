"""TFLite export for mobile: the dense parts in the ``.tflite`` file, the glue in our runtime code.

What is in the file, and what is not, and why:

* TFLite (``litert-torch`` 0.10, the converter) has no lowering for ``torchvision::nms`` and
  ``torchvision::roi_align``, and wants static shapes; the detection graph of
  :mod:`maskrcnn.export.graph` has both, and data-dependent sizes (proposals, detections). So the
  file holds the three parts with weights, each a signature with a fixed input shape
  (:func:`part_shapes`), as mobile detectors ship them:

  - ``features``: backbone+FPN and RPN head of one normalised, padded ``[1, C, S, S]`` image
    (``S`` = ``--imgsz``): per level FPN features, objectness logits and deltas
    (outputs ``output_0 .. output_{3L-1}`` in that order, levels P2..P6);
  - ``box_head``: box head and predictor of :data:`BOX_ROWS` pooled RoIs ``[BOX_ROWS, F, P, P]``:
    class logits ``[BOX_ROWS, K]`` and deltas ``[BOX_ROWS, 4K]``;
  - ``mask_head``: mask head and predictor of :data:`MASK_ROWS` pooled detections
    ``[MASK_ROWS, F, M, M]``: every class's mask logits ``[MASK_ROWS, K, 2M, 2M]``.

* The glue is :class:`~maskrcnn.export.graph.ExportGraph`'s own code, the one the ONNX and
  OpenVINO exports trace (:class:`SplitGraph` replaces only its three dense steps): the input
  transform, anchors, box decoding, proposal selection and NMS, multi-level RoIAlign, detection
  scores, NMS and top-k, the label's mask channel and its sigmoid. Rows are run in fixed-size
  chunks (the last one zero-padded, its outputs dropped). A mobile port mirrors these steps
  (they are listed in the sidecar's ``tflite.glue``).

* The geometry is fixed: the export detects in Matterport's ``square`` mode at ``S`` (the long
  side scaled to ``S``, the image centred in an ``S x S`` frame; :func:`fixed_size_config`), which
  the sidecar's config says, so every network input is ``[1, C, S, S]``.

``int8=True`` quantises the file's weights to int8 with ``ai-edge-quantizer``'s dynamic-range
recipe (``dynamic_wi8_afp32``: int8 weights, activations quantised on the fly, no calibration).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config, ConfigError
from ..modeling import MaskRCNN
from .graph import ExportGraph

__all__ = ["BOX_ROWS", "MASK_ROWS", "SIGNATURES", "GLUE", "DenseParts", "SplitGraph", "TorchParts", "TFLiteParts",
           "fixed_size_config", "fixed_size_model", "part_shapes", "convert_tflite", "tflite_meta"]

#: Rows (RoIs) per run of the ``box_head`` and ``mask_head`` signatures.
BOX_ROWS = 64
MASK_ROWS = 16
#: The signatures of the file, in order.
SIGNATURES = ("features", "box_head", "mask_head")
#: The steps our runtime code runs around the signatures (:class:`ExportGraph`'s methods).
GLUE = {
    "preprocess": "ExportGraph.preprocess: normalise, resize (square mode at imgsz), pad to imgsz x imgsz",
    "proposals": "ExportGraph.proposals: anchors, top pre_nms_limit_inference per level, box decoding, clipping, "
                 "min size, NMS per level, top post_nms_rois_inference per image",
    "roi_align": "MultiScaleRoIAlign.pool: level of each RoI, RoIAlign (sampling_ratio, aligned) to pool_size / mask_pool_size",
    "detections": "ExportGraph.detections: softmax, per-class box decoding, clipping, score threshold, per-class NMS, "
                  "top detection_max_instances",
    "mask_probs": "the detected label's channel of mask_head's logits, sigmoid",
    "boxes_to_original": "ExportGraph.forward: minus the frame offset, divided by the scale",
}


def fixed_size_config(config: Config, imgsz: int) -> Config:
    """The config of a fixed-size export: detection in ``square`` mode at ``imgsz`` (every image's
    long side scaled to ``imgsz``, centred in an ``imgsz x imgsz`` frame). A :class:`ConfigError`
    naming ``--imgsz`` unless it is a multiple of ``size_divisibility`` and at least 64."""
    d = config.size_divisibility
    if imgsz < 64 or imgsz % d:
        raise ConfigError(f"--imgsz {imgsz}: must be a multiple of size_divisibility={d} and at least 64 "
                          f"(e.g. {max(64, round(imgsz / d) * d)})")
    # image_resize_mode too: a training mode's own rules (pad64's, crop's) must not refuse imgsz
    return config.replace(image_resize_mode="square", inference_resize_mode=None, image_min_dim=imgsz,
                          image_max_dim=imgsz, image_min_scale=0.0, fast=False)


def fixed_size_model(model: MaskRCNN, imgsz: int) -> MaskRCNN:
    """A new model with :func:`fixed_size_config` and ``model``'s weights: the eager model a TFLite
    export at ``imgsz`` reproduces (its reference in tests and in ``--validation``)."""
    from ..modeling import build_model

    fixed = build_model(fixed_size_config(model.config, imgsz))
    fixed.load_state_dict(model.state_dict())
    return fixed.eval()


def part_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The fixed input shape of each signature of a :func:`fixed_size_config` config."""
    s, f = config.image_max_dim, config.fpn_channels
    return {"features": (1, config.image_channel_count, s, s), "box_head": (BOX_ROWS, f, config.pool_size, config.pool_size),
            "mask_head": (MASK_ROWS, f, config.mask_pool_size, config.mask_pool_size)}


class _Features(nn.Module):
    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.rpn.head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone(x)
        logits, deltas = self.head(feats)
        return (*feats, *logits, *deltas)


class _BoxHead(nn.Module):
    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.head, self.predictor = model.roi_heads.box_head, model.roi_heads.box_predictor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.predictor(self.head(x))


class _MaskHead(nn.Module):
    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.head, self.predictor = model.roi_heads.mask_head, model.roi_heads.mask_predictor

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.head(x))


def dense_modules(model: MaskRCNN) -> dict[str, nn.Module]:
    """The modules of :data:`SIGNATURES` (the model's own, no copy)."""
    return {"features": _Features(model).eval(), "box_head": _BoxHead(model).eval(), "mask_head": _MaskHead(model).eval()}


class DenseParts(Protocol):
    """Runs one signature: ``parts(name, x)`` -> its outputs in order (float32 arrays)."""

    def __call__(self, name: str, x: np.ndarray) -> list[np.ndarray]: ...


class TorchParts:
    """:class:`DenseParts` by the eager modules, with the file's fixed shapes enforced: the glue
    checked without a converter (a wrong shape is a bug of :class:`SplitGraph`, hence ``ValueError``)."""

    def __init__(self, model: MaskRCNN) -> None:
        self.modules = dense_modules(model.eval())
        self.shapes = part_shapes(model.config)

    def __call__(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        if tuple(x.shape) != self.shapes[name]:
            raise ValueError(f"{name}: input {tuple(x.shape)}, the file's signature takes {self.shapes[name]}")
        with torch.no_grad():
            out = self.modules[name](torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


class TFLiteParts:
    """:class:`DenseParts` by ``ai-edge-litert``'s interpreter over a ``.tflite`` file of :func:`convert_tflite`."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        found = self.interpreter.get_signature_list()
        missing = [s for s in SIGNATURES if s not in found]
        if missing:
            from ..errors import WeightsError

            raise WeightsError(f"{path}: no signature {', '.join(missing)} (signatures: {', '.join(found) or 'none'}); "
                               "not a maskrcnn TFLite export, export the model with `maskrcnn export --format tflite`")
        self.runners = {s: self.interpreter.get_signature_runner(s) for s in SIGNATURES}
        self.inputs = {s: next(iter(r.get_input_details())) for s, r in self.runners.items()}

    def __call__(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        out = self.runners[name](**{self.inputs[name]: np.ascontiguousarray(x, dtype=np.float32)})
        return [np.array(out[k]) for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[1]))]


def _chunked(parts: DenseParts, name: str, x: Tensor, rows: int) -> list[Tensor]:
    """``x [R, ...]`` through signature ``name`` in chunks of ``rows`` (the last zero-padded);
    each output ``[R, ...]``. Needs ``R > 0``."""
    outs: list[list[np.ndarray]] = []
    data = x.detach().float().cpu().numpy()
    for start in range(0, data.shape[0], rows):
        block = data[start:start + rows]
        n = block.shape[0]
        if n < rows:
            block = np.concatenate([block, np.zeros((rows - n, *block.shape[1:]), np.float32)])
        outs.append([o[:n] for o in parts(name, block)])
    return [torch.from_numpy(np.concatenate(group)) for group in zip(*outs)]


class SplitGraph(ExportGraph):
    """:class:`ExportGraph` whose dense steps run by ``parts`` (the TFLite file, or :class:`TorchParts`):
    the same inputs and outputs. ``model`` supplies the glue's settings and buffers (anchors,
    normalisation, thresholds, the RoI poolers); its dense weights are not used."""

    def __init__(self, model: MaskRCNN, parts: DenseParts) -> None:
        super().__init__(model)
        self.parts = parts
        self.shapes = part_shapes(model.config)

    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if tuple(x.shape[1:]) != self.shapes["features"][1:]:
            raise ValueError(f"network input {tuple(x.shape)}; the file's features signature takes {self.shapes['features']}")
        per_image = [self.parts("features", x[i:i + 1].detach().float().cpu().numpy()) for i in range(x.shape[0])]
        outs = [torch.from_numpy(np.concatenate(group)) for group in zip(*per_image)]
        levels = len(outs) // 3
        return outs[:levels], outs[levels:2 * levels], outs[2 * levels:]

    def box_outputs(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        if pooled.shape[0] == 0:
            k = self.model.config.num_classes
            return pooled.new_zeros((0, k)), pooled.new_zeros((0, 4 * k))
        logits, deltas = _chunked(self.parts, "box_head", pooled, BOX_ROWS)
        return logits, deltas

    def mask_probs(self, pooled: Tensor, labels: Tensor) -> Tensor:
        side = self.model.config.mask_shape
        if pooled.shape[0] == 0:
            return pooled.new_zeros((0, side, side))
        (logits,) = _chunked(self.parts, "mask_head", pooled, MASK_ROWS)
        return logits[torch.arange(labels.shape[0]), labels].float().sigmoid()


def convert_tflite(model: MaskRCNN, config: Config, *, int8: bool = False) -> bytes:
    """The ``.tflite`` file (bytes) of ``model``'s dense parts (:data:`SIGNATURES`, at the shapes of
    :func:`part_shapes` of ``config``, a :func:`fixed_size_config` of ``model.config``). ``int8``:
    dynamic-range int8 weights (``ai-edge-quantizer``'s ``dynamic_wi8_afp32``)."""
    import litert_torch

    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(0)
    conv: Any = litert_torch
    for name, module in dense_modules(model).items():
        example = torch.rand(part_shapes(config)[name], generator=gen)
        conv = conv.signature(name, module, (example,))
    quiet = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"  # its per-pass progress lines; errors still raise
    try:
        with torch.no_grad():
            data = conv.convert().model_content()
    finally:
        if quiet is None:
            del os.environ["LITERT_TORCH_SHOW_PROGRESS"]
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = quiet
    if int8:
        from ai_edge_quantizer import quantizer, recipe

        with contextlib.redirect_stdout(io.StringIO()):  # its size report; the sidecar says what was done
            data = quantizer.Quantizer(bytes(data), recipe.dynamic_wi8_afp32()).quantize().quantized_model
    return bytes(data)


def tflite_meta(config: Config, int8: bool) -> dict[str, Any]:
    """The sidecar's ``tflite`` entry: the signatures in the file, their shapes, and the glue."""
    shapes = part_shapes(config)
    return {"imgsz": config.image_max_dim, "converter": "litert-torch", "weights": "int8 dynamic-range" if int8 else "fp32",
            "signatures": {name: {"input_shape": list(shapes[name])} for name in SIGNATURES},
            "box_rows": BOX_ROWS, "mask_rows": MASK_ROWS, "glue": GLUE,
            "why": "TFLite has no NMS or RoIAlign lowering from PyTorch (torchvision::nms, torchvision::roi_align) and "
                   "wants static shapes; proposals and detections are data-dependent, so they run outside the file"}


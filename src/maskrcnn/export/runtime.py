"""Run an exported model (``model.onnx`` with ONNX Runtime, ``model.xml`` with OpenVINO, ``model.tflite``
with LiteRT) behind the :class:`~maskrcnn.inference.predictor.Predictor` API.

:class:`ExportedPredictor` is a ``Predictor`` whose one model step (``_detect_raw``) runs the
exported graph: input conversion (paths, PIL, arrays, tensors; channel checks), batching,
streaming, tiling, mask pasting and :class:`~maskrcnn.inference.results.Detections` are the
``Predictor``'s own code, so the eager model and the exported one return the same kind of
results. The backends differ only in how a session is opened and run: :class:`OnnxPredictor`
(ONNX Runtime), :class:`OpenVinoPredictor` (OpenVINO) and :class:`TFLitePredictor` (LiteRT's
interpreter for the dense parts, our glue around them). ``maskrcnn.load(path)`` and
``maskrcnn detect --weights path`` pick one by the file's suffix (:func:`exported_predictor`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MaskRCNNError, WeightsError, first_line
from ..inference.predictor import Predictor, class_names_of
from .graph import INPUT_NAMES, OUTPUT_NAMES, check_exportable
from .onnx import read_sidecar

__all__ = ["ExportedPredictor", "OnnxPredictor", "OpenVinoPredictor", "TFLitePredictor", "RUNTIME_FIELDS", "EXPORT_SUFFIXES",
           "exported_predictor", "graph_inputs", "is_exported_path"]

#: Config fields that only the runtime reads (mask pasting and scoring), so they may differ from the export's.
RUNTIME_FIELDS = ("mask_threshold", "mask_scoring")


def graph_inputs(images: list[Tensor]) -> dict[str, np.ndarray]:
    """The exported graph's inputs for float ``[C, H, W]`` images in [0, 1]: ``images`` float32
    ``[B, C, H, W]`` (each at the top-left, zero-padded to the largest) and ``sizes`` int64 ``[B, 2]``."""
    h = max(int(t.shape[1]) for t in images)
    w = max(int(t.shape[2]) for t in images)
    batch = np.zeros((len(images), int(images[0].shape[0]), h, w), dtype=np.float32)
    for b, t in zip(batch, images):
        b[:, : t.shape[1], : t.shape[2]] = t.float().cpu().numpy()
    sizes = np.array([[t.shape[1], t.shape[2]] for t in images], dtype=np.int64)
    return {"images": batch, "sizes": sizes}


class ExportedPredictor(Predictor):
    """A :class:`Predictor` over an exported model and its sidecar (see the module doc).

    Args:
        path: the model file; its sidecar (``.json``) must sit next to it.
        device: ``"cpu"`` or ``"cuda"`` (where the backend can use it, else the CPU with a warning).
        threads: the backend's intra-op threads (default: ``torch.get_num_threads()``).
        overrides: runtime-only config fields (:data:`RUNTIME_FIELDS`), e.g. ``mask_threshold=0.4``.
    """

    backend = ""

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", *, threads: int | None = None,
                 **overrides: Any) -> None:
        from ..engine.runtime import resolve_device
        from ..modeling.transform import InputTransform

        self.path = Path(path)
        self.device = resolve_device(device)
        config, meta = read_sidecar(self.path)
        check_exportable(config)
        self.config = config.replace(**overrides) if overrides else config
        self.transform = InputTransform(self.config)  # geometry checks of to_array (the graph resizes inside)
        self.class_names = [str(n) for n in meta.get("class_names") or class_names_of(config)]
        self.meta = meta
        self._warned: set[str] = set()
        self.model = None
        try:
            names_in, names_out = self._open(threads or torch.get_num_threads())
        except MaskRCNNError:
            raise
        except Exception as exc:  # each backend raises its own types for a file it cannot read
            raise WeightsError(f"{self.path}: {self.backend} cannot load it ({first_line(exc, limit=200)}); "
                               "export the model again") from None
        if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES:
            raise WeightsError(f"{self.path}: inputs {names_in} / outputs {names_out} are not a maskrcnn export's "
                               f"({INPUT_NAMES} / {OUTPUT_NAMES}); export the model with `maskrcnn export`")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _open(self, threads: int) -> tuple[list[str], list[str]]:
        """Open the session; returns its input and output names."""
        raise NotImplementedError

    def _run_graph(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run: the outputs in :data:`OUTPUT_NAMES` order."""
        raise NotImplementedError

    def _warn_cpu(self, how: str) -> None:
        warnings.warn(f"{self.path.name}: {self.backend} cannot use {self.device} here ({how}); running on the CPU",
                      stacklevel=3)

    def _detect_raw(self, images: list[Tensor], score_threshold: float | None) -> list[dict[str, Tensor]]:
        """Images padded into one batch with their sizes (the graph's input contract), one run,
        outputs split by ``batch_index`` (and filtered by ``score_threshold``, as the eager model does
        after its NMS)."""
        boxes, scores, labels, probs, index = self._run_graph(graph_inputs(images))
        out = []
        for k in range(len(images)):
            sel = index == k
            if score_threshold is not None:
                sel &= scores >= score_threshold
            out.append({"boxes": torch.from_numpy(boxes[sel]), "scores": torch.from_numpy(scores[sel]),
                        "labels": torch.from_numpy(labels[sel].astype(np.int64)),
                        "mask_probs": torch.from_numpy(probs[sel])})
        return out


class OnnxPredictor(ExportedPredictor):
    """An exported ``.onnx`` run with ONNX Runtime (CUDA provider with ``device="cuda"`` when installed)."""

    backend = "ONNX Runtime"

    def _open(self, threads: int) -> tuple[list[str], list[str]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                self._warn_cpu("no CUDA provider; pip install onnxruntime-gpu")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        return [i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()]

    def _run_graph(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(OUTPUT_NAMES, feed)


class OpenVinoPredictor(ExportedPredictor):
    """An exported OpenVINO model (``.xml`` + ``.bin``) run on OpenVINO's CPU plugin in fp32
    (``INFERENCE_PRECISION_HINT=f32``: the CPU plugin would otherwise pick bf16 where the CPU has it)."""

    backend = "OpenVINO"

    def _open(self, threads: int) -> tuple[list[str], list[str]]:
        import openvino as ov

        if self.device.type != "cpu":
            self._warn_cpu("this export runs on OpenVINO's CPU plugin")
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU",
                                           {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        return [i.get_any_name() for i in self.compiled.inputs], [o.get_any_name() for o in self.compiled.outputs]

    def _run_graph(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.asarray(result[o]) for o in self.compiled.outputs]


class TFLitePredictor(ExportedPredictor):
    """An exported ``.tflite`` (the dense parts, :mod:`maskrcnn.export.tflite`) run with
    ``ai-edge-litert``'s interpreter (CPU, XNNPACK), the glue by
    :class:`~maskrcnn.export.tflite.SplitGraph` on a model built from the sidecar's config (its
    anchors, thresholds and RoI poolers; its random dense weights are dropped)."""

    backend = "LiteRT"

    def _open(self, threads: int) -> tuple[list[str], list[str]]:
        from torch import nn

        from ..modeling import build_model
        from .tflite import SplitGraph, TFLiteParts

        if self.device.type != "cpu":
            self._warn_cpu("this export runs on LiteRT's CPU interpreter")
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            raise MaskRCNNError(f"{self.path}: running a .tflite needs ai-edge-litert; "
                                "pip install 'maskrcnn[tflite]' (or ai-edge-litert)") from None
        parts = TFLiteParts(self.path, threads)
        with torch.no_grad():
            glue = build_model(self.config).eval()
        glue.backbone = nn.Identity()  # the file holds the dense parts
        glue.rpn.head = glue.roi_heads.box_head = glue.roi_heads.mask_head = nn.Identity()
        self.graph = SplitGraph(glue, parts)
        return list(INPUT_NAMES), list(OUTPUT_NAMES)

    def _run_graph(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.graph(torch.from_numpy(feed["images"]), torch.from_numpy(feed["sizes"]))
        return [t.numpy() for t in out]


#: Suffix of an exported model file -> its predictor.
EXPORT_SUFFIXES: dict[str, type[ExportedPredictor]] = {".onnx": OnnxPredictor, ".xml": OpenVinoPredictor,
                                                       ".tflite": TFLitePredictor}


def is_exported_path(spec: Any) -> bool:
    """Whether a weights spec names an exported model (by its suffix: ``.onnx``, ``.xml``, ``.tflite``)."""
    return isinstance(spec, (str, os.PathLike)) and Path(spec).suffix.lower() in EXPORT_SUFFIXES


def exported_predictor(path: str | os.PathLike[str], device: str | torch.device = "cpu", **kw: Any) -> ExportedPredictor:
    """The predictor of an exported model file, chosen by its suffix."""
    return EXPORT_SUFFIXES[Path(path).suffix.lower()](path, device, **kw)

"""Run an exported ``model.onnx`` with ONNX Runtime behind the :class:`~maskrcnn.inference.predictor.Predictor` API.

:class:`OnnxPredictor` is a ``Predictor`` whose one model step (``_detect_raw``) is an ONNX Runtime
session: input conversion (paths, PIL, arrays, tensors; channel checks), batching, streaming,
tiling, mask pasting and :class:`~maskrcnn.inference.results.Detections` are the ``Predictor``'s
own code, so the eager model and the exported one return the same kind of results.
``maskrcnn.load("model.onnx")`` and ``maskrcnn detect --weights model.onnx`` build one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import WeightsError
from ..inference.predictor import Predictor, class_names_of
from .graph import INPUT_NAMES, OUTPUT_NAMES, check_exportable
from .onnx import read_sidecar

__all__ = ["OnnxPredictor", "RUNTIME_FIELDS", "graph_inputs", "is_onnx_path"]

#: Config fields that only the runtime reads (mask pasting), so they may differ from the export's.
RUNTIME_FIELDS = ("mask_threshold",)


def is_onnx_path(spec: Any) -> bool:
    """Whether a weights spec names an exported ONNX file (by its ``.onnx`` suffix)."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).lower().endswith(".onnx")


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


class OnnxPredictor(Predictor):
    """A :class:`Predictor` over an exported ``.onnx`` file and its sidecar (see the module doc).

    Args:
        path: the ``.onnx`` file; its sidecar (``.json``) must sit next to it.
        device: ``"cpu"`` or ``"cuda"`` (ONNX Runtime's CUDA provider when installed, else CPU).
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
        overrides: runtime-only config fields (:data:`RUNTIME_FIELDS`), e.g. ``mask_threshold=0.4``.
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", *, threads: int | None = None,
                 **overrides: Any) -> None:
        import onnxruntime as ort

        from ..engine.runtime import resolve_device
        from ..modeling.transform import InputTransform

        self.path = Path(path)
        self.device = resolve_device(device)
        config, meta = read_sidecar(self.path)
        check_exportable(config)
        self.config = config.replace(**overrides) if overrides else config
        self.transform = InputTransform(self.config)  # geometry checks of to_array (the graph resizes inside)
        self.class_names = [str(n) for n in meta.get("class_names") or class_names_of(config)]
        self._warned: set[str] = set()
        self.model = None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                warnings.warn(f"{self.path.name}: this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu); "
                              "running on the CPU", stacklevel=2)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own (InvalidProtobuf, Fail, ...) types
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
            raise WeightsError(f"{self.path}: ONNX Runtime cannot load it ({first}); export the model again") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES:
            raise WeightsError(f"{self.path}: inputs {names_in} / outputs {names_out} are not a maskrcnn export's "
                               f"({INPUT_NAMES} / {OUTPUT_NAMES}); export the model with `maskrcnn export`")

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, providers={self.session.get_providers()})"

    def _detect_raw(self, images: list[Tensor], score_threshold: float | None) -> list[dict[str, Tensor]]:
        """Images padded into one batch with their sizes (the graph's input contract), one session run,
        outputs split by ``batch_index`` (and filtered by ``score_threshold``, as the eager model does
        after its NMS)."""
        boxes, scores, labels, probs, index = self.session.run(OUTPUT_NAMES, graph_inputs(images))
        out = []
        for k in range(len(images)):
            sel = index == k
            if score_threshold is not None:
                sel &= scores >= score_threshold
            out.append({"boxes": torch.from_numpy(boxes[sel]), "scores": torch.from_numpy(scores[sel]),
                        "labels": torch.from_numpy(labels[sel]), "mask_probs": torch.from_numpy(probs[sel])})
        return out

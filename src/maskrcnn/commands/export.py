"""``maskrcnn export --weights W --format onnx --out PATH``: a deployable model plus its sidecar.

``--out`` is the ``.onnx`` file to write, or a folder (then ``model.onnx`` in it); the sidecar
(class names, config, input/output contract) is written next to it with the suffix ``.json``.
The graph and its contract: :mod:`maskrcnn.export.graph` and :mod:`maskrcnn.export.onnx`; run the
result with ``maskrcnn detect --weights model.onnx`` or ``maskrcnn.load("model.onnx")``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MaskRCNNError, WeightsError
from ..utils.files import ensure_output_file

#: Formats ``--format`` accepts, and the ones this version can write.
FORMATS = ("onnx", "openvino", "tflite")
AVAILABLE = ("onnx",)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a model to ONNX (model + sidecar with classes, config, input contract)",
                       description="Export a checkpoint to a deployable model: dynamic batch and image size, "
                       "normalisation and resizing inside, outputs boxes, scores, labels and per-detection mask "
                       "probabilities. Writes PATH (.onnx) and PATH with suffix .json (the sidecar).")
    p.add_argument("--weights", required=True, help="coco, coco-v2, a checkpoint (.safetensors or folder) or a torchvision .pth")
    p.add_argument("--format", default="onnx", help=f"onnx (default); {', '.join(f for f in FORMATS if f not in AVAILABLE)}: "
                   "not available yet")
    p.add_argument("--out", required=True, help="the .onnx file to write, or a folder (model.onnx in it)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's)")
    p.add_argument("--int8", action="store_true", help="post-training int8 quantisation (needs --calibration; not available yet)")
    p.add_argument("--calibration", help="images for int8 calibration (a folder)")
    return p


def output_path(out: str) -> Path:
    """``--out`` as the ``.onnx`` file to write: a path ending in ``.onnx`` as is, else ``out/model.onnx``."""
    path = Path(out)
    return path if path.suffix.lower() == ".onnx" else path / "model.onnx"


def run(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx
    from ..export.runtime import is_onnx_path
    from ..inference.predictor import load

    fmt = args.format.strip().lower()
    if fmt not in FORMATS:
        raise MaskRCNNError(f"--format {args.format}: unknown format; use onnx")
    if fmt not in AVAILABLE:
        raise MaskRCNNError(f"--format {fmt}: not available in this version yet; use --format onnx "
                            "(ONNX Runtime runs it: maskrcnn detect --weights model.onnx)")
    if args.int8 and not args.calibration:
        raise MaskRCNNError("--int8 needs --calibration DATA (a folder of a few hundred of your images); "
                            "pass it, or drop --int8 for an fp32 export")
    if args.int8:
        raise MaskRCNNError("--int8: int8 quantisation is not available in this version yet; drop --int8 for an fp32 export")
    if args.calibration:
        raise MaskRCNNError("--calibration is only used with --int8; drop it")
    if is_onnx_path(args.weights):
        raise WeightsError(f"{args.weights}: already an exported model; pass the checkpoint it came from to --weights")
    out = ensure_output_file(output_path(args.out))
    # exact mode (fast=False): the export is compared with, and documented as, the exact model
    predictor = load(args.weights, config=args.config, device="cpu", fast=False, progress=False)
    model_path, side = export_onnx(predictor.model, out)
    print(f"exported {model_path} ({model_path.stat().st_size / 2**20:.1f} MiB) and {side.name}; "
          f"run it with: maskrcnn detect --weights {model_path} IMAGES --out DIR")
    return 0

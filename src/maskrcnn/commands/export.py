"""``maskrcnn export --weights W [--format onnx|openvino|tflite] --out PATH [--int8 --calibration DIR [--validation DATA]]``.

``--out`` is the model file to write (``.onnx``; ``.xml`` for OpenVINO, with its ``.bin``;
``.tflite``), or a folder (then ``model.onnx`` / ``model.xml`` / ``model.tflite`` in it); the sidecar
(class names, config, input/output contract) is written next to it with the suffix ``.json``.
The graph and its contract: :mod:`maskrcnn.export.graph` and :mod:`maskrcnn.export.onnx`; run the
result with ``maskrcnn detect --weights model.onnx`` (or ``model.xml``, ``model.tflite``) or ``maskrcnn.load(...)``.
``--int8`` writes the int8 model instead (:mod:`maskrcnn.export.quantize`, calibrated on
``--calibration``: ONNX Runtime's static quantisation for ONNX, NNCF's for OpenVINO);
``--validation`` then measures what it costs (:func:`int8_cost`: mask AP, mask AP50 and box AP of
the exact model and of the int8 export, printed and stored in the sidecar's ``int8.validation``).
``--format tflite`` writes the dense parts at a fixed ``--imgsz`` and runs the rest in our runtime
(:mod:`maskrcnn.export.tflite`); its ``--int8`` is dynamic-range (int8 weights, no calibration),
and ``--validation`` compares it with the exact model at the same fixed size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, MaskRCNNError, WeightsError
from ..utils.files import ensure_output_file
from .args import positive_int

if TYPE_CHECKING:
    from ..inference.predictor import Predictor

#: Formats ``--format`` accepts, and the ones this version can write.
FORMATS = ("onnx", "openvino", "tflite")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a model to ONNX, OpenVINO or TFLite (model + sidecar with classes, config, "
                       "input contract)",
                       description="Export a checkpoint to a deployable model: dynamic batch and image size, "
                       "normalisation and resizing inside, outputs boxes, scores, labels and per-detection mask "
                       "probabilities. Writes PATH (.onnx, .xml + .bin for openvino, .tflite) and PATH with suffix .json (the sidecar). "
                       "TFLite holds the dense parts at a fixed --imgsz; NMS, RoIAlign and the rest run in maskrcnn's runtime.")
    p.add_argument("--weights", required=True, help="coco, coco-v2, a checkpoint (.safetensors or folder) or a torchvision .pth")
    p.add_argument("--format", default="onnx", help="onnx (default; ONNX Runtime), openvino (model.xml + .bin) or "
                   "tflite (LiteRT, for mobile: backbone, RPN, box and mask heads at a fixed --imgsz)")
    p.add_argument("--out", required=True, help="the model file to write (.onnx, .xml for openvino, .tflite), or a folder "
                   "(model.onnx / model.xml / model.tflite in it)")
    p.add_argument("--imgsz", type=positive_int, metavar="S",
                   help="tflite only: the fixed input side; every image is scaled to fit an S x S square "
                   "(a multiple of 32, default 512)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's)")
    p.add_argument("--int8", action="store_true", help="int8 post-training quantisation: static, calibrated on "
                   "--calibration, with ONNX Runtime for onnx and NNCF for openvino; dynamic-range int8 weights for "
                   "tflite (no calibration)")
    p.add_argument("--calibration", help="with --int8: a folder of your images to calibrate on (a few hundred)")
    p.add_argument("--calibration-images", type=positive_int, default=300, metavar="N",
                   help="with --int8: calibrate on at most N images (default 300)")
    p.add_argument("--validation", help="with --int8: a dataset (COCO JSON, VIA, LabelMe, mask folder or YOLO) to "
                   "measure what int8 costs: mask AP, mask AP50 and box AP of the exact model and of the int8 export")
    p.add_argument("--validation-format", help="dataset format of --validation when detection is ambiguous")
    return p


def output_path(out: str, fmt: str = "onnx") -> Path:
    """``--out`` as the model file to write: a path with the format's suffix (``.onnx``, ``.xml``) as
    is, else ``out/model.<suffix>``."""
    from ..export.onnx import FORMATS as SUFFIXES

    path = Path(out)
    return path if path.suffix.lower() == SUFFIXES[fmt] else path / f"model{SUFFIXES[fmt]}"


def run(args: argparse.Namespace) -> int:
    from ..export.onnx import export_model
    from ..export.runtime import is_exported_path
    from ..inference.predictor import load

    from ..export.onnx import TFLITE_IMGSZ

    fmt = args.format.strip().lower()
    if fmt not in FORMATS:
        raise MaskRCNNError(f"--format {args.format}: unknown format; use onnx, openvino or tflite")
    if fmt != "tflite" and args.imgsz is not None:
        raise MaskRCNNError(f"--imgsz is only used with --format tflite (the {fmt} export takes any size); drop --imgsz")
    if fmt == "tflite":
        _check_tflite(args)
    elif args.int8 and not args.calibration:
        raise MaskRCNNError("--int8 needs --calibration DATA (a folder of a few hundred of your images); "
                            "pass it, or drop --int8 for an fp32 export")
    if not args.int8 and (args.calibration or args.validation):
        flag = "--calibration" if args.calibration else "--validation"
        raise MaskRCNNError(f"{flag} is only used with --int8; add --int8 or drop {flag}")
    if args.calibration and not Path(args.calibration).exists():
        raise DataError(f"--calibration {args.calibration}: no such folder; pass a folder of your images")
    if is_exported_path(args.weights):
        raise WeightsError(f"{args.weights}: already an exported model; pass the checkpoint it came from to --weights")
    out = ensure_output_file(output_path(args.out, fmt))
    # exact mode (fast=False): the export is compared with, and documented as, the exact model
    predictor = load(args.weights, config=args.config, device="cpu", fast=False, progress=False)
    imgsz = args.imgsz or TFLITE_IMGSZ
    if fmt == "tflite":
        from ..export.tflite import fixed_size_config

        fixed_size_config(predictor.config, imgsz)  # a bad --imgsz fails before anything is converted
        _check_tflite_converter()
    dataset = None
    if args.validation:  # read before the export: a bad dataset fails in seconds, not after calibration
        from ..data.formats import load_dataset

        dataset = load_dataset(args.validation, format=args.validation_format)

    def skip(name: str, exc: MaskRCNNError) -> None:
        print(f"skipped {name}: {exc}" if name not in str(exc) else f"skipped: {exc}", file=sys.stderr)

    model_path, side = export_model(predictor.model, out, fmt=fmt,
                                    calibration=args.calibration if args.int8 and fmt != "tflite" else None,
                                    calibration_images=args.calibration_images, on_skip=skip,
                                    int8=args.int8 and fmt == "tflite", imgsz=imgsz)
    kind = "int8" if args.int8 else "fp32"
    size = sum((model_path.parent / f).stat().st_size for f in json.loads(side.read_text())["files"]) / 2**20
    print(f"exported {kind} {fmt} {model_path} ({size:.1f} MiB) and {side.name}; "
          f"run it with: maskrcnn detect --weights {model_path} IMAGES --out DIR")
    if dataset is not None:
        if fmt == "tflite":  # the reference detects at the export's fixed size too
            from ..export.tflite import fixed_size_model
            from ..inference.predictor import Predictor

            predictor = Predictor(fixed_size_model(predictor.model, imgsz))
        cost = int8_cost(predictor, model_path, dataset, args.validation)
        points = "n/a" if cost["mask_AP_cost"] is None else f"{cost['mask_AP_cost']:.2f}"
        print(f"int8 on {args.validation}: mask AP {_ap(cost['int8_mask_AP'])} (exact {_ap(cost['exact_mask_AP'])}, "
              f"cost {points} points), mask AP50 {_ap(cost['int8_mask_AP50'])} (exact {_ap(cost['exact_mask_AP50'])}), "
              f"box AP {_ap(cost['int8_box_AP'])} (exact {_ap(cost['exact_box_AP'])}); recorded in {side.name}")
    return 0


def _check_tflite(args: argparse.Namespace) -> None:
    """The TFLite export's option rule: its int8 needs no calibration."""
    if args.calibration:
        raise MaskRCNNError("--calibration: the tflite int8 export is dynamic-range (int8 weights, no calibration); "
                            "drop --calibration")


def _check_tflite_converter() -> None:
    """The converter and the interpreter must be installed (a one-line error with the fix)."""
    import importlib.util

    for module, package in (("litert_torch", "litert-torch"), ("ai_edge_litert", "ai-edge-litert")):
        if importlib.util.find_spec(module) is None:
            raise MaskRCNNError(f"--format tflite needs {package}; pip install 'maskrcnn[tflite]' (or {package})")


#: What ``--validation`` records of each model: (field, COCO iou type, COCO key).
COST_METRICS = (("mask_AP", "segm", "AP"), ("mask_AP50", "segm", "AP50"), ("box_AP", "bbox", "AP"))


def int8_cost(exact: "Predictor", int8_model: Path, dataset: Any, name: str) -> dict[str, Any]:
    """Mask AP, mask AP50 and box AP (0-1) of the exact model (fp32, eager) and of the int8 export
    on ``dataset`` (:func:`maskrcnn.evaluation.evaluate_model`), and what int8 costs
    (``<metric>_cost``: exact minus int8, in AP points, 0-100); also stored in the export's sidecar
    under ``int8.validation``."""
    from ..evaluation import evaluate_model
    from ..export.onnx import read_sidecar, update_sidecar
    from ..export.runtime import exported_predictor

    reports = {key: evaluate_model(p, dataset, model_name=key, data_name=name)
               for key, p in (("exact", exact), ("int8", exported_predictor(int8_model)))}
    ap = {f"{key}_{field}": (r.get("coco") or {}).get(iou, {}).get(stat)
          for key, r in reports.items() for field, iou, stat in COST_METRICS}
    cost = {"data": name, "images": len(dataset.image_ids), **ap}
    for field, _, _ in COST_METRICS:
        a, b = ap[f"exact_{field}"], ap[f"int8_{field}"]
        cost[f"{field}_cost"] = None if None in (a, b) else 100 * (a - b)
    _, meta = read_sidecar(int8_model)
    update_sidecar(int8_model, "int8", {**meta.get("int8", {}), "validation": cost})
    return cost


def _ap(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"

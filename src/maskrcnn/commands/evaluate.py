"""``maskrcnn evaluate --weights W --data D [--config C]``: COCO AP, VOC AP, DSB score, plots.

The model's classes are paired with the dataset's categories by id, else by name
(:mod:`maskrcnn.evaluation.classes`). Unreadable images are skipped: each is listed on stderr
(the first :data:`SHOW_SKIPPED`; all of them in ``report.json``) and counted in the summary.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from .args import add_tta_argument, tta_overrides

#: Skipped images listed on stderr; the rest are only in report.json.
SHOW_SKIPPED = 20


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate a model on a dataset (COCO box/mask AP, VOC mAP, DSB score, plots)")
    p.add_argument("--weights", required=True, help="a checkpoint (.safetensors or folder), coco, coco-v2, a torchvision .pth, a Matterport .h5 or an exported .onnx")
    p.add_argument("--data", required=True, help="dataset: COCO JSON, VIA, LabelMe, mask folder or YOLO (format detected)")
    p.add_argument("--format", help="dataset format when detection is ambiguous")
    p.add_argument("--config", help="config YAML (default: the checkpoint's; with a Matterport .h5 also a YAML of its UPPER_CASE attributes)")
    p.add_argument("--out", default="eval_out", help="folder for report.json and the plots (default eval_out)")
    p.add_argument("--score", type=float, default=0.5, help="score threshold of the DSB score and confusion matrix")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device")
    add_tta_argument(p)
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--max-dets", type=int, default=100, metavar="N",
                   help="COCO detections scored per image and class (default 100, COCO's); raise it for images "
                        "with more objects, which the output names (the model keeps detection_max_instances)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    from ..config import ConfigError

    if not (math.isfinite(args.score) and 0.0 <= args.score <= 1.0):
        raise ConfigError(f"--score {args.score}: must be a number from 0 to 1 (e.g. --score 0.5)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.max_dets < 10:
        raise ConfigError(f"--max-dets {args.max_dets}: must be at least 10 (COCO also reports recall at 1 and 10); "
                          "the default is COCO's 100")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images {args.max_images}: must be at least 1 (leave it out to evaluate every image)")


def print_skipped(skipped: list[dict[str, str]], report_path: Path | None) -> None:
    """List skipped images on stderr: each file and reason, the first :data:`SHOW_SKIPPED` only."""
    for entry in skipped[:SHOW_SKIPPED]:
        where = "" if entry["image"] in entry["error"] else f" {entry['image']}"
        print(f"skipped{where}: {entry['error']}", file=sys.stderr)
    if len(skipped) > SHOW_SKIPPED:
        where = f"in {report_path}" if report_path is not None else "not listed"
        print(f"... and {len(skipped) - SHOW_SKIPPED} more skipped images ({where})", file=sys.stderr)


def _summary(report: dict[str, Any], dataset: Any, report_path: Path) -> list[str]:
    skipped = report.get("skipped_images") or []
    n = report["num_images"]
    line = f"images: {n - len(skipped)} of {n} evaluated"
    if skipped:
        line += f", {len(skipped)} skipped (unreadable; listed on stderr and in {report_path})"
    lines = [line]
    problems = getattr(dataset, "problems", None) or []
    if problems:
        lines.append(f"dataset: {len(problems)} problems while loading (images or instances left out); "
                     "`maskrcnn check-data` lists them")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..data.formats import load_dataset
    from ..evaluation import evaluate_model, format_table, write_report
    from ..evaluation.classes import describe_match
    from ..evaluation.run import NothingEvaluated
    from ..inference.predictor import load
    from ..utils.files import ensure_output_dir

    _check_args(args)
    ensure_output_dir(args.out)
    dataset = load_dataset(args.data, format=args.format)
    predictor = load(args.weights, config=args.config, device=args.device, **tta_overrides(args))
    out = Path(args.out)
    try:
        report = evaluate_model(predictor, dataset, batch_size=args.batch_size, score_threshold=args.score,
                                max_images=args.max_images, progress=True, model_name=args.weights, data_name=args.data,
                                max_dets=args.max_dets)
    except NothingEvaluated as exc:
        print_skipped(exc.skipped, None)
        raise
    files = write_report(report, out)
    print_skipped(report["skipped_images"], out / "report.json")
    print(format_table(report))
    if "class_match" in report:
        print(describe_match(report["class_match"]))
    for line in _summary(report, dataset, out / "report.json"):
        print(line)
    print(f"report: {out / 'report.json'} (+{len(files) - 1} files)")
    return 0

"""``maskrcnn check-data DATASET [--config C] [--format F] [--json]``: lint a dataset before training.

Prints a summary (classes, image sizes, resize behaviour) and every finding, errors first; with
``--json`` the whole report as JSON on stdout. Exit status 1 when there are errors, else 0
(2 for a dataset or config that cannot be loaded at all).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import non_negative_int, positive_float, positive_int, probability

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``check-data``."""
    p = subparsers.add_parser(
        "check-data",
        help="lint a dataset before training (unreadable images, bad masks, classes, sizes, anchors)",
        description="Check a dataset against a config before training. Exit status 1 when there are errors.",
    )
    p.add_argument("dataset", help="annotation file or dataset folder (COCO/VIA JSON, LabelMe, mask folders, YOLO, TFRecords)")
    p.add_argument("--config", "-c", help="YAML config to check against (default: the defaults with the dataset's classes)")
    p.add_argument("--format", "-f", default=None,
                   help="coco, via, labelme, instance-masks, label-images, yolo or tfrecord (default: detected from the path)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-per-kind", type=positive_int, default=10, metavar="N",
                   help="findings listed per kind in the text report (default 10)")
    p.add_argument("--tiny-area", type=non_negative_int, default=16, metavar="PX",
                   help="masks with fewer pixels are reported as tiny (default 16)")
    p.add_argument("--duplicate-iou", type=probability, default=0.9, metavar="IOU",
                   help="instances of one image overlapping at this mask IoU are reported (default 0.9)")
    p.add_argument("--imbalance-ratio", type=positive_float, default=10.0, metavar="R",
                   help="most/least frequent class ratio reported as imbalance (default 10)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    return p


def run(args: argparse.Namespace) -> int:
    """Load the dataset (and config), check it, print the report; 1 when it has errors."""
    from ..config import Config
    from ..data.check import CheckOptions, check_dataset
    from ..data.formats import load_dataset

    config = Config.from_yaml(args.config) if args.config else None
    dataset = load_dataset(args.dataset, format=args.format)
    options = CheckOptions(tiny_area=args.tiny_area, duplicate_iou=args.duplicate_iou,
                           imbalance_ratio=args.imbalance_ratio)
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.json)
    report = check_dataset(dataset, config, progress=progress, options=options,
                           config_label=Path(args.config).name if args.config else None)
    print(report.to_json() if args.json else report.format_text(max_per_kind=args.max_per_kind))
    return report.exit_code

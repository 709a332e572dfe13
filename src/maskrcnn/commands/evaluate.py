"""``maskrcnn evaluate --weights W --data D [--config C]``: COCO AP, VOC AP, DSB score, plots."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate a model on a dataset (COCO box/mask AP, VOC mAP, DSB score, plots)")
    p.add_argument("--weights", required=True, help="a checkpoint (.safetensors or folder), coco, coco-v2 or a torchvision .pth")
    p.add_argument("--data", required=True, help="dataset: COCO JSON, VIA, LabelMe, mask folder or YOLO (format detected)")
    p.add_argument("--format", help="dataset format when detection is ambiguous")
    p.add_argument("--config", help="config YAML (default: the checkpoint's)")
    p.add_argument("--out", default="eval_out", help="folder for report.json and the plots (default eval_out)")
    p.add_argument("--score", type=float, default=0.5, help="score threshold of the DSB score and confusion matrix")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    return p


def run(args: argparse.Namespace) -> int:
    from ..data.formats import load_dataset
    from ..evaluation import evaluate_model, format_table, write_report
    from ..inference.predictor import load

    dataset = load_dataset(args.data, format=args.format)
    predictor = load(args.weights, config=args.config, device=args.device)
    report = evaluate_model(predictor, dataset, batch_size=args.batch_size, score_threshold=args.score,
                            max_images=args.max_images, progress=True)
    files = write_report(report, Path(args.out))
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'} (+{len(files) - 1} files)")
    return 0

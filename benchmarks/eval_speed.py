"""Time COCO evaluation of stored predictions with pycocotools and faster-coco-eval.

Generates a synthetic set (default 5,000 small images, a few instances each, RLE masks), runs
``maskrcnn.evaluation.evaluate_coco`` once per backend and IoU type, checks that both backends
give the same numbers, and prints a table and a JSON line::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_speed.py [--images 5000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np

from maskrcnn.evaluation import Evaluator
from maskrcnn.evaluation.coco import SUMMARY_KEYS, available_backends, evaluate_coco
from maskrcnn.data.synthetic import synthetic_coco


def _time(fn: Any, repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 80), metavar=("H", "W"))
    parser.add_argument("--max-instances", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs")
    parser.add_argument("--no-evaluator", action="store_true", help="skip timing the full Evaluator report")
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt, results = synthetic_coco(args.images, args.classes, tuple(args.size), args.max_instances, seed=0)
    gen_s = time.perf_counter() - t0

    backends = available_backends()
    timings: dict[str, dict[str, float]] = {}
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    for backend in backends:
        timings[backend] = {}
        metrics[backend] = {}
        for iou_type in ("bbox", "segm"):
            seconds, out = _time(lambda b=backend, t=iou_type: evaluate_coco(gt, results, (t,), backend=b), args.repeat)
            timings[backend][iou_type] = seconds
            metrics[backend][iou_type] = out[iou_type]

    evaluator_s = None
    if not args.no_evaluator:

        def full_report() -> dict[str, Any]:
            ev = Evaluator(gt)
            ev.add_results(results)
            return ev.evaluate()

        evaluator_s, _ = _time(full_report, args.repeat)

    max_diff = 0.0
    if len(backends) == 2:
        a, b = (metrics[n] for n in backends)
        for t in ("bbox", "segm"):
            diffs = [abs(a[t][k] - b[t][k]) for k in SUMMARY_KEYS]
            diffs.append(float(np.abs(a[t]["precision"] - b[t]["precision"]).max()))
            max_diff = max(max_diff, *diffs)

    print(
        f"{args.images} images {args.size[0]}x{args.size[1]}, {len(gt['annotations'])} GT instances, "
        f"{len(results)} predictions (generated in {gen_s:.1f} s)"
    )
    print(f"{'backend':<18}{'bbox s':>9}{'segm s':>9}{'bbox AP':>10}{'segm AP':>10}")
    for backend in backends:
        tm, mt = timings[backend], metrics[backend]
        print(f"{backend:<18}{tm['bbox']:>9.2f}{tm['segm']:>9.2f}{mt['bbox']['AP']:>10.6f}{mt['segm']['AP']:>10.6f}")
    if evaluator_s is not None:
        print(f"Evaluator (auto backend, COCO bbox+segm, VOC, DSB, confusion matrix): {evaluator_s:.2f} s")
    if len(backends) == 2:
        print(f"max |difference| over the 12 stats and the precision arrays: {max_diff:.3g}")
    print(
        json.dumps(
            {
                "images": args.images,
                "gt_instances": len(gt["annotations"]),
                "predictions": len(results),
                "seconds": timings,
                "evaluator_seconds": evaluator_s,
                "AP": {b: {t: metrics[b][t]["AP"] for t in metrics[b]} for b in backends},
                "max_abs_diff": max_diff,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()

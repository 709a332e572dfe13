"""Resident memory of streaming detection over many images: does it stay flat?

Streams ``--images`` (default 10,000) small images of varying sizes through
``maskrcnn.inference.streaming.detect_to_jsonl`` (detect, RLE-encode, append COCO results to a JSON
lines file) with a small random-weight model, and records the resident set size every ``--every``
images, twice:

* ``rss``: as the kernel reports it (psutil), allocator caches included;
* ``live``: after ``malloc_trim(0)`` (glibc returns its free pages), i.e. the memory held by live
  data; without the trim, freed blocks of varying-size images make it swing by megabytes.

Prints the curve at ten points, the least-squares slope of both over the second half of the run
(KiB per image) and their growth over that half, then one JSON line (also written to ``--json``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_stream.py [--images 10000] [--folder DIR]
        [--batch-size 1] [--every 50] [--json out.json]

``--folder DIR`` streams the image files of a folder instead of generated arrays.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, machine_info, set_threads  # noqa: E402

from maskrcnn.config import Config  # noqa: E402
from maskrcnn.inference.predictor import Predictor  # noqa: E402
from maskrcnn.inference.streaming import detect_to_jsonl  # noqa: E402
from maskrcnn.modeling import build_model  # noqa: E402


def rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


def live_rss_kib() -> float:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_kib()


def slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def images(n: int, seed: int, lo: int, hi: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        coarse = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        yield np.kron(coarse, np.ones((8, 8, 1), np.uint8))[:h, :w]  # blocky, so detections vary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--folder", help="stream this folder's images instead of generated ones")
    p.add_argument("--min-side", type=int, default=48)
    p.add_argument("--max-side", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--every", type=int, default=50, help="record the RSS every N images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the JSON result to this file")
    args = p.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                 mask_head_convs=2, num_classes=3, image_min_dim=64, image_max_dim=128,
                 pre_nms_limit_inference=200, post_nms_rois_inference=50, detection_max_instances=20)
    predictor = Predictor(build_model(cfg))
    source: Any = args.folder if args.folder else images(args.images, 0, args.min_side, args.max_side)

    points: list[dict[str, float]] = []
    start = {"rss": rss_kib(), "live": live_rss_kib()}
    t0 = time.perf_counter()

    def progress(image_id: int, name: str, det: Any) -> None:
        if image_id % args.every == 0:
            points.append({"images": image_id, "rss_kib": rss_kib(), "live_kib": live_rss_kib(),
                           "seconds": time.perf_counter() - t0})
            if len(points) % 20 == 0:
                q = points[-1]
                print(f"{image_id} images, RSS {q['rss_kib'] / 1024:.1f} MiB, live {q['live_kib'] / 1024:.1f} MiB, "
                      f"{q['seconds']:.0f} s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "detections.jsonl"
        summary = detect_to_jsonl(predictor, source, out, images_out=Path(tmp) / "images.jsonl",
                                  batch_size=args.batch_size, progress=progress)
        jsonl_bytes = out.stat().st_size
    seconds = time.perf_counter() - t0

    x = np.array([q["images"] for q in points], dtype=np.float64)
    half = x >= x[-1] / 2 if len(x) else x.astype(bool)
    rss = np.array([q["rss_kib"] for q in points])
    live = np.array([q["live_kib"] for q in points])
    result = {
        "benchmark": "memory_stream", "images": summary.images, "detections": summary.detections,
        "jsonl_mib": jsonl_bytes / 2**20, "seconds": seconds, "ms_per_image": 1000 * seconds / max(summary.images, 1),
        "start_kib": start, "second_half_from_image": int(x[half][0]) if half.any() else None,
        "rss_slope_kib_per_image": slope(x[half], rss[half]), "live_slope_kib_per_image": slope(x[half], live[half]),
        "rss_growth_second_half_kib": float(rss[half][-1] - rss[half][0]) if half.any() else None,
        "live_growth_second_half_kib": float(live[half][-1] - live[half][0]) if half.any() else None,
        "rss_range_second_half_kib": float(np.ptp(rss[half])) if half.any() else None,
        "batch_size": args.batch_size, "source": args.folder or f"generated {args.min_side}-{args.max_side} px",
        "curve": points, "machine": machine_info(torch.device("cpu"), args.threads),
    }
    idx = np.unique(np.linspace(0, len(points) - 1, 11).round().astype(int)) if points else []
    rows = [{"images": points[i]["images"], "rss": points[i]["rss_kib"] / 1024, "live": points[i]["live_kib"] / 1024,
             "s": points[i]["seconds"]} for i in idx]
    print(format_table(rows, [("images", "images", "d"), ("rss", "RSS MiB", ".1f"), ("live", "live MiB", ".1f"),
                              ("s", "seconds", ".0f")]))
    print(f"{summary.images} images, {summary.detections} detections, {result['ms_per_image']:.1f} ms/image; "
          f"second half (from image {result['second_half_from_image']}): slope RSS "
          f"{result['rss_slope_kib_per_image']:.3f} KiB/image, live {result['live_slope_kib_per_image']:.3f} KiB/image; "
          f"growth RSS {result['rss_growth_second_half_kib']:.0f} KiB, live {result['live_growth_second_half_kib']:.0f} KiB")
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

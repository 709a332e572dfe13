"""Deployment variants side by side: torchvision eager, ours exact and fast, ONNX Runtime, OpenVINO fp32 and int8.

In one process and on the same scikit-image photographs (``common.photos``), per input short side
(``--sizes``) and batch size (``--batches``):

* ``torchvision``: its eager fp32 ``maskrcnn_resnet50_fpn`` v1, built as ``benchmarks/infer.py``
  builds it (random weights; only without ``--weights``, since it must hold the same weights);
* ``exact``: ours, exact mode, default score threshold (torchvision's work: all detections);
* ``exact@0.5``, ``fast@0.5``: ours exact and fast (``Config.fast``) at a score threshold of 0.5;
* ``onnx@0.5``: the ``maskrcnn export`` ONNX model under ONNX Runtime (fp32);
* ``openvino@0.5``: the OpenVINO export (fp32);
* ``int8@0.5``: the OpenVINO export of the int8 model (ONNX Runtime static quantisation,
  calibrated on ``--calibration-images`` photos, or on images of ``--data`` when given).

Variants whose package is missing (torchvision, onnxruntime, openvino) are skipped with a line
saying so. Calls are interleaved (alternating order) after ``--warmup`` untimed calls; each row has
the median latency, images/s, the peak memory a call adds (``common.PeakMemory``) and the agreement
with ``exact`` above score 0.5 (``common.agreement``: detections matched by class and box IoU; mean
box and mask IoU, counts). ``--data D`` (any dataset ``maskrcnn evaluate`` reads, or ``shapes:N``)
adds the COCO mask and box AP of each of our variants (``maskrcnn.evaluation.evaluate_model``), at
the first of ``--sizes``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/deploy.py [--weights W] [--data D] [--sizes 800 320]
        [--batches 1 4] [--repeats 5] [--threads 2] [--json deploy.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (PeakMemory, agreement, cpu_line, format_table, machine_info, median, photos,  # noqa: E402
                    set_threads)

SCORE = 0.5


def missing(*packages: str) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def load_data(spec: str, fmt: str | None) -> Any:
    """A dataset from a path (``maskrcnn.data.formats.load_dataset``) or ``shapes[:N]`` (the demo's
    validation images: 128x128, seed 1)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from maskrcnn.commands.train import _SHAPES

    m = _SHAPES.match(spec)
    if m and not Path(spec).exists():
        from maskrcnn.data.synthetic import ShapesDataset

        return ShapesDataset(int(m.group(1) or 50), height=128, width=128, seed=1)
    from maskrcnn.data.formats import load_dataset

    return load_dataset(spec, format=fmt)


def calibration_folder(folder: Path, images: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"cal_{i:03d}.png")
    return folder


def build_variants(spec: Any, base: Any, size: int, tmp: Path, calibration: Path, skips: list[str]) -> dict[str, Any]:
    """Our predictors for one input size: ``base`` (exact, loaded from ``spec``), fast, and the
    exports of ``base`` (written under ``tmp``; a variant whose package is missing goes to ``skips``)."""
    import maskrcnn
    from maskrcnn.export.onnx import export_model

    out: dict[str, Any] = {"exact": base}
    out["fast"] = maskrcnn.load(spec, device="cpu", fast=True, progress=False, image_min_dim=size,
                                **_max_dim(base.config, size))
    print(f"fast: {out['fast'].mode}", file=sys.stderr, flush=True)
    if miss := missing("onnx", "onnxruntime"):
        skips.append(f"onnx, openvino, int8: {', '.join(miss)} not installed (pip install 'maskrcnn[export]')")
        return out
    t0 = time.perf_counter()
    path, _ = export_model(base.model, tmp / f"s{size}" / "model.onnx")
    out["onnx"] = maskrcnn.load(path)
    print(f"exported onnx in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if miss := missing("openvino"):
        skips.append(f"openvino, int8: {', '.join(miss)} not installed (pip install 'maskrcnn[openvino]')")
        return out
    t0 = time.perf_counter()
    path, _ = export_model(base.model, tmp / f"s{size}" / "model.xml", fmt="openvino")
    out["openvino"] = maskrcnn.load(path)
    print(f"exported openvino in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    path, _ = export_model(base.model, tmp / f"s{size}" / "int8.xml", fmt="openvino", calibration=calibration)
    out["int8"] = maskrcnn.load(path)
    print(f"exported openvino int8 in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def _max_dim(config: Any, size: int) -> dict[str, int]:
    """``image_max_dim`` to pass with ``image_min_dim=size``: unchanged unless it would be smaller."""
    return {} if config.image_max_dim >= size else {"image_max_dim": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="our model (any maskrcnn.load spec: checkpoint, preset run, ...); default: "
                        "torchvision's R50-FPN v1 with random weights, and torchvision's eager model as a row")
    parser.add_argument("--data", help="a dataset (annotation file or folder, or shapes[:N]) for the mask AP of each variant")
    parser.add_argument("--data-format", help="the dataset's format when it cannot be told from the path")
    parser.add_argument("--eval-images", type=int, default=None, help="evaluate on at most this many images of --data")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch, ONNX Runtime, OpenVINO), default 2")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration and variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration and variant first")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="input short sides (image_min_dim); default 800 320, with --weights the model's own")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--calibration-images", type=int, default=4,
                        help="int8 calibration images (photos, or --data's first images), default 4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device("cpu")

    import maskrcnn

    memory = PeakMemory(device)
    skips: list[str] = []
    rows: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    dataset = load_data(args.data, args.data_format) if args.data else None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tv = None
        if args.weights:
            first = maskrcnn.load(args.weights, device="cpu", fast=False, progress=False)
            sizes = args.sizes or [first.config.image_min_dim]
            skips.append("torchvision: only with the random R50 (without --weights), which it holds too")
        else:
            sizes = args.sizes or [800, 320]
            if miss := missing("torchvision"):
                sys.exit(f"{', '.join(miss)} not installed: needed for the random R50")
            from infer import build_torchvision

            tv = build_torchvision(args.seed)
            pth = tmp / "random_v1.pth"
            torch.save(tv.state_dict(), pth)
            first = maskrcnn.load(pth, device="cpu", fast=False, progress=False)
        cal_images = ([dataset.load_image(int(i)) for i in list(dataset.image_ids)[: args.calibration_images]]
                      if dataset is not None else photos(max(sizes), args.calibration_images))
        calibration = calibration_folder(tmp / "calibration", cal_images)
        for k, size in enumerate(sizes):
            spec = args.weights or tmp / "random_v1.pth"
            base = maskrcnn.load(spec, device="cpu", fast=False, progress=False, image_min_dim=size,
                                 **_max_dim(first.config, size))
            variants = build_variants(spec, base, size, tmp, calibration, skips)
            if tv is not None:
                tv.transform.min_size = (size,)
            images = photos(size, max(args.batches))
            if dataset is not None and k == 0:
                from maskrcnn.evaluation import evaluate_model

                for name, p in variants.items():
                    t0 = time.perf_counter()
                    report = evaluate_model(p, dataset, max_images=args.eval_images, model_name=name, data_name=args.data)
                    coco = report.get("coco") or {}
                    accuracy.append({"size": size, "variant": name, "images": len(dataset.image_ids[: args.eval_images]),
                                     "mask_AP": (coco.get("segm") or {}).get("AP"),
                                     "mask_AP50": (coco.get("segm") or {}).get("AP50"),
                                     "box_AP": (coco.get("bbox") or {}).get("AP"), "eval_s": time.perf_counter() - t0})
                    print(f"AP {accuracy[-1]}", file=sys.stderr, flush=True)
            for batch_size in args.batches:
                batch = images[:batch_size]
                runs: dict[str, Callable[[], Any]] = {}
                if tv is not None:
                    from infer import to_tensors

                    runs["torchvision"] = lambda b=batch: tv(to_tensors(b, device))
                runs["exact"] = lambda b=batch, n=batch_size, p=base: p.detect(b, batch_size=n)
                for name, p in variants.items():
                    runs[f"{name}@{SCORE}"] = (lambda b=batch, n=batch_size, p=p:
                                               p.detect(b, batch_size=n, score_threshold=SCORE))
                stats: dict[str, dict[str, list[float]]] = {n: {"t": [], "mem": []} for n in runs}
                outputs: dict[str, Any] = {}
                with torch.no_grad():
                    for name, fn in runs.items():
                        for _ in range(args.warmup):
                            fn()
                    for r in range(args.repeats):
                        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                            with memory.measure():
                                t0 = time.perf_counter()
                                out = runs[name]()
                                elapsed = time.perf_counter() - t0
                            stats[name]["t"].append(elapsed)
                            stats[name]["mem"].append(memory.peak)
                            outputs.setdefault(name, out)
                            del out
                rows_start = len(rows)
                for name in runs:
                    lat = median(stats[name]["t"])
                    row = {"size": size, "batch": batch_size, "variant": name, "latency_s": lat,
                           "images_per_s": batch_size / lat, "peak_mem_mb": max(stats[name]["mem"]) / 2**20,
                           "repeats": len(stats[name]["t"])}
                    if name != "torchvision":
                        a = agreement(outputs["exact"], outputs[name], SCORE)
                        row.update(agree_ref=a["reference"], agree_other=a["other"], agree_matched=a["matched"],
                                   box_iou=a["mean_box_iou"], mask_iou=a["mean_mask_iou"])
                    rows.append(row)
                ref = next((r for r in rows[rows_start:] if r["variant"] == "torchvision"), None)
                for r in rows[rows_start:]:
                    if ref is not None:
                        r["time_vs_tv"] = r["latency_s"] / ref["latency_s"]
                    print(f"size {size} batch {batch_size} {r['variant']}: {r['latency_s']:.3f} s", file=sys.stderr,
                          flush=True)
                del outputs
            del variants, base

    columns = [("size", "short side", "d"), ("batch", "batch", "d"), ("variant", "variant", "s"),
               ("latency_s", "median s", ".3f"), ("images_per_s", "img/s", ".2f"), ("time_vs_tv", "time/tv", ".2f"),
               ("peak_mem_mb", "peak MB", ".0f"), ("agree_ref", "exact dets", "d"), ("agree_other", "dets", "d"),
               ("agree_matched", "matched", "d"), ("box_iou", "box IoU", ".4f"), ("mask_iou", "mask IoU", ".4f")]
    print(f"cpu, {args.threads} threads, memory: {memory.method}, repeats {args.repeats} (+{args.warmup} warm-up), "
          f"weights {args.weights or 'random R50-FPN v1 (torchvision layout)'}; agreement with exact at score >= {SCORE}")
    print(cpu_line())
    info = machine_info(device, args.threads)
    print(f"load average {info.get('load_average')}")
    for s in dict.fromkeys(skips):
        print(f"skipped {s}")
    print(format_table(rows, columns))
    if accuracy:
        print(f"accuracy on {args.data} (score >= 0.5 detections scored by evaluate_model):")
        print(format_table(accuracy, [("size", "short side", "d"), ("variant", "variant", "s"), ("images", "images", "d"),
                                      ("mask_AP", "mask AP", ".4f"), ("mask_AP50", "mask AP50", ".4f"),
                                      ("box_AP", "box AP", ".4f"), ("eval_s", "eval s", ".1f")]))
    result = {"benchmark": "deploy", "machine": info, "memory_method": memory.method, "repeats": args.repeats,
              "warmup": args.warmup, "weights": args.weights, "data": args.data, "skipped": list(dict.fromkeys(skips)),
              "rows": rows, "accuracy": accuracy}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Deployment variants side by side: torchvision eager, ours exact and fast, ONNX Runtime, OpenVINO fp32 and int8.

Latency grid: in one process and on the same scikit-image photographs (``common.photos``), per
input short side (``--sizes``) and batch size (``--batches``):

* ``torchvision``: its eager fp32 ``maskrcnn_resnet50_fpn`` v1, built as ``benchmarks/infer.py``
  builds it (random weights; only without ``--weights``, since it must hold the same weights);
* ``exact``: ours, exact mode, default score threshold (torchvision's work: all detections);
* ``exact@0.5``, ``fast@0.5``: ours exact and fast (``Config.fast``) at a score threshold of 0.5;
* ``onnx@0.5``: the ``maskrcnn export`` ONNX model under ONNX Runtime (fp32);
* ``openvino@0.5``: the OpenVINO export (fp32);
* ``onnx-int8@0.5``: ONNX Runtime's static int8 quantisation of the ONNX export;
* ``openvino-int8@0.5``: NNCF's int8 quantisation of the OpenVINO export (both calibrated on
  ``--calibration-images`` photos, or on images of ``--data`` when given);
* ``tflite@0.5``: the TFLite export (dense parts in LiteRT, the glue in our runtime) at a fixed
  square side (:func:`tflite_size`: 512, or the model's ``image_max_dim`` when smaller), so its
  input size differs from the other variants'.

Variants whose package is missing (torchvision, onnxruntime, openvino, nncf) are skipped with a line
saying so. Calls are interleaved (alternating order) after ``--warmup`` untimed calls; each row has
the median latency, images/s, the peak memory a call adds (``common.PeakMemory``) and the agreement
with ``exact`` above score 0.5 (``common.agreement``: detections matched by class and box IoU; mean
box and mask IoU, counts). ``--data D`` (any dataset ``maskrcnn evaluate`` reads, or ``shapes:N``)
adds the COCO mask and box AP of each of our variants (``maskrcnn.evaluation.evaluate_model``), at
the first of ``--sizes``.

Accuracy on trained models (``--shapes-weights W`` and/or ``--nuclei-weights W``; ``--accuracy-only``
skips the latency grid): each variant of the model (exact, fast, ONNX Runtime fp32, OpenVINO fp32,
ONNX Runtime int8, OpenVINO int8, TFLite (at its fixed size) when installed; torchvision cannot hold our weights) is
evaluated on the model's validation data (``--shapes-val``, default the demo's ``shapes:50``;
``--nuclei-val``, default ``../shared/data/nuclei/val``): COCO mask AP, mask AP50, box AP of the
detections scored at 0.5, and the agreement with exact's detections above 0.5 (mean mask IoU of
exact's detections matched by class and box, an unmatched one counting 0). int8 is calibrated on
``--accuracy-calibration-images`` training images (the demo's training shapes, seed 0; the
``train`` folder next to ``--nuclei-val``), never on the validation images. No timing here.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/deploy.py [--weights W] [--data D] [--sizes 800 320]
        [--batches 1 4] [--repeats 5] [--threads 2] [--json deploy.json]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/deploy.py --accuracy-only --shapes-weights demo_out/model.safetensors
        --nuclei-weights runs/nuclei/best.safetensors [--json deploy_accuracy.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
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


def build_variants(spec: Any, base: Any, size: int | None, tmp: Path, calibration: Path, skips: list[str]) -> dict[str, Any]:
    """Our predictors: ``base`` (exact, loaded from ``spec``), fast (at ``size``, or the model's own
    input size when None), and the exports of ``base`` (written under ``tmp``; a variant whose
    package is missing goes to ``skips``), int8 ones calibrated on the images in ``calibration``."""
    import maskrcnn
    from maskrcnn.export.onnx import export_model

    sized = {} if size is None else {"image_min_dim": size, **_max_dim(base.config, size)}
    out: dict[str, Any] = {"exact": base}
    out["fast"] = maskrcnn.load(spec, device="cpu", fast=True, progress=False, **sized)
    print(f"fast: {out['fast'].mode}", file=sys.stderr, flush=True)

    def add(name: str, file: str, **kw: Any) -> None:
        t0 = time.perf_counter()
        path, _ = export_model(base.model, tmp / file, **kw)
        out[name] = maskrcnn.load(path)
        print(f"exported {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    if miss := missing("onnx", "onnxruntime"):
        skips.append(f"onnx, openvino, int8: {', '.join(miss)} not installed (pip install 'maskrcnn[export]')")
        return out
    add("onnx", "model.onnx")
    add("onnx-int8", "int8.onnx", calibration=calibration)
    if miss := missing("openvino", "nncf"):
        skips.append(f"openvino: {', '.join(miss)} not installed (pip install 'maskrcnn[openvino]')")
    else:
        add("openvino", "model.xml", fmt="openvino")
        add("openvino-int8", "int8.xml", fmt="openvino", calibration=calibration)
    if miss := missing("litert_torch", "ai_edge_litert"):
        skips.append(f"tflite: {', '.join(miss)} not installed (pip install 'maskrcnn[tflite]')")
    else:
        add("tflite", "model.tflite", fmt="tflite", imgsz=tflite_size(base.config))
    return out


def tflite_size(config: Any) -> int:
    """The TFLite export's fixed square side: the export's default (512), or the model's
    ``image_max_dim`` (rounded up to a multiple of 32) when smaller (the 128 px shapes model)."""
    from maskrcnn.export.onnx import TFLITE_IMGSZ

    return min(TFLITE_IMGSZ, -(-config.image_max_dim // 32) * 32)


def trained_accuracy(name: str, weights: str, val: str, calibration_data: Any, calibration_images: int, tmp: Path,
             skips: list[str]) -> list[dict[str, Any]]:
    """One row per variant (:func:`build_variants`) of the trained model ``weights``: COCO mask AP,
    mask AP50 and box AP on ``val`` (``evaluate_model``, detections scored at 0.5) and the
    agreement with exact's detections above :data:`SCORE`, image by image (``common.agreement``;
    means weighted by exact's detection count). int8 is calibrated on the first
    ``calibration_images`` images of ``calibration_data``."""
    import maskrcnn
    from maskrcnn.evaluation import evaluate_model

    dataset = load_data(val, None)
    ids = [int(i) for i in dataset.image_ids]
    base = maskrcnn.load(weights, device="cpu", fast=False, progress=False)
    cal_ids = list(calibration_data.image_ids)[:calibration_images]
    calibration = calibration_folder(tmp / "calibration", [calibration_data.load_image(int(i)) for i in cal_ids])
    variants = build_variants(weights, base, None, tmp, calibration, skips)
    sums = {v: {"reference": 0, "other": 0, "matched": 0, "box": 0.0, "mask": 0.0} for v in variants}
    for i in ids:
        image = dataset.load_image(i)
        ref = base.detect(image, score_threshold=SCORE)
        for v, p in variants.items():
            a = agreement(ref, ref if p is base else p.detect(image, score_threshold=SCORE), SCORE)
            acc = sums[v]
            for key in ("reference", "other", "matched"):
                acc[key] += a[key]
            acc["box"] += a["mean_box_iou"] * a["reference"]
            acc["mask"] += a["mean_mask_iou"] * a["reference"]
    rows = []
    for v, p in variants.items():
        t0 = time.perf_counter()
        coco = evaluate_model(p, dataset, model_name=f"{name} {v}", data_name=val).get("coco") or {}
        acc = sums[v]
        n = max(acc["reference"], 1)
        rows.append({"model": name, "variant": v, "images": len(ids), "calibration_images": len(cal_ids),
                     "mask_AP": (coco.get("segm") or {}).get("AP"), "mask_AP50": (coco.get("segm") or {}).get("AP50"),
                     "box_AP": (coco.get("bbox") or {}).get("AP"), "exact_dets": acc["reference"],
                     "dets": acc["other"], "matched": acc["matched"],
                     # nan when a detection's box has no area (box_iou 0/0): the mask IoU still holds
                     "box_iou": None if math.isnan(acc["box"]) else acc["box"] / n,
                     "mask_iou": acc["mask"] / n})
        print(f"{name} {v}: {rows[-1]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    exact = rows[0]
    for r in rows:
        r["mask_AP_diff"] = None if None in (r["mask_AP"], exact["mask_AP"]) else 100 * (r["mask_AP"] - exact["mask_AP"])
    return rows


ACCURACY_COLUMNS = [("model", "model", "s"), ("variant", "variant", "s"), ("images", "images", "d"),
                    ("mask_AP", "mask AP", ".4f"), ("mask_AP_diff", "vs exact (points)", "+.2f"),
                    ("mask_AP50", "mask AP50", ".4f"), ("box_AP", "box AP", ".4f"), ("exact_dets", "exact dets", "d"),
                    ("dets", "dets", "d"), ("matched", "matched", "d"), ("mask_iou", "mask IoU", ".4f")]


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
    parser.add_argument("--shapes-weights", help="accuracy of each variant of this trained shapes demo model")
    parser.add_argument("--shapes-val", default="shapes:50", help="its validation data (default: the demo's shapes:50)")
    parser.add_argument("--nuclei-weights", help="accuracy of each variant of this trained nuclei-preset model")
    parser.add_argument("--nuclei-val", default="../shared/data/nuclei/val",
                        help="its validation data (default ../shared/data/nuclei/val; int8 calibrates on the train "
                        "folder next to it)")
    parser.add_argument("--accuracy-calibration-images", type=int, default=64,
                        help="int8 calibration images of the trained models (training images), default 64")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the latency grid (accuracy of the trained models only)")
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
    trained: list[tuple[str, str, str, Any]] = []  # (name, weights, validation data, calibration dataset)
    if args.shapes_weights:
        from maskrcnn.data.synthetic import ShapesDataset

        trained.append(("shapes", args.shapes_weights, args.shapes_val,
                        ShapesDataset(args.accuracy_calibration_images, height=128, width=128, seed=0)))
    if args.nuclei_weights:
        trained.append(("nuclei", args.nuclei_weights, args.nuclei_val,
                        load_data(str(Path(args.nuclei_val).parent / "train"), None)))
    if args.accuracy_only and not trained:
        sys.exit("--accuracy-only needs --shapes-weights and/or --nuclei-weights")
    trained_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.accuracy_only:
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
                variants = build_variants(spec, base, size, tmp / f"s{size}", calibration, skips)
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
        for name, weights, val, cal in trained:
            trained_rows += trained_accuracy(name, weights, val, cal, args.accuracy_calibration_images, tmp / name, skips)

    columns = [("size", "short side", "d"), ("batch", "batch", "d"), ("variant", "variant", "s"),
               ("latency_s", "median s", ".3f"), ("images_per_s", "img/s", ".2f"), ("time_vs_tv", "time/tv", ".2f"),
               ("peak_mem_mb", "peak MB", ".0f"), ("agree_ref", "exact dets", "d"), ("agree_other", "dets", "d"),
               ("agree_matched", "matched", "d"), ("box_iou", "box IoU", ".4f"), ("mask_iou", "mask IoU", ".4f")]
    if rows:
        print(f"cpu, {args.threads} threads, memory: {memory.method}, repeats {args.repeats} (+{args.warmup} warm-up), "
              f"weights {args.weights or 'random R50-FPN v1 (torchvision layout)'}; agreement with exact at score >= {SCORE}")
    print(cpu_line())
    info = machine_info(device, args.threads)
    print(f"load average {info.get('load_average')}")
    for s in dict.fromkeys(skips):
        print(f"skipped {s}")
    if rows:
        print(format_table(rows, columns))
    if trained_rows:
        print(f"accuracy of trained models (COCO AP of the detections scored at 0.5; agreement with exact above {SCORE}):")
        print(format_table(trained_rows, ACCURACY_COLUMNS))
    if accuracy:
        print(f"accuracy on {args.data} (score >= 0.5 detections scored by evaluate_model):")
        print(format_table(accuracy, [("size", "short side", "d"), ("variant", "variant", "s"), ("images", "images", "d"),
                                      ("mask_AP", "mask AP", ".4f"), ("mask_AP50", "mask AP50", ".4f"),
                                      ("box_AP", "box AP", ".4f"), ("eval_s", "eval s", ".1f")]))
    result = {"benchmark": "deploy", "machine": info, "memory_method": memory.method, "repeats": args.repeats,
              "warmup": args.warmup, "weights": args.weights, "data": args.data, "skipped": list(dict.fromkeys(skips)),
              "rows": rows, "accuracy": accuracy, "trained_accuracy": trained_rows}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

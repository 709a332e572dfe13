"""Inference speed and memory: ours (exact mode, the default) against torchvision's ``maskrcnn_resnet50_fpn``.

Both models hold the SAME random weights (nothing can be downloaded here): torchvision's v1 is
built the way its COCO-weights path builds it, ``MaskRCNN(_resnet_fpn_extractor(resnet50(
norm_layer=FrozenBatchNorm2d), 3), 91)``, with random frozen-BN statistics and the COCO file's
frozen-BN eps of 0; its state dict is saved as a ``.pth`` and loaded into ours with ``maskrcnn.load``.

Each side does the full work of delivering masks at the original image size, starting from the
same uint8 ``[H, W, 3]`` photographs:

* torchvision: uint8 -> float tensors, ``model(images)``: boxes, labels, scores and float masks
  ``[N, 1, H, W]`` pasted into the full image (its output; left on the device).
* ours: ``Predictor.detect(images, batch_size=B)``: the same conversion, the model, and bool masks
  ``[N, H, W]`` pasted inside each box, as numpy on the CPU; exact mode, and fast mode
  (``Config.fast``: BatchNorm folded, channels-last, dense layers in ``--fast-dtypes``: ``auto`` is
  bf16 on a CPU with native bf16 or a GPU, fp32 elsewhere) at a score threshold of 0.5.

The two run interleaved in one process (alternating which goes first), after ``--warmup`` calls
per configuration that are not timed. Per configuration (input short side x batch size) the
script reports the median latency, images/s, the peak memory a call adds (see
``benchmarks/common.py`` for the method), ratios ours/torchvision, and the achieved GFLOP/s of the
dense part (backbone + FPN forward, timed inside the same calls by forward hooks, FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode``) against the measured fp32 matmul peak. It checks that
the outputs are equal (same labels, boxes within 1e-4, masks: torchvision's ``>= 0.5`` against
ours, both with torchvision's paste: ``mask_paste: torchvision``) and exits with status 1 when they are not.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/infer.py [--quick] [--device cuda] [--threads 2]
        [--repeats 5] [--sizes 800 320] [--batches 1 4] [--fast-dtypes auto fp32 bf16] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (PeakMemory, Timer, agreement, count_flops, cpu_line, format_table, machine_info, matmul_peak_gflops,  # noqa: E402
                    median, photos, set_threads, sync)


def build_torchvision(seed: int) -> torch.nn.Module:
    """torchvision's v1 as its COCO path builds it, random weights and random frozen-BN statistics."""
    from torchvision.models import resnet50
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(seed)
    model = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), 91).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.running_mean.numel()
            m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    overwrite_eps(model, 0.0)  # what torchvision does after loading its COCO file
    return model


def to_tensors(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    return [(torch.from_numpy(a).permute(2, 0, 1).float() / 255).to(device) for a in arrays]


def compare(tv_out: list[dict[str, torch.Tensor]], ours: list[Any]) -> dict[str, Any]:
    """Same labels, box difference, mask pixels that differ (torchvision's masks >= 0.5 vs ours)."""
    labels_equal = True
    box_diff = 0.0
    mask_diff = 0
    detections = 0
    for r, d in zip(tv_out, ours):
        labels = r["labels"].cpu().numpy()
        detections += len(labels)
        if labels.shape != d.class_ids.shape or not np.array_equal(labels, d.class_ids):
            labels_equal = False
            continue
        if len(labels):
            box_diff = max(box_diff, float(np.abs(r["boxes"].cpu().numpy() - d.boxes).max()))
            ours_masks = torch.from_numpy(d.masks).to(r["masks"].device)
            mask_diff += int(((r["masks"][:, 0] >= 0.5) != ours_masks).sum())
    return {"labels_equal": labels_equal, "max_box_diff": box_diff, "mask_pixels_differing": mask_diff,
            "detections": detections, "equal": labels_equal and box_diff <= 1e-4 and mask_diff == 0}


SCORE = 0.5


def fast_name(fast_dtype: str) -> str:
    """Row name of a fast-mode variant: ``ours-fast@0.5`` (auto: what ``fast=True`` does here), else
    ``ours-fast-<dtype>@0.5``."""
    return f"ours-fast@{SCORE}" if fast_dtype == "auto" else f"ours-fast-{fast_dtype}@{SCORE}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads), default 2")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration and model (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration and model first")
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 320],
                        help="input short sides; the models' image_min_dim/min_size are set to the same value")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--quick", action="store_true", help="one timed call per configuration (after the warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-dtypes", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"],
                        help="fast-mode variants (Config.fast_dtype) to time, default auto (what fast=True does here); "
                             "e.g. --fast-dtypes fp32 bf16 for both")
    parser.add_argument("--json", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    set_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    import maskrcnn

    peak_gflops = matmul_peak_gflops(device)
    tv = build_torchvision(args.seed).to(device)
    memory = PeakMemory(device)
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "random_v1.pth"
        torch.save(tv.state_dict(), pth)
        for size in args.sizes:
            tv.transform.min_size = (size,)
            # torchvision's mask frame and paste: the outputs must equal its model's (the default subpixel
            # paste moves mask edges by up to a pixel on purpose; its cost is the same per box)
            ours = maskrcnn.load(pth, device=device, image_min_dim=size, mask_paste="torchvision")
            fasts = {fast_name(d): maskrcnn.load(pth, device=device, image_min_dim=size, fast=True, fast_dtype=d,
                                                 mask_paste="torchvision")
                     for d in args.fast_dtypes}
            for name, f in fasts.items():
                print(f"{name}: {f.mode}", file=sys.stderr, flush=True)
            assert ours.config.frozen_bn_eps == 0.0 and ours.config.image_max_dim == tv.transform.max_size
            images = photos(size, max(args.batches))
            timers = {"torchvision": Timer(tv.backbone, device), "ours": Timer(ours.model.backbone, device),
                      **{name: Timer(f.model.backbone, device) for name, f in fasts.items()}}
            timers["ours@0.5"] = timers["ours"]  # same module: one hook, taken after each run
            for batch_size in args.batches:
                batch = images[:batch_size]
                with torch.no_grad():
                    padded = ours.model.preprocess(to_tensors(batch, device)).tensor
                shape = tuple(padded.shape)
                del padded
                flops = {"ours": count_flops(ours.model.backbone, shape), "torchvision": count_flops(tv.backbone, shape)}
                flops["ours@0.5"] = flops["ours"]
                for name, f in fasts.items():
                    flops[name] = count_flops(f.model.backbone, shape)
                runs = {
                    "torchvision": lambda b=batch: tv(to_tensors(b, device)),
                    "ours": lambda b=batch, n=batch_size: ours.detect(b, batch_size=n),
                    "ours@0.5": lambda b=batch, n=batch_size: ours.detect(b, batch_size=n, score_threshold=SCORE),
                    **{name: (lambda b=batch, n=batch_size, f=f: f.detect(b, batch_size=n, score_threshold=SCORE))
                       for name, f in fasts.items()},
                }
                with torch.no_grad():
                    for name, fn in runs.items():
                        for _ in range(args.warmup):
                            fn()
                        sync(device)
                        timers[name].take()
                    stats: dict[str, dict[str, list[float]]] = {n: {"t": [], "mem": [], "dense": []} for n in runs}
                    first: dict[str, Any] = {}
                    for r in range(args.repeats):
                        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                        for name in order:
                            with memory.measure():
                                t0 = time.perf_counter()
                                out = runs[name]()
                                sync(device)
                                elapsed = time.perf_counter() - t0
                            stats[name]["t"].append(elapsed)
                            stats[name]["mem"].append(memory.peak)
                            stats[name]["dense"].append(timers[name].take())
                            if name not in first:
                                first[name] = out
                            del out
                check = compare(first["torchvision"], first["ours"])
                check["fast_vs_exact"] = {name: agreement(first["ours"], first[name], SCORE) for name in fasts}
                del first
                check.update(size=size, batch=batch_size)
                checks.append(check)
                for name in runs:
                    s = stats[name]
                    lat = median(s["t"])
                    dense = median(s["dense"])
                    rows.append({
                        "size": size, "batch": batch_size, "model": name, "input": "x".join(map(str, shape[-2:])),
                        "latency_s": lat, "images_per_s": batch_size / lat, "peak_mem_mb": max(s["mem"]) / 2**20,
                        "dense_s": dense, "dense_gflop": flops[name] / 1e9,
                        "dense_gflops_per_s": flops[name] / dense / 1e9 if dense > 0 else None,
                        "dense_pct_of_peak": 100 * flops[name] / dense / 1e9 / peak_gflops if dense > 0 else None,
                        "repeats": len(s["t"]),
                    })
                tv_row = rows[-len(runs)]
                for our_row in rows[-len(runs) + 1:]:
                    our_row["latency_ratio"] = our_row["latency_s"] / tv_row["latency_s"]
                    our_row["memory_ratio"] = (our_row["peak_mem_mb"] / tv_row["peak_mem_mb"]) if tv_row["peak_mem_mb"] else None
                print(f"size {size} batch {batch_size}: torchvision {tv_row['latency_s']:.3f} s, ours "
                      f"{rows[-len(runs) + 1]['latency_s']:.3f} s, equal={check['equal']}, fast vs exact "
                      f"{check['fast_vs_exact']}", file=sys.stderr, flush=True)
            for t in {id(t): t for t in timers.values()}.values():
                t.remove()
            del ours, fasts

    columns = [("size", "short side", "d"), ("batch", "batch", "d"), ("model", "model", "s"), ("input", "net input", "s"),
               ("latency_s", "median s", ".3f"), ("images_per_s", "img/s", ".2f"), ("peak_mem_mb", "peak MB", ".0f"),
               ("latency_ratio", "time ours/tv", ".3f"), ("memory_ratio", "mem ours/tv", ".3f"),
               ("dense_s", "dense s", ".3f"), ("dense_gflop", "dense GFLOP", ".1f"),
               ("dense_gflops_per_s", "dense GFLOP/s", ".1f"), ("dense_pct_of_peak", "% of peak", ".0f")]
    print(f"device {device}, {args.threads} threads, fp32 matmul peak {peak_gflops:.1f} GFLOP/s, memory: {memory.method}, "
          f"repeats {args.repeats} (+{args.warmup} warm-up)")
    print(cpu_line())
    print(format_table(rows, columns))
    all_equal = all(c["equal"] for c in checks)
    for c in checks:
        print(f"outputs size {c['size']} batch {c['batch']}: {c['detections']} detections, labels equal "
              f"{c['labels_equal']}, max box diff {c['max_box_diff']:.2e}, mask pixels differing "
              f"{c['mask_pixels_differing']} -> {'EQUAL' if c['equal'] else 'DIFFERENT'}")
        for name, f in c["fast_vs_exact"].items():
            print(f"  {name} vs exact, detections with score >= {SCORE}: {f['reference']} exact, {f['other']} fast, "
                  f"{f['matched']} matched, mean box IoU {f['mean_box_iou']:.4f}, mean mask IoU {f['mean_mask_iou']:.4f}")
    result = {"benchmark": "infer", "machine": machine_info(device, args.threads), "matmul_peak_gflops": peak_gflops,
              "memory_method": memory.method, "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick,
              "rows": rows, "checks": checks, "outputs_equal": all_equal}
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())

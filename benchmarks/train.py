"""One training step, ours against torchvision's Mask R-CNN at identical settings.

R50-FPN v1 (frozen BN, trainable stages 2-4 as torchvision's default), batch 2, 800 px short side,
the same weights and the same targets (real photographs from scikit-image, 12 instance masks each).
Each configuration runs in its own child process so that its peak RSS is its own.

Checks that the five losses agree to 1e-4 for the same weights and the same sampled anchors/RoIs
(same RNG state), then times forward + backward + SGD step (median of ``--steps`` after one warm-up).
``ours+bf16`` (bf16 autocast + channels-last, ``amp: auto`` on hardware with native bf16) has
losses within bf16 rounding of fp32's, plus whatever a proposal whose rounded objectness changes
rank does to the sampled RoIs (the head terms can move by several percent on random weights).
The header names the CPU and its flags: on a CPU without native bf16 the bf16 row is emulated.

    python benchmarks/train.py [--threads 2] [--steps 3] [--size 800] [--variants ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import maskrcnn  # noqa: F401  before torch: its OpenMP defaults (maskrcnn.OPENMP_DEFAULTS) apply to every variant

#: ``ours+bf16``: bf16 autocast with channels-last weights and activations (what ``amp: auto`` does on
#: a CPU with native bf16, AVX512-BF16 or AMX, and on CUDA); emulated, and slow, on other CPUs.
VARIANTS = ("torchvision", "ours", "ours+checkpointing", "ours+bf16")


def _scene(size: int):
    import numpy as np
    import torch
    from skimage import data

    imgs, targets = [], []
    rng = np.random.default_rng(0)
    for photo in (data.astronaut(), data.coffee()):
        t = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
        h, w = t.shape[-2:]
        scale = size / min(h, w)
        t = torch.nn.functional.interpolate(t[None], scale_factor=scale, mode="bilinear",
                                            recompute_scale_factor=True, align_corners=False)[0]
        h, w = t.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        masks, boxes = [], []
        for _ in range(12):
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
            ry, rx = rng.uniform(0.03, 0.2) * h, rng.uniform(0.03, 0.2) * w
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            ys, xs = np.where(m)
            masks.append(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        imgs.append(t)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.as_tensor(rng.integers(1, 91, 12), dtype=torch.int64),
                        "masks": torch.as_tensor(np.stack(masks), dtype=torch.uint8)})
    return imgs, targets


def child(variant: str, size: int, steps: int, threads: int, weights: str, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    from maskrcnn.engine.runtime import autocast

    sd = torch.load(weights, weights_only=True)
    amp_dtype = None
    if variant == "torchvision":
        model = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91,
                         min_size=size, max_size=10_000)
        model.load_state_dict(sd)
        names = {"loss_objectness": "loss_rpn_class", "loss_rpn_box_reg": "loss_rpn_bbox", "loss_classifier": "loss_mrcnn_class",
                 "loss_box_reg": "loss_mrcnn_bbox", "loss_mask": "loss_mrcnn_mask"}
    else:
        from maskrcnn import Config
        from maskrcnn.engine.optim import select_trainable
        from maskrcnn.engine.runtime import resolve_amp, use_channels_last
        from maskrcnn.modeling import build_model

        cfg = Config(frozen_bn_eps=1e-5, layers="3+", gradient_checkpointing=variant.endswith("checkpointing"),
                     amp="bf16" if variant.endswith("bf16") else "none")
        amp_dtype = resolve_amp(cfg.amp, torch.device("cpu"))[0]
        model = build_model(cfg)
        model.load_state_dict(sd)
        select_trainable(model, cfg)
        use_channels_last(model, amp_dtype)  # as the trainer does
        names = None
    model.train()
    imgs, targets = _scene(size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    before_loop = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, losses = [], None
    for step in range(steps + 1):
        torch.manual_seed(step)
        if variant != "torchvision":
            for _ in imgs:  # torchvision's training resize draws one number per image first
                torch.empty(1).uniform_(0.0, 1.0)
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), amp_dtype):
            loss_dict = model(imgs, [dict(t) for t in targets])
        loss = sum(loss_dict.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if step == 0:
            losses = {(names[k] if names else k): float(v.detach()) for k, v in loss_dict.items()}
        else:
            times.append(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).write_text(json.dumps({"variant": variant, "times": times, "losses_step0": losses,
                                     "peak_rss_mib": peak / 1024, "rss_before_mib": before_loop / 1024,
                                     "base_rss_mib": base_rss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="variants to run (torchvision is always run: the ratios are to it)")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "WEIGHTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.size, args.steps, args.threads, args.child[1], args.child[2])
        return
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp_name:  # the 178 MB weights go with it
        tmp = Path(tmp_name)
        ref = MaskRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91)
        torch.save(ref.state_dict(), tmp / "w.pth")
        del ref
        for v in ["torchvision"] + [v for v in args.variants if v != "torchvision"]:
            out = tmp / f"{v}.json"
            subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--steps", str(args.steps),
                            "--size", str(args.size), "--child", v, str(tmp / "w.pth"), str(out)], check=True)
            rows[v] = json.loads(out.read_text())
    tv = rows["torchvision"]
    tv_med = sorted(tv["times"])[len(tv["times"]) // 2]
    tv_mem = tv["peak_rss_mib"] - tv["base_rss_mib"]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import cpu_info, cpu_line

    print(f"\ntraining step, R50-FPN v1, batch 2, {args.size} px, {args.threads} threads")
    print(cpu_line())
    print(f"{'variant':22s} {'median s/step':>14s} {'ratio':>7s} {'peak RSS MiB':>13s} {'ratio':>7s}  max |loss diff| vs torchvision")
    result = {"size": args.size, "threads": args.threads, "steps": args.steps, "machine": cpu_info(), "variants": {}}
    for v, r in rows.items():
        med = sorted(r["times"])[len(r["times"]) // 2]
        mem = r["peak_rss_mib"] - r["base_rss_mib"]
        diff = max(abs(r["losses_step0"][k] - tv["losses_step0"][k]) for k in tv["losses_step0"])
        print(f"{v:22s} {med:14.2f} {med / tv_med:7.2f} {mem:13.0f} {mem / tv_mem:7.2f}  {diff:.2e}")
        result["variants"][v] = {"median_s": med, "time_ratio": med / tv_med, "peak_rss_mib": mem,
                                 "mem_ratio": mem / tv_mem, "max_loss_diff": diff, "losses": r["losses_step0"]}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()

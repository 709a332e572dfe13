"""Peak training memory of every memory lever, and the planner's estimates against measurements.

For one representative config (default: ResNet-50 FPN, 512 px short side, 2 images per step,
100 instances per image, COCO's 81 classes) this measures, each in a fresh process
(:func:`maskrcnn.planning.measure_peak`):

1. the base config and every setting of every lever (:func:`maskrcnn.planning.lever_settings`);
2. combinations of levers.

The peak model (:class:`maskrcnn.planning.PeakModel`) is fitted exactly as ``maskrcnn plan``
fits it: on the base and the *first* setting of each lever only. Every other setting and every
combination is held out: it is estimated first, then measured, and the relative error is reported
(the acceptance bar is 15 %). Finally ``plan_memory`` runs for a budget of 65 % of the base peak
(measurements reused from the cache).

Measurements are cached in a JSON file (``--cache``) so an interrupted run continues where it
stopped.

Results (CPU, AVX2, 1 thread, shared 2-core machine so step times are noisy; peak = VmHWM minus
the RSS after imports; 2 steps per measurement; ResNet-50 FPN v1, 512x683 px, batch 2, 100
instances, 81 classes): base 2.27 GiB (model 170 MiB), 71 s/step.

=============================================  =========  ========
setting                                        peak       saving
=============================================  =========  ========
gradient_checkpointing                         1.96 GiB   14 %
images_per_gpu 1 x grad_accumulation 2         1.75 GiB   23 %
amp bf16                                       (no bf16 units: > 15 min per step, timed out)
use_mini_mask (56x56)                          2.28 GiB   0 %
train_rois_per_image 256 / 128 / 64            1.86 / 1.66 / 1.61 GiB
max_gt_instances 50 / 25                       1.83 / 1.55 GiB
layers 3+ / 4+ / 5+ / heads                    2.03 / 1.86 / 1.71 / 1.63 GiB
aug_crop 384x512 / 256x352                     1.77 / 1.37 GiB
image_min/max_dim 416/544, 320/448, 256/352    2.04 / 1.81 / 1.66 GiB
=============================================  =========  ========

Estimates of the 17 held-out settings and combinations: mean error 5.7 %, 16 within 15 %, the
largest +18.8 % (checkpointing + mini-masks + 128 RoIs, an overestimate). On a lean ResNet-18
config (256 px, 64-channel mask head): mean 6.7 %, 16 of 17 within 15 %, the largest +31 %
(25 GT instances, an overestimate: positive RoIs fall below the sampling cap). ``maskrcnn plan``
measures every combination it shows, so these errors only affect which candidate it measures
next. Usage::

    python benchmarks/memory_levers.py                       # R50, 512 px, batch 2, CPU
    python benchmarks/memory_levers.py --backbone resnet18 --size 256 --threads 1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from maskrcnn.config import Config
from maskrcnn.planning import (
    LEVER_KEYS,
    Measurement,
    PeakModel,
    apply_state,
    batch_features,
    format_bytes,
    lever_settings,
    measure_peak,
    plan_memory,
    source_size,
    state_label,
)

COMBOS: list[dict[str, int]] = [
    {"checkpointing": 1, "rois": 1},
    {"micro_batch": 1, "checkpointing": 1},
    {"checkpointing": 1, "image_size": 1},
    {"rois": 1, "gt_instances": 1},
    {"frozen_stages": 1, "crop": 1},
    {"micro_batch": 1, "checkpointing": 1, "rois": 1},
    {"checkpointing": 1, "mini_masks": 1, "rois": 2},
    {"micro_batch": 1, "frozen_stages": 2, "image_size": 1},
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=512, help="image_min_dim (image_max_dim = 4/3 of it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--classes", type=int, default=81)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache", default=None, help="JSON file of measurements (default: /tmp/memory_levers_<name>.json)")
    p.add_argument("--no-combos", action="store_true")
    p.add_argument("--budget", type=float, default=0.65, help="plan budget as a fraction of the base peak (default 0.65: "
                                                                 "no single lever's first setting reaches it)")
    args = p.parse_args(argv)

    config = Config.create(backbone=args.backbone, num_classes=args.classes, image_min_dim=args.size,
                           image_max_dim=round(args.size * 4 / 3), images_per_gpu=args.batch,
                           max_gt_instances=args.instances, num_workers=0)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    name = f"{args.backbone}_{args.size}_b{args.batch}_g{args.instances}_{args.device}"
    cache_path = Path(args.cache or f"/tmp/memory_levers_{name}.json")
    cache: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    size = source_size(config)
    settings = lever_settings(config, args.device, args.instances, size)

    def measure(cfg: Config) -> Measurement:
        base, new = config.model_dump(), cfg.model_dump()
        key = json.dumps({k: new[k] for k in new if new[k] != base[k]}, sort_keys=True)
        if key not in cache:
            t = time.time()
            m = measure_peak(cfg, args.device, steps=args.steps, image_size=size, instances=args.instances,
                             threads=args.threads)
            cache[key] = m.to_dict()
            cache_path.write_text(json.dumps(cache, indent=1))
            print(f"  measured {key}: {format_bytes(m.peak)}, {m.step_seconds:.2f} s/step, {time.time() - t:.0f} s"
                  + (f" ({m.error})" if m.error else ""), file=sys.stderr, flush=True)
        return Measurement(**cache[key])

    print(f"# Memory levers: {args.backbone}, {size[0]}x{size[1]} px source images, {args.instances} instances, "
          f"batch {args.batch}, {args.device}, {args.steps} steps per measurement, {args.threads} thread(s)\n")
    base = measure(config)
    print(f"base peak {format_bytes(base.peak)} (model {format_bytes(base.model)}, trainable {format_bytes(base.trainable)}, "
          f"process after imports {format_bytes(base.overhead)}, padded batch {base.pixels} px per image, "
          f"{base.instances:.0f} instances per image), {base.step_seconds:.2f} s/step; method: {base.method}\n")

    # 1. every setting of every lever
    rows = []
    for key in LEVER_KEYS:
        for level, s in enumerate(settings.get(key, []), start=1):
            m = measure(apply_state(config, settings, {key: level}))
            rows.append((key, level, s, m))
    print("| lever | setting | peak | saving | % of base | s/step | accuracy cost |")
    print("|---|---|---:|---:|---:|---:|---|")
    print(f"| - | base config | {format_bytes(base.peak)} | - | 100% | {base.step_seconds:.2f} | - |")
    for key, level, s, m in rows:
        if m.peak is None:
            print(f"| {key} | {s.label} | failed | | | | {m.error} |")
            continue
        print(f"| {key} | {s.label} | {format_bytes(m.peak)} | {format_bytes(base.peak - m.peak)} | "
              f"{m.peak / base.peak:.0%} | {m.step_seconds:.2f} | {s.cost_note} |")

    # 2. the model fitted on the first settings only, checked on everything else
    probes = {key: (s, apply_state(config, settings, {key: 1}), m) for key, level, s, m in rows if level == 1}

    def feats(cfg: Config) -> dict[str, float]:
        return batch_features(cfg, size, args.instances)

    model = PeakModel(config, base, probes, feats)
    held_out = [{key: level} for key, level, _, _ in rows if level > 1]
    if not args.no_combos:
        held_out += [c for c in COMBOS if all(k in settings and v <= len(settings[k]) for k, v in c.items())]
    print("\n## Estimates (fitted on the base and the first setting of each lever) against measurements\n")
    print("| held-out configuration | estimated | measured | error | est. s/step | s/step |")
    print("|---|---:|---:|---:|---:|---:|")
    errors = []
    for st in held_out:
        cfg = apply_state(config, settings, st)
        est, est_t = model.estimate(cfg, st)
        m = measure(cfg)
        if m.peak is None:
            continue
        err = (est - m.peak) / m.peak
        errors.append(abs(err))
        print(f"| {state_label(settings, st)} | {format_bytes(est)} | {format_bytes(m.peak)} | {err:+.1%} | "
              f"{est_t:.2f} | {m.step_seconds:.2f} |")
    if errors:
        print(f"\nlargest error {max(errors):.1%}, mean {sum(errors) / len(errors):.1%} over {len(errors)} held-out "
              f"configurations ({sum(e <= 0.15 for e in errors)} within 15%)")

    # 3. the planner for a budget below every single lever's first setting
    frac = args.budget
    budget = int(base.peak * frac)
    print(f"\n## maskrcnn plan with a budget of {format_bytes(budget)} ({frac:.0%} of the base peak), headroom 0\n")
    plan = plan_memory(config, budget, args.device, headroom=0.0, steps=args.steps, image_size=size,
                       instances=args.instances, measure=measure,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print("```")
    print(plan.table())
    print("```")
    return 0 if not errors or max(errors) <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())

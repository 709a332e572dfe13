"""``maskrcnn demo [--out DIR] [--minutes M] [--seed S] [--quick]``: train and evaluate from scratch on the CPU.

Generates Matterport's synthetic shapes (500 training and 50 validation images, 128x128,
squares / circles / triangles), trains the lean model of the ``shapes_demo`` preset
(``maskrcnn/configs/shapes_demo.yaml``) from random weights with :func:`maskrcnn.engine.train`
until the time budget (``--minutes``, 6.5 by default) or the preset's 16 epochs run out,
evaluates it on the validation images (:func:`maskrcnn.evaluation.evaluate_model`: COCO mask
AP, plus Matterport's VOC mAP@0.5) and writes into ``--out``:

* ``metrics.json``: the headline numbers (mask AP50, VOC mAP@0.5, AP, box AP), steps, timings,
  CPU time, threads used, load average, seed and settings;
* ``report.json``, ``pr_*.png``, ``confusion_matrix.png``: the full evaluation report;
* ``metrics.jsonl`` and ``loss_curves.png``: training losses every 10 steps (the engine's records);
* ``overlays/val_XX.png``: validation images, ground truth left, predictions (score >= 0.5) right;
* ``model.safetensors``: the trained checkpoint (:func:`maskrcnn.weights.save_checkpoint`;
  ``maskrcnn detect --weights demo_out/model.safetensors`` uses it);
* ``config.yaml`` and ``checkpoints/``: the configuration that was trained and the engine's
  checkpoints.

Why it is fast enough (measured on 2 CPU cores shared with other jobs, load average 4-9, so
pessimistic): a ResNet-18 body of width 16 with a 32-channel FPN (1.0 M parameters), 32 RoIs and
64 anchors sampled per image, 14x14 masks, and AdamW (the preset's ``optimizer``): about 0.3 s
per step of 4 images with one thread. 6.5 minutes give 1100-1300 steps (9-11 epochs) and mask
AP50 0.95-0.96 (VOC mAP@0.5 0.97); the whole command takes about 7 minutes. At equal steps SGD
reached 0.65 where AdamW reached 0.94 (``benchmarks/demo_recipe.py`` has the experiments).

The training is the engine's (:func:`maskrcnn.engine.train`, the same step, schedule and time
budget as ``maskrcnn train``); the demo only keeps its samples prepared in memory
(:class:`PreparedSamples`, flips done on tensors), sets the time budget
(``Config.max_train_minutes``: the warmup + cosine schedule is fitted to whichever ends first,
the epochs or the budget), and passes the :class:`~maskrcnn.engine.ThreadTuning` hook, which
chooses 1 or 2 torch threads by the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..utils.files import atomic_write_text
from .args import non_negative_int, positive_float, positive_int

__all__ = [
    "add_parser",
    "run",
    "DemoSettings",
    "QUICK",
    "make_datasets",
    "train_demo",
    "run_demo",
]


@dataclass
class DemoSettings:
    """What the demo does besides the model configuration (the preset)."""

    train_images: int = 500
    val_images: int = 50
    image_size: int = 128
    minutes: float = 6.5
    """Training time budget in minutes (data generation and evaluation come on top, ~20-40 s)."""
    threads: int | None = None
    """CPU threads for torch; None: choose between 2 (or the core count) and 1 by timing training steps
    now and then (on a busy machine one thread is often several times faster than two)."""
    overlays: int = 8
    log_every: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields changed on top of the preset (experiments, ``--quick``)."""


#: ``--quick`` (tests): 192 steps of batch 4 on 96 images (~50 s on 2 busy cores; capped at
#: 1.5 min), enough to find and classify most single shapes (mask AP50 ~0.4 on 8 validation
#: images). A lower rate than the full run's: 3e-3 over so short a schedule mixes up the classes.
QUICK = DemoSettings(train_images=96, val_images=8, minutes=10.0, overlays=2, log_every=4,
                     overrides={"epochs": 8, "images_per_gpu": 4, "learning_rate": 0.0015, "warmup_iters": 10})


# ------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``demo``."""
    p = subparsers.add_parser(
        "demo",
        help="train a small model from scratch on synthetic shapes on the CPU, evaluate it, write overlays",
        description="Generate Matterport's synthetic shapes (500 train / 50 val, 128x128), train a lean Mask R-CNN "
                    "from scratch on the CPU within a time budget, evaluate it (COCO mask AP50, VOC mAP@0.5) and "
                    "write overlays, loss curves, metrics and the checkpoint to --out.",
    )
    p.add_argument("--out", "-o", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help=f"training time budget in minutes (default {DemoSettings.minutes:g}; evaluation adds ~30 s)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed of the data, the initial weights and the sampling (default: the preset's, 0)")
    p.add_argument("--quick", action="store_true", help="a short run on few images (about a minute; for tests)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: 2 or 1, whichever trains faster, re-checked every minute)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the shapes_demo preset, e.g. --set epochs=10 (repeatable)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo; print mask AP50, VOC mAP@0.5 and where the outputs are. 0 on success."""
    import yaml

    from ..config import ConfigError
    from ..configs import load_preset
    from ..utils.files import ensure_output_dir

    settings = DemoSettings(**{**asdict(QUICK), "overrides": dict(QUICK.overrides)}) if args.quick else DemoSettings()
    if args.minutes is not None:
        if not args.minutes > 0:
            raise ConfigError(f"--minutes {args.minutes}: must be > 0")
        settings.minutes = float(args.minutes)
    if args.threads is not None:
        settings.threads = max(1, int(args.threads))
    assignments = list(getattr(args, "overrides", None) or [])
    if assignments:
        load_preset("shapes_demo").with_overrides(assignments)  # one-line errors for bad keys or values
        for item in assignments:
            key, raw = item.split("=", 1)
            settings.overrides[key.strip()] = yaml.safe_load(raw)
    if args.seed is not None:
        settings.overrides["seed"] = int(args.seed)
    result = run_demo(settings, ensure_output_dir(args.out))
    m = result["metrics"]
    print(f"mask AP50 (COCO, {m['val_images']} validation images): {m['mask_ap50']:.4f}")
    print(f"VOC mAP@0.5 (masks, Matterport): {m['voc_map50']:.4f}")
    print(f"mask AP (COCO 0.5:0.95): {m['mask_ap']:.4f}   box AP50: {m['box_ap50']:.4f}")
    print(f"time: train {m['train_seconds']:.0f} s ({m['steps']} steps, {m['seconds_per_step']:.2f} s/step), "
          f"evaluation {m['eval_seconds']:.0f} s, total {m['total_seconds']:.0f} s")
    out = Path(args.out)
    print(f"outputs in {out}/: metrics.json, report.json, loss_curves.png, overlays/ ({len(result['overlays'])} PNG), "
          "model.safetensors, config.yaml")
    return 0


# ------------------------------------------------------------------------------------- data


def make_datasets(settings: DemoSettings, seed: int) -> tuple[Any, Any]:
    """Training and validation :class:`~maskrcnn.data.synthetic.ShapesDataset` (independent seeds)."""
    from ..data.synthetic import ShapesDataset

    s = settings.image_size
    train = ShapesDataset(settings.train_images, height=s, width=s, seed=2 * seed)
    val = ShapesDataset(settings.val_images, height=s, width=s, seed=2 * seed + 1)
    return train, val


def train_demo(model: Any, config: Any, samples: list, out: Path, settings: DemoSettings) -> dict[str, Any]:
    """Train ``model`` on the prepared ``samples`` with the engine into the run folder ``out``
    (``config.max_train_minutes`` is the budget); returns the training figures for ``metrics.json``."""
    import torch

    from ..data.prepared import PreparedSamples
    from ..engine import HookBase, ThreadTuning, train

    class Recorder(HookBase):
        """First and last total loss, CPU seconds of the training."""

        first_loss = last_loss = float("nan")
        cpu0 = cpu_seconds = 0.0

        def before_train(self) -> None:
            self.cpu0 = time.process_time()

        def after_step(self) -> None:
            loss = self.trainer.last_step.losses.get("loss", float("nan"))
            self.first_loss = loss if self.trainer.global_step == 1 else self.first_loss
            self.last_loss = loss

        def after_train(self) -> None:
            self.cpu_seconds = time.process_time() - self.cpu0

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.jsonl", "")  # the records of this run only
    tuning = ThreadTuning() if settings.threads is None else None
    if tuning is None:
        torch.set_num_threads(settings.threads)
    recorder = Recorder()
    result = train(config, PreparedSamples(samples, config.aug_hflip, config.seed), None, run_dir=out, model=model,
                   device="cpu", progress=False, tensorboard=False, log_every=settings.log_every, evaluate_fn=None,
                   hooks=[h for h in (tuning, recorder) if h is not None])
    model.eval()
    steps = result.global_step
    steps_per_epoch = max(1, -(-len(samples) // config.images_per_gpu))
    threads = tuning.tuner.summary() if tuning else f"{settings.threads} thread{'s' if settings.threads > 1 else ''}: {steps} steps"
    return {"steps": steps, "epochs": steps / steps_per_epoch, "seconds": result.train_seconds,
            "seconds_per_step": result.train_seconds / max(steps, 1), "first_loss": recorder.first_loss,
            "last_loss": recorder.last_loss, "stopped_by": "time budget" if result.budget_reached else "epochs",
            "cpu_seconds": recorder.cpu_seconds, "threads": threads, "thread_checks": tuning.tuner.checks if tuning else []}


# ------------------------------------------------------------------------------------- outputs


def _gt_detections(dataset: Any, image_id: int) -> Any:
    import numpy as np

    from ..data.augment import boxes_from_masks
    from ..inference.results import Detections

    masks, ids = dataset.load_mask(image_id)
    m = np.ascontiguousarray(np.moveaxis(masks, 2, 0))
    return Detections(boxes=boxes_from_masks(m.astype(np.uint8)), class_ids=ids.astype(np.int64),
                      scores=np.ones(len(ids), np.float32), masks=m, class_names=list(dataset.class_names),
                      image_size=m.shape[1:])


def _upscale(image: Any, det: Any, k: int) -> tuple[Any, Any]:
    import numpy as np

    from ..inference.results import Detections

    img = np.repeat(np.repeat(image, k, 0), k, 1)
    masks = np.repeat(np.repeat(det.masks, k, 1), k, 2) if len(det) else np.zeros((0,) + img.shape[:2], bool)
    return img, Detections(det.boxes * k, det.class_ids, det.scores, masks, det.class_names, img.shape[:2])


def write_overlays(dataset: Any, dets: list[Any], out_dir: Path, count: int, min_score: float = 0.5,
                   scale: int = 3) -> list[Path]:
    """``val_XX.png``: ground truth (left) and detections with score >= ``min_score`` (right)."""
    from PIL import Image, ImageDraw

    from ..inference.visualize import overlay

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("val_[0-9][0-9].png"):  # overlays of an earlier run in the same folder
        old.unlink()
    paths = []
    for k, image_id in enumerate([int(i) for i in dataset.image_ids][:count]):
        image = dataset.load_image(image_id)
        gi, gd = _upscale(image, _gt_detections(dataset, image_id), scale)
        pi, pd = _upscale(image, dets[k].filter(min_score), scale)
        left, right = overlay(gi, gd, by_class=True), overlay(pi, pd, by_class=True)
        head = 16
        canvas = Image.new("RGB", (left.width + right.width + 8, left.height + head), (255, 255, 255))
        canvas.paste(left, (0, head))
        canvas.paste(right, (left.width + 8, head))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 2), f"ground truth ({len(gd)})", fill=(0, 0, 0))
        draw.text((left.width + 12, 2), f"predictions, score >= {min_score:g} ({len(pd)})", fill=(0, 0, 0))
        path = out_dir / f"val_{k:02d}.png"
        canvas.save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------- the demo


def _metrics(report: dict[str, Any], stats: dict[str, Any], settings: DemoSettings, config: Any, n_params: int,
             train_images: int, val_images: int) -> dict[str, Any]:
    """The headline numbers, training figures and settings of ``metrics.json``."""
    segm, bbox = report["coco"]["segm"], report["coco"]["bbox"]
    return {
        "mask_ap50": float(segm["AP50"]), "voc_map50": float(report["voc_map50"]), "mask_ap": float(segm["AP"]),
        "mask_ap75": float(segm["AP75"]), "box_ap50": float(bbox["AP50"]), "box_ap": float(bbox["AP"]),
        "per_class_mask_ap": segm.get("per_class_AP"), "val_images": val_images, "train_images": train_images,
        "steps": stats["steps"], "epochs": round(stats["epochs"], 2), "stopped_by": stats["stopped_by"],
        "first_loss": stats["first_loss"], "last_loss": stats["last_loss"], "train_seconds": round(stats["seconds"], 1),
        "seconds_per_step": round(stats["seconds_per_step"], 3), "cpu_count": os.cpu_count(), "threads": stats["threads"],
        "train_cpu_seconds": round(stats["cpu_seconds"], 1), "thread_checks": stats["thread_checks"],
        "seed": config.seed, "settings": dict(asdict(settings)), "parameters": n_params,
    }


def run_demo(settings: DemoSettings, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Data, training, evaluation and outputs; returns ``{"metrics", "report", "overlays", "stats", ...}``."""
    import torch

    from ..configs import load_preset
    from ..data.prepared import prepare_samples
    from ..evaluation import evaluate_model, write_report
    from ..inference.predictor import Predictor
    from ..modeling import build_model
    from ..weights import save_checkpoint

    t_start = time.perf_counter()
    config = load_preset("shapes_demo").replace(max_train_minutes=settings.minutes)
    if settings.overrides:
        config = config.replace(**settings.overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    torch.set_num_threads(settings.threads or 1)  # small tensor ops: one thread is fastest
    train_ds, val_ds = make_datasets(settings, config.seed)
    samples = prepare_samples(train_ds, config)
    data_s = time.perf_counter() - t
    log(f"data: {len(samples)} training / {len(val_ds.image_ids)} validation synthetic images "
        f"({settings.image_size}x{settings.image_size}) in {data_s:.1f} s")

    torch.manual_seed(config.seed)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {config.backbone} width {config.backbone_width} + FPN {config.fpn_channels}, {n_params / 1e6:.2f} M parameters, "
        f"from scratch; {config.optimizer}, batch {config.images_per_gpu}, up to {config.epochs} epochs or "
        f"{config.max_train_minutes:g} min, threads: {settings.threads or 'auto (2 or 1)'}")
    load_before = os.getloadavg()
    stats = train_demo(model, config, samples, out, settings)
    load_after = os.getloadavg()
    log(f"trained {stats['steps']} steps ({stats['epochs']:.1f} epochs) in {stats['seconds']:.0f} s, "
        f"{stats['seconds_per_step']:.2f} s/step ({stats['threads']}), stopped by {stats['stopped_by']}; "
        f"loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}")

    ckpt = save_checkpoint(model, config, out / "model.safetensors",
                           {"steps": str(stats["steps"]), "trained_by": "maskrcnn demo"})
    t = time.perf_counter()
    report = evaluate_model(model, val_ds, batch_size=10)
    eval_s = time.perf_counter() - t
    write_report(report, out)
    shown = [int(i) for i in val_ds.image_ids][: settings.overlays]
    dets = Predictor(model, device="cpu").detect([val_ds.load_image(i) for i in shown], batch_size=10)
    overlays = write_overlays(val_ds, dets, out / "overlays", settings.overlays)
    curves = out / "loss_curves.png"
    metrics = _metrics(report, stats, settings, config, n_params, len(samples), len(val_ds.image_ids))
    metrics.update({
        "data_seconds": round(data_s, 1), "eval_seconds": round(eval_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_before_training": [round(x, 2) for x in load_before],
        "loadavg_after_training": [round(x, 2) for x in load_after],
        "outputs": {"checkpoint": str(ckpt), "loss_curves": str(curves) if curves.is_file() else None,
                    "overlays": [str(p) for p in overlays], "report": str(out / "report.json")},
    })
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return {"metrics": metrics, "report": report, "overlays": overlays, "stats": stats, "model": model,
            "config": config, "val_dataset": val_ds, "detections": dets}


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))

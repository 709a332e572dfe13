"""``maskrcnn demo [--out DIR] [--minutes M] [--seed S] [--quick]``: train and evaluate from scratch on the CPU.

Generates Matterport's synthetic shapes (500 training and 50 validation images, 128x128,
squares / circles / triangles), trains the lean model of the ``shapes_demo`` preset
(``maskrcnn/configs/shapes_demo.yaml``) from random weights until the time budget (``--minutes``,
6.5 by default) or the preset's 16 epochs run out, evaluates it on the validation images (COCO
mask AP through :mod:`maskrcnn.evaluation`, plus Matterport's VOC mAP@0.5) and writes into
``--out``:

* ``metrics.json``: the headline numbers (mask AP50, VOC mAP@0.5, AP, box AP), steps, timings,
  CPU time, threads used, load average, seed and settings;
* ``report.json``, ``pr_*.png``, ``confusion_matrix.png``: the full evaluation report;
* ``metrics.jsonl`` and ``loss_curves.png``: training losses every 10 steps;
* ``overlays/val_XX.png``: validation images, ground truth left, predictions (score >= 0.5) right;
* ``model.safetensors``: the trained checkpoint (:func:`maskrcnn.weights.save_checkpoint`;
  ``maskrcnn detect --weights demo_out/model.safetensors`` uses it);
* ``config.yaml``: the configuration that was trained.

Why it is fast enough (measured on 2 CPU cores shared with other jobs, load average 4-9, so
pessimistic): a ResNet-18 body of width 16 with a 32-channel FPN (1.0 M parameters), 32 RoIs and
64 anchors sampled per image, 14x14 masks, and AdamW: about 0.3 s per step of 4 images with one
thread. 6.5 minutes give 1100-1300 steps (9-11 epochs) and mask AP50 0.95-0.96 (VOC mAP@0.5
0.97); the whole command takes about 7 minutes. At equal steps SGD reached 0.65 where AdamW
reached 0.94 (``benchmarks/demo_recipe.py`` has the experiments).

The training loop is a small one kept here (see ``train_lean``) rather than
:func:`maskrcnn.engine.train`, which has no time budget and only SGD: the samples are prepared
once and kept in memory (flips are done on tensors), the learning rate follows a warmup +
cosine schedule over whichever ends first, the epochs or the time budget, and the number of
torch threads follows the machine's load (:class:`ThreadTuner`).
"""

from __future__ import annotations

import argparse
import json
import math
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
    "prepare_samples",
    "train_lean",
    "evaluate_model",
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
    optimizer: str = "adamw"
    """``adamw`` (``learning_rate`` is AdamW's rate) or ``sgd`` (momentum from the config)."""
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
    """Training and validation :class:`~maskrcnn.data.shapes.ShapesDataset` (independent seeds)."""
    from ..data.shapes import ShapesDataset

    s = settings.image_size
    train = ShapesDataset(settings.train_images, height=s, width=s, seed=2 * seed)
    val = ShapesDataset(settings.val_images, height=s, width=s, seed=2 * seed + 1)
    return train, val


def prepare_samples(dataset: Any, config: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Every sample of ``dataset`` through the data pipeline without augmentation, kept in memory."""
    from ..data.pipeline import SkippedSample, TrainingDataset

    td = TrainingDataset(dataset, config, train=False, seed=config.seed)
    out = []
    for i in range(len(td)):
        item = td[i]
        if isinstance(item, SkippedSample) or item is None:
            continue
        image, target = item
        if len(target["labels"]) == 0:
            continue
        out.append((image, target))
    return out


def _hflip(image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Mirror a prepared sample left-right (boxes follow: x1' = W - x2, x2' = W - x1)."""
    import torch

    w = image.shape[-1]
    t = dict(target)
    t["masks"] = target["masks"].flip(-1)
    b = target["boxes"]
    t["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    return image.flip(-1), t


# ------------------------------------------------------------------------------------- training


class ThreadTuner:
    """Trains with 1 torch thread or ``max_threads``, whichever is faster right now.

    On a machine shared with other busy processes, OpenMP threads that wait for each other can
    make a training step 10-30 times slower than one thread (measured: 15 s instead of 0.5 s);
    on an idle machine ``max_threads`` is faster. A whole training step is too expensive a probe,
    so the choice comes from a micro-benchmark (ten small convolutions with 1, ``max_threads``,
    then 1 thread again: ~40 ms on an idle machine, under a second on a busy one):
    ``max_threads`` is used when it is at least 25 % faster. The check runs before the first
    step, every ``every_s`` seconds while ``max_threads`` wins (the interval doubles, up to
    4 x ``every_s``, while it loses), and at once when a ``max_threads`` step takes over twice
    the recent median (someone else started working).
    """

    def __init__(self, max_threads: int, every_s: float = 20.0) -> None:
        import torch

        self.max_threads = max(1, int(max_threads))
        self.every_s = every_s
        self.interval = every_s
        self.current = 0
        self.times: list[float] = []
        self.steps = 0
        self.next_check = 0.0
        self.checks: list[tuple[int, int, float, float]] = []  # (step, threads chosen, ms 1 thread, ms max_threads)
        g = torch.Generator().manual_seed(0)
        self._x = torch.randn(2, 16, 64, 64, generator=g)
        self._w = torch.randn(16, 16, 3, 3, generator=g)
        self._set(1)

    def _set(self, n: int) -> None:
        import torch

        if n != self.current:
            self.current = n
            torch.set_num_threads(n)
            self.times.clear()

    def _bench(self, n: int, reps: int = 10) -> float:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(n)
        with torch.no_grad():
            F.conv2d(self._x, self._w, padding=1)
            t = time.perf_counter()
            for _ in range(reps):
                F.conv2d(self._x, self._w, padding=1)
            return time.perf_counter() - t

    def check(self) -> int:
        """Run the micro-benchmark and switch to the faster setting; returns the thread count."""
        if self.max_threads == 1:
            self._set(1)
            return 1
        t1 = self._bench(1)
        tn = self._bench(self.max_threads)
        t1 = min(t1, self._bench(1))
        best = self.max_threads if tn < 0.75 * t1 else 1
        self.current = 0  # force set_num_threads (the benchmark changed it)
        self._set(best)
        self.checks.append((self.steps, best, round(t1 * 1e3, 1), round(tn * 1e3, 1)))
        self.interval = self.every_s if best > 1 else min(2 * self.interval, 4 * self.every_s)
        self.next_check = time.perf_counter() + self.interval
        return best

    def update(self, seconds: float, now: float) -> None:
        """Record one training step of ``seconds`` ending at ``now`` (perf_counter); maybe re-check."""
        self.steps += 1
        hist = self.times
        hist.append(seconds)
        del hist[:-6]
        med = sorted(hist[:-1])[(len(hist) - 1) // 2] if len(hist) > 1 else float("inf")
        spike = self.current > 1 and len(hist) >= 4 and seconds > 2.0 * med
        if spike or now >= self.next_check:
            self.check()


@dataclass
class TrainStats:
    steps: int
    epochs: float
    seconds: float
    seconds_per_step: float
    first_loss: float
    last_loss: float
    stopped_by: str
    history: list[dict[str, float]]
    cpu_seconds: float = 0.0
    threads: str = ""
    thread_checks: list = field(default_factory=list)


def _lr_factor(config: Any, step: int, progress: float) -> float:
    warm = 1.0
    if step < config.warmup_iters:
        warm = config.warmup_factor + (1.0 - config.warmup_factor) * step / config.warmup_iters
    p = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    elif config.lr_schedule == "step":
        decay = config.lr_gamma ** sum(1 for f in config.lr_steps if p >= f)
    else:
        decay = 1.0
    return warm * decay


def build_optimizer(model: Any, config: Any, kind: str) -> Any:
    """AdamW or SGD over the engine's parameter groups (no weight decay on norms and biases)."""
    import torch

    from ..config import ConfigError
    from ..engine.optim import param_groups, scaled_learning_rate

    groups = param_groups(model, config.weight_decay)
    for g in groups:
        g.pop("names", None)
    lr = scaled_learning_rate(config)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ConfigError(f"optimizer {kind!r}: use adamw or sgd")


def train_lean(model: Any, config: Any, samples: list, *, budget_s: float, optimizer: str = "adamw",
               threads: int | None = None, log_every: int = 10, on_record: Callable[[dict[str, Any]], None] | None = None,
               log: Callable[[str], None] = print) -> TrainStats:
    """Train ``model`` on prepared ``samples`` for ``config.epochs`` epochs or ``budget_s`` seconds.

    The learning-rate schedule runs on ``progress = max(step / total_steps, elapsed / budget_s)``,
    so it completes (warmup, then ``config.lr_schedule``) whichever limit is reached first.
    Losses are weighted with ``config.loss_weights`` by the model's heads; the gradient norm is clipped at
    ``config.gradient_clip_norm``; flips with probability ``config.aug_hflip``. ``threads=None``
    tunes the torch thread count while training (:class:`ThreadTuner`).
    """
    import numpy as np
    import torch

    from ..engine.guard import NonFiniteLossError
    from ..engine.optim import select_trainable, set_train_mode
    from ..engine.trainer import LOSS_TERMS, unprefixed

    c = config
    torch.manual_seed(c.seed)
    rng = np.random.default_rng([c.seed, 1])
    select_trainable(model, c)
    set_train_mode(model, c.train_bn)
    opt = build_optimizer(model, c, optimizer)
    base_lrs = [g["lr"] for g in opt.param_groups]
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.ones(len(LOSS_TERMS))  # the heads apply Config.loss_weights
    bs = c.images_per_gpu
    n = len(samples)
    steps_per_epoch = max(1, math.ceil(n / bs))
    total_steps = c.epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    acc = torch.zeros(len(LOSS_TERMS) + 1)
    acc_n = 0
    first_loss = last_loss = float("nan")
    stopped_by = "epochs"
    step = 0
    if threads is None:
        tuner: ThreadTuner | None = ThreadTuner(max(1, min(2, os.cpu_count() or 1)))
        tuner.check()
    else:
        tuner = None
        torch.set_num_threads(threads)
    thread_steps: dict[int, int] = {}

    def flush(epoch: int, quiet: bool = False) -> None:
        nonlocal acc_n
        mean = (acc / acc_n).tolist()
        rec = {"type": "train", "epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
               "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t0, 2), "loss": mean[-1],
               **{k: mean[i] for i, k in enumerate(LOSS_TERMS)}}
        history.append(rec)
        if on_record is not None:
            on_record(rec)
        acc.zero_()
        acc_n = 0
        if len(history) % 5 == 0 and not quiet:
            log(f"step {step}/{total_steps} (epoch {epoch + 1}/{c.epochs}, {rec['seconds']:.0f} s): "
                f"loss {rec['loss']:.3f} (" + ", ".join(f"{k} {rec[k]:.3f}" for k in LOSS_TERMS) + f"), lr {rec['lr']:.2g}")

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for epoch in range(c.epochs):
        perm = rng.permutation(n)
        for b in range(steps_per_epoch):
            elapsed = time.perf_counter() - t0
            progress = max(step / total_steps, elapsed / budget_s)
            if progress >= 1.0:
                stopped_by = "time budget"
                break
            f = _lr_factor(c, step, progress)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            ts = time.perf_counter()
            images, targets = [], []
            for i in perm[b * bs:(b + 1) * bs]:
                image, target = samples[int(i)]
                if c.aug_hflip > 0 and rng.random() < c.aug_hflip:
                    image, target = _hflip(image, target)
                images.append(image)
                targets.append(target)
            losses = unprefixed(model(images, targets))
            terms = torch.stack([losses[k].float() for k in LOSS_TERMS])
            total = (terms * weights).sum()
            if not torch.isfinite(total):
                raise NonFiniteLossError(f"non-finite loss at step {step} ("
                                         + ", ".join(f"{k} {float(v):.4g}" for k, v in zip(LOSS_TERMS, terms))
                                         + f"); lower the learning rate, e.g. --set learning_rate={c.learning_rate / 3:.2g}",
                                         term="total", step=step)
            opt.zero_grad(set_to_none=True)
            total.backward()
            if c.gradient_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, c.gradient_clip_norm)
            opt.step()
            step += 1
            nt = torch.get_num_threads()
            thread_steps[nt] = thread_steps.get(nt, 0) + 1
            if tuner is not None:
                now = time.perf_counter()
                tuner.update(now - ts, now)
            value = float(total.detach())
            if step == 1:
                first_loss = value
            last_loss = value
            acc += torch.cat([terms.detach(), total.detach().view(1)])
            acc_n += 1
            if acc_n >= log_every:
                flush(epoch)
        else:
            continue
        break
    if acc_n:
        flush(epoch, quiet=True)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    model.eval()
    used = ", ".join(f"{n} thread{'s' if n > 1 else ''}: {k} steps" for n, k in sorted(thread_steps.items(), reverse=True))
    return TrainStats(steps=step, epochs=step / steps_per_epoch, seconds=seconds,
                      seconds_per_step=seconds / max(step, 1), first_loss=first_loss, last_loss=last_loss,
                      stopped_by=stopped_by, history=history, cpu_seconds=cpu, threads=used,
                      thread_checks=[] if tuner is None else tuner.checks)


# ------------------------------------------------------------------------------------- evaluation


def evaluate_model(model: Any, dataset: Any, batch_size: int = 10) -> tuple[dict[str, Any], list[Any]]:
    """(Evaluator report, detections per image) of ``model`` on ``dataset`` (all its images)."""
    from ..data.convert import dataset_to_coco
    from ..evaluation import Evaluator
    from ..inference.predictor import Predictor

    gt = dataset_to_coco(dataset)
    predictor = Predictor(model, device="cpu")
    evaluator = Evaluator(gt, iou_types=("bbox", "segm"))
    ids = [int(i) for i in dataset.image_ids]
    dets = predictor.detect([dataset.load_image(i) for i in ids], batch_size=batch_size)
    for image_id, det in zip(ids, dets):
        evaluator.add_arrays(image_id, det.boxes, det.scores, det.class_ids, det.masks)
    return evaluator.evaluate(), dets


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


def run_demo(settings: DemoSettings, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Data, training, evaluation and outputs; returns ``{"metrics", "report", "overlays", "stats", ...}``."""
    import torch

    from ..configs import load_preset
    from ..engine.logging import plot_loss_curves
    from ..evaluation import write_report
    from ..modeling import build_model
    from ..weights import save_checkpoint

    t_start = time.perf_counter()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    config = load_preset("shapes_demo")
    if settings.overrides:
        config = config.replace(**settings.overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")

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
        f"from scratch; {settings.optimizer}, batch {config.images_per_gpu}, up to {config.epochs} epochs or "
        f"{settings.minutes:g} min, threads: {settings.threads or 'auto (2 or 1)'}")
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")

    def record(rec: dict[str, Any]) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    load_before = os.getloadavg()
    stats = train_lean(model, config, samples, budget_s=settings.minutes * 60, optimizer=settings.optimizer,
                       threads=settings.threads, log_every=settings.log_every, on_record=record, log=log)
    load_after = os.getloadavg()
    log(f"trained {stats.steps} steps ({stats.epochs:.1f} epochs) in {stats.seconds:.0f} s, "
        f"{stats.seconds_per_step:.2f} s/step ({stats.threads}), stopped by {stats.stopped_by}; loss {stats.first_loss:.3f} -> {stats.last_loss:.3f}")

    ckpt = save_checkpoint(model, config, out / "model.safetensors",
                           {"steps": str(stats.steps), "trained_by": "maskrcnn demo"})
    t = time.perf_counter()
    report, dets = evaluate_model(model, val_ds)
    eval_s = time.perf_counter() - t
    write_report(report, out)
    overlays = write_overlays(val_ds, dets, out / "overlays", settings.overlays)
    curves = plot_loss_curves(metrics_path, out / "loss_curves.png")
    segm, bbox = report["coco"]["segm"], report["coco"]["bbox"]
    metrics = {
        "mask_ap50": float(segm["AP50"]),
        "voc_map50": float(report["voc_map50"]),
        "mask_ap": float(segm["AP"]),
        "mask_ap75": float(segm["AP75"]),
        "box_ap50": float(bbox["AP50"]),
        "box_ap": float(bbox["AP"]),
        "per_class_mask_ap": segm.get("per_class_AP"),
        "val_images": len(val_ds.image_ids),
        "train_images": len(samples),
        "steps": stats.steps,
        "epochs": round(stats.epochs, 2),
        "stopped_by": stats.stopped_by,
        "first_loss": stats.first_loss,
        "last_loss": stats.last_loss,
        "train_seconds": round(stats.seconds, 1),
        "seconds_per_step": round(stats.seconds_per_step, 3),
        "data_seconds": round(data_s, 1),
        "eval_seconds": round(eval_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_before_training": [round(x, 2) for x in load_before],
        "loadavg_after_training": [round(x, 2) for x in load_after],
        "cpu_count": os.cpu_count(),
        "threads": stats.threads,
        "train_cpu_seconds": round(stats.cpu_seconds, 1),
        "thread_checks": stats.thread_checks,
        "seed": config.seed,
        "settings": {k: v for k, v in asdict(settings).items()},
        "parameters": n_params,
        "outputs": {"checkpoint": str(ckpt), "loss_curves": None if curves is None else str(curves),
                    "overlays": [str(p) for p in overlays], "report": str(out / "report.json")},
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return {"metrics": metrics, "report": report, "overlays": overlays, "stats": stats, "model": model,
            "config": config, "val_dataset": val_ds, "detections": dets}


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))

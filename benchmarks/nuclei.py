"""Real-data benchmark: Mask R-CNN trained from scratch on nuclei (DSB 2018) within a wall-clock budget.

    .venv/bin/python benchmarks/nuclei.py --data ../shared/data/nuclei --minutes 30 \\
        [--threads 2] [--seed 0] [--json out.json] [--only ours|peer]

Trains, each for ``--minutes`` of wall-clock time, on ``train/`` (128 images, 5,659 nuclei) and
evaluates on ``val/`` (32 images) with the same metric code (:class:`maskrcnn.evaluation.Evaluator`:
COCO mask AP / AP50 / AP75, box AP, and the DSB 2018 score on predictions with score >= 0.5):

* ``ours``: this project's model and trainer (:func:`maskrcnn.engine.Trainer`) with the shipped
  ``nuclei`` preset (``maskrcnn/configs/nuclei.yaml``: ResNet-18 at half width, AdamW, per-image
  normalisation with bright images inverted), evaluated by
  :func:`maskrcnn.evaluation.evaluate_model` (the ``maskrcnn evaluate`` path).
* ``peer``: torchvision's recipe as its reference scripts run it: ``maskrcnn_resnet50_fpn(weights=None,
  weights_backbone=None, num_classes=2)`` with the ResNet depth of ours (:func:`build_peer`) (BatchNorm trained, as torchvision builds it without
  weights), its own transform (min_size 800, max_size 1333), SGD lr 0.02 * batch / 16, momentum
  0.9, weight decay 1e-4 on every parameter, linear warmup from 0.001 over min(1000, iterations
  per epoch - 1) iterations, the 26-epoch schedule's x0.1 steps at epochs 16 and 22 placed at the
  same fractions (16/26, 22/26) of the time budget, horizontal flips, batch 2. Its soft masks are
  thresholded at >= 0.5 and fed to the same :class:`~maskrcnn.evaluation.Evaluator`.

``ours`` trains with the engine's own wall-clock budget (``Config.max_train_minutes``, what
``maskrcnn train --minutes M`` sets): after every step the learning-rate schedule is re-fitted to
the steps the remaining time allows and the run ends after the step that ends closest to the
budget (:mod:`maskrcnn.engine.budget`). The peer's loop uses the same rule (its :class:`TimeBudget`).
Model building counts in both budgets; evaluation time is reported separately. Both data sets are
read from disk once and kept in memory (:class:`MemoryDataset`: images and a label image per
picture), so neither model pays for re-decoding the 5,659 mask PNGs each epoch (~30 s per pass
on 2 cores).

Prints a table of both models (steps, images/s, seconds per step, train and evaluation time,
mask AP / AP50 / AP75, box AP, DSB score) and writes it with the settings, machine and load
average to ``--json``. ``--set KEY=VALUE`` changes a preset field of ours (experiments);
``--results FILE`` appends one JSON line per model (experiment logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from maskrcnn.config import Config
from maskrcnn.data.dataset import Dataset
from maskrcnn.engine.budget import TimeBudget

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table  # noqa: E402

PEER_BATCH = 2
PEER_MIN_SIZE, PEER_MAX_SIZE = 800, 1333


# ============================================================================== data
class MemoryDataset(Dataset):
    """A prepared dataset whose images and masks are read once and then served from memory.

    Keeps the registry of ``source`` (classes, image infos, ids, references). Masks are kept as
    one label image per picture (``uint16``, instance ``k`` = value ``k + 1``) when they do not
    overlap (nuclei do not), else as bit-packed stacks; ``load_mask`` rebuilds the ``[H, W, N]``
    bool stack in the source's order, so samples are identical to the source's.
    """

    def __init__(self, source: Dataset) -> None:
        super().__init__()
        self.__dict__.update(source.__dict__)
        self.source_type = type(source).__name__
        self._images: dict[int, np.ndarray] = {}
        self._labels: dict[int, tuple[str, np.ndarray, int, np.ndarray]] = {}
        for i in source.image_ids:
            i = int(i)
            self._images[i] = np.ascontiguousarray(source.load_image(i))
            masks, class_ids = source.load_mask(i)
            masks = np.asarray(masks, dtype=bool)
            n = masks.shape[2]
            if n < 65535 and (n == 0 or masks.sum(axis=2, dtype=np.int32).max() <= 1):
                label = np.zeros(masks.shape[:2], dtype=np.uint16)
                for k in range(n):
                    label[masks[:, :, k]] = k + 1
                self._labels[i] = ("label", label, n, np.asarray(class_ids))
            else:
                self._labels[i] = ("packed", np.packbits(masks, axis=2), n, np.asarray(class_ids))

    def load_image(self, image_id: int) -> np.ndarray:
        return self._images[int(image_id)]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        kind, data, n, class_ids = self._labels[int(image_id)]
        if kind == "label":
            masks = data[:, :, None] == np.arange(1, n + 1, dtype=np.uint16)
        else:
            masks = np.unpackbits(data, axis=2, count=n).astype(bool)
        return masks, class_ids.copy()

    def instance_count(self) -> int:
        return int(sum(self._labels[int(i)][2] for i in self.image_ids))


def subset(ds: MemoryDataset, n: int) -> MemoryDataset:
    """The first ``n`` images of ``ds`` (quick checks)."""
    import copy

    out = copy.copy(ds)
    out.image_info = ds.image_info[:n]
    out.num_images = len(out.image_info)
    out._image_ids = np.arange(out.num_images)
    return out


def load_split(root: Path, split: str) -> MemoryDataset:
    from maskrcnn.data.formats import load_dataset

    return MemoryDataset(load_dataset(root / split))


# ============================================================================== timing
def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# ============================================================================== ours
def run_ours(config: Config, train_ds: Dataset, val_ds: Dataset, budget_s: float, run_dir: Path,
             label: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Train with the engine exactly as ``maskrcnn train --minutes M`` does, then evaluate."""
    from maskrcnn.engine import Trainer
    from maskrcnn.evaluation import evaluate_model
    from maskrcnn.inference.predictor import Predictor
    from maskrcnn.modeling import build_model

    # the budget decides the length (Config.max_train_minutes): many epochs, no validation between them
    config = config.replace(epochs=100_000, validate_every=0, max_train_minutes=budget_s / 60)
    load_before = _loadavg()
    start = time.perf_counter()
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(config, train_ds, None, out_dir=run_dir.parent, run_dir=run_dir, model=model,
                      evaluate_fn=None, progress=False, tensorboard=False, log_every=10)
    result = trainer.fit()
    train_s = time.perf_counter() - start
    load_after = _loadavg()
    log(f"[{label}] trained {result.global_step} steps in {train_s:.0f} s (model build, steps and the final checkpoint)")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_loss = next((r["loss"] for r in reversed(records) if r.get("type") == "train"), None)
    images = result.global_step * config.images_per_gpu * config.grad_accumulation

    model = trainer.module
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():  # crop-trained: detects per the config's inference_resize_mode (pad64)
        report = evaluate_model(Predictor(model, device="cpu"), val_ds, batch_size=2)
    eval_s = time.perf_counter() - t0
    return _row(label, config, n_params, result.global_step, images, trainer.budget.step_times, train_s, eval_s, report,
                len(train_ds.image_ids), load_before, load_after, last_loss)


# ============================================================================== peer
def _peer_sample(ds: Dataset, image_id: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """torchvision's reference preprocessing: the image as float [0, 1], boxes from the masks, hflip 0.5."""
    from maskrcnn.data.augment import boxes_from_masks
    from maskrcnn.data.images import to_float_tensor

    image = to_float_tensor(ds.load_image(image_id))
    masks, _ = ds.load_mask(image_id)
    masks = np.ascontiguousarray(np.moveaxis(masks, 2, 0))
    masks = masks[masks.any(axis=(1, 2))]
    if rng.random() < 0.5:
        image = image.flip(-1)
        masks = np.ascontiguousarray(masks[:, :, ::-1])
    boxes = boxes_from_masks(masks)
    target = {"boxes": torch.from_numpy(boxes).float(), "labels": torch.ones(len(masks), dtype=torch.int64),
              "masks": torch.from_numpy(masks.astype(np.uint8))}
    return image, target


def build_peer(depth: str) -> torch.nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)``;
    for another ResNet depth, exactly what that builder does with it: ``resnet_fpn_backbone`` with
    all 5 stages trainable and BatchNorm trained (the builder's choice without weights)."""
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if depth == "resnet50":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                     min_size=PEER_MIN_SIZE, max_size=PEER_MAX_SIZE)
    backbone = resnet_fpn_backbone(backbone_name=depth, weights=None, norm_layer=torch.nn.BatchNorm2d, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=2, min_size=PEER_MIN_SIZE, max_size=PEER_MAX_SIZE)


def run_peer(train_ds: Dataset, val_ds: Dataset, budget_s: float, seed: int, log: Callable[[str], None],
             max_steps: int | None = None, depth: str = "resnet50") -> dict[str, Any]:
    import torchvision

    from maskrcnn.evaluation import Evaluator
    from maskrcnn.data.convert import dataset_to_coco
    from maskrcnn.data.images import to_float_tensor

    label = "peer"
    load_before = _loadavg()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clock = TimeBudget(budget_s, max_steps=max_steps)
    model = build_peer(depth)
    n_params = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = 0.02 * PEER_BATCH / 16
    opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    ids = [int(i) for i in train_ds.image_ids]
    iters_per_epoch = math.ceil(len(ids) / PEER_BATCH)
    warmup_iters = min(1000, iters_per_epoch - 1)
    warmup_factor = 1.0 / 1000
    milestones = (16 / 26, 22 / 26)
    model.train()
    step, images_seen, last_loss = 0, 0, None
    stop = False
    epoch = 0
    while not stop:
        order = rng.permutation(len(ids))
        for b in range(0, len(order), PEER_BATCH):
            t0 = time.perf_counter()
            factor = 1.0
            if epoch == 0 and step < warmup_iters:  # LinearLR(start_factor=1/1000, total_iters=warmup_iters)
                alpha = step / warmup_iters
                factor = warmup_factor * (1 - alpha) + alpha
            progress = len(clock.step_times) / max_steps if max_steps else clock.elapsed / clock.seconds
            factor *= 0.1 ** sum(progress >= m for m in milestones)
            for g in opt.param_groups:
                g["lr"] = base_lr * factor
            batch = [_peer_sample(train_ds, ids[k], rng) for k in order[b:b + PEER_BATCH]]
            images = [x for x, _ in batch]
            targets = [t for _, t in batch]
            losses = model(images, targets)
            loss = sum(losses.values())
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise RuntimeError(f"peer: loss is {last_loss} at step {step}; {({k: float(v.detach()) for k, v in losses.items()})}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            images_seen += len(images)
            clock.step_done(time.perf_counter() - t0)
            train_s = clock.elapsed
            if step % 10 == 0 or step <= 3:
                log(f"[peer] step {step}, loss {last_loss:.4f} ({', '.join(f'{k} {float(v.detach()):.3f}' for k, v in losses.items())}), "
                    f"lr {base_lr * factor:.3g}, {clock.step_seconds():.2f} s/step, {clock.elapsed:.0f} s")
            if clock.exhausted():
                stop = True
                break
        epoch += 1
    load_after = _loadavg()
    log(f"[peer] trained {step} steps in {train_s:.0f} s")

    model.eval()
    t0 = time.perf_counter()
    val_ids = [int(i) for i in val_ds.image_ids]
    evaluator = Evaluator(dataset_to_coco(val_ds, val_ids), None, score_threshold=0.5)
    with torch.no_grad():
        for s in range(0, len(val_ids), 2):
            chunk = val_ids[s:s + 2]
            outs = model([to_float_tensor(val_ds.load_image(i)) for i in chunk])
            for image_id, o in zip(chunk, outs):
                masks = (o["masks"][:, 0] >= 0.5).numpy() if len(o["masks"]) else np.zeros((0, *val_ds.load_image(image_id).shape[:2]), bool)
                evaluator.add_arrays(image_id, o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(), masks)
    report = evaluator.evaluate()
    eval_s = time.perf_counter() - t0
    row = _row(label, None, n_params, step, images_seen, clock.step_times, train_s, eval_s, report, len(ids), load_before, load_after, last_loss)
    row["model"] = (f"torchvision MaskRCNN {depth}-FPN (the maskrcnn_resnet50_fpn recipe), {PEER_MIN_SIZE}/{PEER_MAX_SIZE} resize, "
                    f"batch {PEER_BATCH}")
    return row


# ============================================================================== report
def _row(label: str, config: Config | None, n_params: int, steps: int, images: int, times: list[float], train_s: float,
         eval_s: float, report: dict[str, Any], n_train: int, load_before: Any, load_after: Any, last_loss: float | None) -> dict[str, Any]:
    segm, bbox = report["coco"]["segm"], report["coco"]["bbox"]
    model = None
    if config is not None:
        model = (f"ours {config.backbone}" + (f" w{config.backbone_width}" if config.backbone_width != 64 else "")
                 + f" {config.architecture}, FPN {config.fpn_channels}, {config.image_resize_mode} {config.image_min_dim}"
                 + (f" x{config.image_min_scale:g}" if config.image_min_scale else "") + f", batch {config.images_per_gpu}")
    return {
        "name": label,
        "model": model,
        "params_m": n_params / 1e6,
        "steps": steps,
        "images": images,
        "epochs": images / max(1, n_train),
        "train_s": train_s,
        "s_per_step": train_s / max(1, steps),
        "median_s_per_step": statistics.median(times) if times else float("nan"),
        "images_per_s": images / max(train_s, 1e-9),
        "eval_s": eval_s,
        "mask_ap": float(segm["AP"]),
        "mask_ap50": float(segm["AP50"]),
        "mask_ap75": float(segm["AP75"]),
        "box_ap": float(bbox["AP"]),
        "box_ap50": float(bbox["AP50"]),
        "dsb": float(report["dsb_score"]),
        "predictions": int(report["num_predictions"]),
        "last_loss": last_loss,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


COLUMNS = [("name", "model", "s"), ("params_m", "params M", ".1f"), ("steps", "steps", "d"), ("epochs", "epochs", ".1f"),
           ("s_per_step", "s/step", ".2f"), ("images_per_s", "img/s", ".2f"), ("train_s", "train s", ".0f"),
           ("eval_s", "eval s", ".0f"), ("mask_ap", "mask AP", ".3f"), ("mask_ap50", "AP50", ".3f"),
           ("mask_ap75", "AP75", ".3f"), ("box_ap", "box AP", ".3f"), ("dsb", "DSB", ".3f")]


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    return None


def machine_info(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"threads": threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    with contextlib.suppress(Exception):
        import torchvision

        info["torchvision"] = torchvision.__version__
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    return info


# ============================================================================== main
def preset_file() -> Path:
    """The shipped ``nuclei`` preset (``maskrcnn/configs/nuclei.yaml``)."""
    import maskrcnn.configs

    return Path(maskrcnn.configs.__file__).resolve().parent / "nuclei.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/nuclei", help="folder with train/ and val/ in the Kaggle layout")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--only", choices=["ours", "peer"], default=None)
    p.add_argument("--config", default=None, help="our config YAML (default: the shipped nuclei preset)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="change a field of our config")
    p.add_argument("--out", default="/tmp/nuclei_bench", help="run directories of our trainer go here")
    p.add_argument("--max-val", type=int, default=None, help="checks: evaluate on the first N validation images only")
    p.add_argument("--steps", type=int, default=None, help="checks: the peer trains this many steps instead of --minutes")
    p.add_argument("--tag", default="run")
    p.add_argument("--results", default=None, help="append one JSON line per model to this file")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    root = Path(a.data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        print(f"{root}: expected train/ and val/ folders (the nuclei data set, see ../shared/data/nuclei/README.md)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    config = Config.from_yaml(a.config or preset_file())
    config = config.with_overrides(a.sets).replace(seed=a.seed)

    t0 = time.perf_counter()
    train_ds, val_ds = load_split(root, "train"), load_split(root, "val")
    if a.max_val:
        val_ds = subset(val_ds, a.max_val)
    data_s = time.perf_counter() - t0
    log(f"data: {len(train_ds.image_ids)} train images ({train_ds.instance_count()} instances), "
        f"{len(val_ds.image_ids)} val images ({val_ds.instance_count()} instances), read into memory in {data_s:.1f} s")

    which = [a.only] if a.only else ["ours", "peer"]
    budget = a.minutes * 60
    rows = []
    for name in which:
        log(f"{name}: training for {a.minutes:g} min (load average {_loadavg()})")
        torch.manual_seed(a.seed)
        if name == "peer":
            row = run_peer(train_ds, val_ds, budget, a.seed, log, a.steps, depth=config.backbone)
        else:
            cfg = config
            run_dir = Path(a.out) / f"{a.tag}_{name}_{time.strftime('%Y%m%d-%H%M%S')}"
            row = run_ours(cfg, train_ds, val_ds, budget, run_dir, name, log)
            row["config"] = {k: v for k, v in cfg.model_dump().items() if v != Config.model_fields[k].default}
        log(f"{name}: mask AP {row['mask_ap']:.4f}, AP50 {row['mask_ap50']:.4f}, DSB {row['dsb']:.4f}, "
            f"{row['steps']} steps, {row['s_per_step']:.2f} s/step, eval {row['eval_s']:.0f} s")
        rows.append(row)
        if a.results:
            Path(a.results).parent.mkdir(parents=True, exist_ok=True)
            with open(a.results, "a") as f:
                f.write(json.dumps({"tag": a.tag, "minutes": a.minutes, "threads": a.threads, "seed": a.seed,
                                    "sets": a.sets, **row}) + "\n")

    print()
    print(format_table(rows, COLUMNS))
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "minutes_per_model": a.minutes,
        "seed": a.seed,
        "commit": _git_commit(),
        "machine": machine_info(a.threads),
        "data": {"train_images": len(train_ds.image_ids), "train_instances": train_ds.instance_count(),
                 "val_images": len(val_ds.image_ids), "val_instances": val_ds.instance_count(), "read_s": data_s},
        "rows": rows,
    }
    print(json.dumps({"rows": [{k: r[k] for k, _, _ in COLUMNS} for r in rows]}))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

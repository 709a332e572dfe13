"""The Ultralytics YOLO segmentation peers of ``benchmarks/nuclei.py`` (``yolo11n-seg``, ``yolo26s-seg``, ...).

Ultralytics is AGPL-3.0: a benchmark-only dependency (``pip install 'maskrcnn[bench-peers]'``),
imported here (inside :func:`run_yolo` and the writer, not at module import) and nowhere in
``src/``. Importing it patches PIL's image opening for the whole process (a HEIF opener), so the
benchmark reads its data before the first YOLO peer runs.

* **Data**: the same train and val images written once to a temporary YOLO-seg folder
  (:func:`write_yolo_dataset`: PNG images, one polygon per nucleus from its mask by Ultralytics' own
  rule, ``ultralytics.utils.ops.masks2segments(strategy="largest")``; a mask too small for a
  3-point contour is left out and counted).
* **Model**: built from the package's YAML (``yolo11n-seg.yaml``: random weights, nothing loaded),
  trained with Ultralytics' own trainer and defaults (optimizer ``auto``, its augmentation with
  mosaic, nominal batch 64 by gradient accumulation, EMA) except: ``imgsz`` 640 (the long side;
  the train images are 256-696 px, so 640 gives them a mean upscaling of 2.05x, the scale of our
  preset's 2x), ``batch`` 8, ``flipud`` 0.5 (microscopy has no up; our preset flips both ways),
  ``cache="ram"`` (images decoded once, as our in-memory datasets), ``workers`` = our preset's
  loader processes, ``amp=False`` (CPU), ``plots=False``, ``val=False`` (its own validation after
  the last epoch runs on 2 images only, so it costs almost nothing of the budget).
* **Budget**: its ``time=`` argument (hours; after each epoch it re-fits the epoch count and the
  LR schedule to the time left) plus a callback that ends training after the batch that ends
  closest to the budget (:class:`~maskrcnn.engine.budget.TimeBudget`, the rule of our engine,
  counted from its first batch on as our engine counts from its first step). ``train s`` in the
  row is all of ``model.train`` (model build, its setup, the steps, saving).
* **Offline**: ``YOLO_OFFLINE=true``, ``YOLO_AUTOINSTALL=false`` and a private ``YOLO_CONFIG_DIR``, set
  before ``ultralytics`` is imported; settings ``sync=False``; a font staged as ``Arial.ttf`` in its
  settings folder (matplotlib's DejaVu Sans: its dataset check looks the font up there before
  trying to download it). Checked by running with every socket connection refused (no attempt).
* **Scoring**: the last checkpoint (``last.pt``, EMA weights) predicts every val image at the same
  ``imgsz`` with ``retina_masks=True`` (masks at the original image size), ``conf=0.001`` (its
  validation default), ``iou`` and ``max_det`` of our preset (NMS 0.3, 400 detections); the masks,
  boxes and scores go to our :class:`~maskrcnn.evaluation.Evaluator`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskrcnn.config import Config
from maskrcnn.data.dataset import Dataset
from maskrcnn.engine.budget import TimeBudget

from nuclei_common import Predictions, evaluate_predictions, loadavg, make_row

__all__ = ["YOLO_NAME", "is_yolo", "offline_environment", "stage_font", "write_yolo_dataset", "run_yolo", "YOLO_IMGSZ"]

#: peer names: ``yolo<family><size>-seg``, e.g. ``yolo11n-seg`` (a model YAML the package ships)
YOLO_NAME = re.compile(r"^yolo(v8|11|12|26)[nslmx]-seg$")
YOLO_IMGSZ = 640
YOLO_BATCH = 8
VAL_CHECK_IMAGES = 2  # its own end-of-training validation runs on these only


def is_yolo(name: str) -> bool:
    return bool(YOLO_NAME.match(name))


def offline_environment(config_dir: Path) -> None:
    """Ultralytics' settings for working without a network (see the module doc); call before importing it."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update({"YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false", "YOLO_CONFIG_DIR": str(config_dir),
                       "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "false")})


def stage_font() -> Path:
    """matplotlib's DejaVu Sans as ``Arial.ttf`` in Ultralytics' settings folder (``YOLO_CONFIG_DIR/Ultralytics``),
    where its dataset check looks for the font before trying to download it."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    target = Path(USER_CONFIG_DIR) / "Arial.ttf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", target)
    return target


def _write_split(ds: Dataset, images: Path, labels: Path, ids: list[int]) -> tuple[dict[int, Path], int]:
    from PIL import Image
    from ultralytics.utils.ops import masks2segments

    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    paths, dropped = {}, 0
    for i in ids:
        image = np.asarray(ds.load_image(i))
        h, w = image.shape[:2]
        path = images / f"{i:05d}.png"
        Image.fromarray(image).save(path)
        paths[i] = path
        masks, _ = ds.load_mask(i)
        lines = []
        for seg in masks2segments(np.moveaxis(np.asarray(masks, dtype=np.uint8), 2, 0), strategy="largest"):
            if len(seg) < 3:
                dropped += 1
                continue
            lines.append("0 " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in seg))
        (labels / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return paths, dropped


def write_yolo_dataset(train_ds: Dataset, val_ds: Dataset, folder: Path) -> tuple[Path, dict[int, Path], int]:
    """The data in Ultralytics' YOLO-seg layout under ``folder``: ``images/{train,val,valcheck}``,
    ``labels/...`` and ``data.yaml`` (one class, ``nucleus``; ``valcheck``: the first
    :data:`VAL_CHECK_IMAGES` val images, for its end-of-training validation). Returns the YAML,
    the val images' paths by image id and the number of masks left out (no 3-point contour)."""
    import yaml

    _, dropped = _write_split(train_ds, folder / "images" / "train", folder / "labels" / "train",
                              [int(i) for i in train_ds.image_ids])
    val_ids = [int(i) for i in val_ds.image_ids]
    val_paths, dropped_val = _write_split(val_ds, folder / "images" / "val", folder / "labels" / "val", val_ids)
    _write_split(val_ds, folder / "images" / "valcheck", folder / "labels" / "valcheck", val_ids[:VAL_CHECK_IMAGES])
    data = folder / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(folder), "train": "images/train", "val": "images/valcheck",
                                    "names": {0: "nucleus"}}))
    return data, val_paths, dropped + dropped_val


class _BudgetCallback:
    """Counts the batches (when they start: its own time stop may end a batch without the end
    callback) and their durations; stops the trainer when the next batch would not fit."""

    def __init__(self, clock: TimeBudget, threads: int) -> None:
        self.clock, self.threads = clock, threads
        self.batches = 0
        self.images = 0
        self._t0: float | None = None

    def train_start(self, trainer: Any) -> None:
        import torch

        # its device selection sets torch to cpu_count - 1 threads (1 on 2 cores): every model here
        # trains with the benchmark's --threads
        torch.set_num_threads(self.threads)
        self.clock.start()  # as the engine's budget: from the first step on, after the setup

    def batch_start(self, trainer: Any) -> None:
        self._t0 = time.perf_counter() if self._t0 is None else self._t0
        self.batches += 1
        self.images += int(getattr(trainer, "batch_size", YOLO_BATCH))

    def batch_end(self, trainer: Any) -> None:
        now = time.perf_counter()
        self.clock.step_done(now - (self._t0 if self._t0 is not None else now))
        self._t0 = now  # the next batch's time includes its loading, as the engine's steps
        if self.clock.exhausted():
            trainer.stop = True


def run_yolo(name: str, config: Config, train_ds: Dataset, val_ds: Dataset, budget_s: float, work: Path,
             log: Callable[[str], None], max_steps: int | None = None, imgsz: int = YOLO_IMGSZ,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train Ultralytics ``name`` (e.g. ``yolo11n-seg``) from its YAML for ``budget_s`` seconds (or
    ``max_steps`` batches) on CPU in ``work`` and score it with our Evaluator (see the module doc).
    ``extra``: more of its train arguments (experiments)."""
    offline_environment(work / "yolo_config")
    import torch

    try:
        from ultralytics import YOLO, settings
    except ImportError:
        raise SystemExit(f"{name}: needs the ultralytics package: pip install 'maskrcnn[bench-peers]'") from None
    settings.update({"sync": False})
    stage_font()

    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    data, val_paths, dropped = write_yolo_dataset(train_ds, val_ds, work / "data")
    log(f"[{name}] YOLO-seg data written in {time.perf_counter() - t0:.0f} s ({dropped} masks without a 3-point contour left out)")

    load_before = loadavg()
    wall0 = time.perf_counter()
    clock = TimeBudget(budget_s, max_steps=max_steps)
    model = YOLO(f"{name}.yaml", task="segment")
    n_params = sum(p.numel() for p in model.model.parameters())
    budget_cb = _BudgetCallback(clock, threads)
    model.add_callback("on_train_start", budget_cb.train_start)
    model.add_callback("on_train_batch_start", budget_cb.batch_start)
    model.add_callback("on_train_batch_end", budget_cb.batch_end)
    args = dict(data=str(data), epochs=1000, time=budget_s / 3600, imgsz=imgsz, batch=YOLO_BATCH, device="cpu",
                workers=config.num_workers, amp=False, plots=False, val=False, cache="ram", flipud=0.5,
                seed=config.seed, project=str(work / "runs"), name=name, exist_ok=True, verbose=False)
    args.update(extra or {})
    model.train(**args)
    torch.set_num_threads(threads)  # it may change the thread count; scoring runs at the benchmark's
    train_s = time.perf_counter() - wall0  # model build, its setup, the steps, its last validation and saving
    load_after = loadavg()
    trainer = model.trainer
    tloss = getattr(trainer, "tloss", None)  # mean loss terms of the last epoch (a dict in 8.4)
    last_loss = float(sum(float(v) for v in tloss.values())) if isinstance(tloss, dict) else None
    log(f"[{name}] trained {budget_cb.batches} batches ({budget_cb.images} images, {trainer.epoch + 1} epochs) "
        f"in {train_s:.0f} s")

    last = YOLO(str(trainer.last), task="segment")

    def predict(chunk: list[int]) -> list[Predictions]:
        out = []
        for r in last.predict(source=[str(val_paths[i]) for i in chunk], imgsz=imgsz, conf=0.001,
                              iou=config.detection_nms_threshold, max_det=config.detection_max_instances,
                              retina_masks=True, device="cpu", verbose=False):
            boxes = r.boxes.xyxy.numpy().astype(np.float64)
            masks = (r.masks.data.numpy() > 0.5) if r.masks is not None else np.zeros((0, *r.orig_shape), bool)
            if masks.shape[1:] != tuple(r.orig_shape):
                raise RuntimeError(f"{name}: masks of {masks.shape[1:]} for an image of {r.orig_shape}")
            out.append((boxes, r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(np.int64) + 1, masks))
        return out

    report, eval_s = evaluate_predictions(val_ds, predict)
    row = make_row(name, None, n_params, budget_cb.batches, budget_cb.images, clock.step_times, train_s, eval_s, report,
                   len(train_ds.image_ids), load_before, load_after, last_loss)
    row["model"] = (f"Ultralytics {name} from its YAML (random init), imgsz {imgsz}, batch {args['batch']}, "
                    f"its trainer and augmentation")
    row["yolo_args"] = {k: v for k, v in args.items() if k not in ("data", "project")}
    row["masks_left_out"] = dropped
    return row

"""Real-data benchmark: Mask R-CNN trained from scratch on nuclei (DSB 2018) within a wall-clock budget, beside its peers.

    .venv/bin/python benchmarks/nuclei.py --data ../shared/data/nuclei --minutes 30 \\
        [--threads 2] [--seed 0] [--json out.json] [--only ours,tv-ours-pipeline,yolo11n-seg]

Trains each model, one after the other in one run, for ``--minutes`` of wall-clock time on
``train/`` (128 images, 5,659 nuclei) and evaluates on ``val/`` (32 images) with the same metric
code (:class:`maskrcnn.evaluation.Evaluator`: COCO mask AP / AP50 / AP75, box AP, and the DSB 2018
score on predictions with score >= 0.5; ``AP50 all``: mask AP50 scoring every nucleus, as COCO
scores only 100 detections per image and two val images hold 101 and 151 nuclei). The models
(``--only`` picks some, comma-separated):

* ``ours``: this project's model and trainer (:func:`maskrcnn.engine.Trainer`) with the shipped
  ``nuclei`` preset (``maskrcnn/configs/nuclei.yaml``: ResNet-18 at half width, AdamW, per-image
  normalisation with bright images inverted), detecting with its :class:`Predictor` (the
  ``maskrcnn evaluate`` path).
* ``tv-recipe``: torchvision's ``maskrcnn_resnet50_fpn`` at our ResNet depth trained by its
  reference recipe (800-1333 px, SGD); ``peer`` is its old name (:mod:`peers_torchvision`).
* ``tv-ours-pipeline``: the same torchvision model given our data pipeline, input size and
  normalisation, anchors and sampling sizes, optimizer and time-fitted schedule: what a capable
  torchvision user would do (:mod:`peers_torchvision`).
* ``yolo11n-seg``, ``yolo11s-seg`` (and any ``yolo{v8,11,12,26}{n,s,m,l,x}-seg``): Ultralytics YOLO
  segmentation from its YAML, its trainer, fully offline, scored on its predictions at the
  original image size (:mod:`peers_yolo`; needs ``pip install 'maskrcnn[bench-peers]'``, AGPL).

``ours`` trains with the engine's own wall-clock budget (``Config.max_train_minutes``, what
``maskrcnn train --minutes M`` sets): after every step the learning-rate schedule is re-fitted to
the steps the remaining time allows and the run ends after the step that ends closest to the
budget (:mod:`maskrcnn.engine.budget`). The peers' loops use the same rule (a :class:`TimeBudget`;
YOLO through a callback beside its own ``time=``), counted from the first step on as the engine
counts; the ``train s`` column also holds model building and setup (and YOLO's saving), and
evaluation time is reported separately. The data sets are read from disk once and kept in memory
(:class:`MemoryDataset`: images and a label image per picture), so no model pays for re-decoding
the 5,659 mask PNGs each epoch (~30 s per pass on 2 cores); YOLO caches its images in RAM.

Prints a table of the models (steps, images/s, seconds per step, train and evaluation time,
mask AP / AP50 / AP75, box AP, DSB score) and writes it with the settings, machine and load
average to ``--json``. ``--set KEY=VALUE`` changes a preset field of ours (and of
``tv-ours-pipeline``, which copies the preset); ``--results FILE`` appends one JSON line per model
(experiment logs). ``--tta dihedral`` evaluates ours a second time with test-time views
(``maskrcnn evaluate --tta``), a row of its own: same training, its own scores and evaluation time
(Ultralytics' ``augment=True`` falls back to one pass for segmentation models, so the YOLO rows
have none). With ``ema_decay`` in the config, ours' row also holds the scores of the raw training
weights (``raw_weights``). Checks: ``--minutes 0.3 --max-val 2`` or ``--steps N``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import maskrcnn  # noqa: F401  before torch: its OpenMP defaults (maskrcnn.OPENMP_DEFAULTS) apply to every model here
import numpy as np
import torch
import yaml
from maskrcnn.commands.args import tta_views
from maskrcnn.config import Config
from maskrcnn.data.dataset import Dataset
from maskrcnn.engine.ema import ModelEMA
from maskrcnn.engine.hooks import HookBase
from maskrcnn.engine.runtime import resolve_amp
from maskrcnn.modeling.tta import TTA_VIEWS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_line, format_table  # noqa: E402
from common import machine_info as common_machine_info  # noqa: E402
from nuclei_common import COLUMNS, Predictions, evaluate_predictions, loadavg, make_row, report_metrics  # noqa: E402
from peers_torchvision import run_tv_ours_pipeline, run_tv_recipe  # noqa: E402
from peers_yolo import YOLO_IMGSZ, is_yolo, run_yolo  # noqa: E402

#: the models of a run without --only, in this order
MODELS = ("ours", "tv-recipe", "tv-ours-pipeline", "yolo11n-seg", "yolo11s-seg")


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


# ============================================================================== ours
def run_ours(config: Config, train_ds: Dataset, val_ds: Dataset, budget_s: float, run_dir: Path,
             label: str, log: Callable[[str], None], tta: dict[str, list] | None = None,
             ema_probe: tuple[list[float], int] | None = None) -> dict[str, Any]:
    """Train with the engine exactly as ``maskrcnn train --minutes M`` does, then evaluate (and with
    ``tta`` views again, as ``maskrcnn evaluate --tta``: ``row["tta"]``). ``ema_probe`` (decays,
    warmup steps): moving averages of the same run's weights kept beside it, each scored at the
    end (``row["ema_probe"]``), so that averaging is compared on one training trajectory."""
    from maskrcnn.engine import Trainer
    from maskrcnn.modeling import build_model

    # the budget decides the length (Config.max_train_minutes): many epochs, no validation between them
    config = config.replace(epochs=100_000, validate_every=0, max_train_minutes=budget_s / 60)
    load_before = loadavg()
    start = time.perf_counter()
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    probes = EMAProbes(*ema_probe) if ema_probe else None
    trainer = Trainer(config, train_ds, None, out_dir=run_dir.parent, run_dir=run_dir, model=model,
                      evaluate_fn=None, progress=False, tensorboard=False, log_every=10, hooks=[probes] if probes else ())
    result = trainer.fit()
    train_s = time.perf_counter() - start
    load_after = loadavg()
    log(f"[{label}] trained {result.global_step} steps in {train_s:.0f} s (model build, steps and the final checkpoint)")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last_loss = next((r["loss"] for r in reversed(records) if r.get("type") == "train"), None)
    images = result.global_step * config.images_per_gpu * config.grad_accumulation

    model = trainer.module  # with ema_decay: the moving average of the weights, as the checkpoints
    report, eval_s = _evaluate_model(model, val_ds)
    row = make_row(label, config, n_params, result.global_step, images, trainer.budget.step_times, train_s, eval_s,
                   report, len(train_ds.image_ids), load_before, load_after, last_loss)
    if trainer.ema is not None:  # the raw training weights too (from the state file), to show what averaging did
        from maskrcnn.engine.checkpoint import CheckpointManager
        from maskrcnn.engine.state import training_weights

        weights, tensors, _ = CheckpointManager(run_dir).load()
        model.load_state_dict(training_weights(weights, tensors))
        raw, _ = _evaluate_model(model, val_ds)
        row["raw_weights"] = report_metrics(raw)
        model.load_state_dict(weights)
    if tta:
        trained = model.config
        model.config = trained.replace(**tta)  # what maskrcnn.load(..., tta_views=..., tta_scales=...) builds
        try:
            report, eval_s = _evaluate_model(model, val_ds)
        finally:
            model.config = trained
        views = list(tta["tta_views"]) + [f"x{s:g}" for s in tta["tta_scales"]]
        row["tta"] = {"views": views, "eval_s": eval_s, **report_metrics(report)}
    if probes is not None:
        row["ema_probe"] = [{"decay": e.decay, "warmup_steps": e.warmup_steps,
                             **report_metrics(_evaluate_model(e.model.to(memory_format=torch.contiguous_format), val_ds)[0])}
                            for e in probes.emas]
    return row


class EMAProbes(HookBase):
    """Moving averages (:class:`maskrcnn.engine.ema.ModelEMA`) of the trained weights for several decays."""

    def __init__(self, decays: list[float], warmup_steps: int) -> None:
        self.decays, self.warmup_steps = decays, warmup_steps
        self.emas: list[ModelEMA] = []

    def before_train(self) -> None:
        self.emas = [ModelEMA(self.trainer.module, d, self.warmup_steps) for d in self.decays]

    def after_step(self) -> None:
        for e in self.emas:
            e.update(self.trainer.module)


def _evaluate_model(model: torch.nn.Module, val_ds: Dataset) -> tuple[dict[str, Any], float]:
    """:func:`evaluate_predictions` of our model (eval mode, the config's inference resize: pad64 for the preset)."""
    from maskrcnn.inference.predictor import Predictor

    model.eval()
    predictor = Predictor(model, device="cpu")

    def predict(ids: list[int]) -> list[Predictions]:
        images = [predictor.to_array(val_ds.load_image(i)) for i in ids]
        return [(d.boxes, d.scores, d.class_ids, d.masks) for d in predictor.detect(images, batch_size=len(images))]

    with torch.no_grad():
        return evaluate_predictions(val_ds, predict)


# ============================================================================== report
def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows: each model's, and after ours a row of its test-time augmented evaluation
    (same training, the scores and evaluation time of ``row["tta"]``)."""
    out = []
    for row in rows:
        out.append(row)
        if row.get("tta"):
            tta = row["tta"]
            named = ["dihedral"] if set(TTA_VIEWS) <= set(tta["views"]) else [v for v in tta["views"] if v in TTA_VIEWS]
            views = ",".join(named + [v for v in tta["views"] if v not in TTA_VIEWS])
            out.append({**row, **{k: v for k, v in tta.items() if k != "views"}, "name": f"{row['name']} +TTA {views}"})
    return out


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    return None


def machine_info(threads: int) -> dict[str, Any]:
    """:func:`common.machine_info` on the CPU (model, flags, load average) plus the Python version."""
    return {**common_machine_info(torch.device("cpu"), threads), "python": platform.python_version()}


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
    p.add_argument("--only", default=None, metavar="NAMES",
                   help=f"comma-separated models to run (default: {','.join(MODELS)}; also yolo26n-seg ...; "
                        "peer = tv-recipe)")
    p.add_argument("--config", default=None, help="our config YAML (default: the shipped nuclei preset)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="change a field of our config")
    p.add_argument("--out", default="/tmp/nuclei_bench", help="run directories of our trainer go here")
    p.add_argument("--max-val", type=int, default=None, help="checks: evaluate on the first N validation images only")
    p.add_argument("--steps", type=int, default=None, help="checks: the peers train this many steps (YOLO: batches) instead of --minutes")
    p.add_argument("--yolo-imgsz", type=int, default=YOLO_IMGSZ, help="YOLO peers: image size (long side)")
    p.add_argument("--yolo-set", action="append", default=[], metavar="KEY=VALUE",
                   help="YOLO peers: another Ultralytics train argument (experiments; YAML value)")
    p.add_argument("--tta", type=tta_views, default=None, metavar="VIEWS",
                   help="ours: evaluate also with test-time views (as maskrcnn evaluate --tta: hflip, flips, dihedral "
                        "or a comma list), a row of its own (Ultralytics has no test-time augmentation for segmentation)")
    p.add_argument("--ema-probe", default=None, metavar="DECAYS",
                   help="ours: keep moving averages of the weights with these decays (comma-separated) beside the "
                        "run and score each at the end (row ema_probe), e.g. 0.998,0.999,0.9995")
    p.add_argument("--ema-probe-warmup", type=int, default=500, metavar="STEPS", help="ramp of the --ema-probe decays")
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

    which = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else list(MODELS)
    which = ["tv-recipe" if n == "peer" else n for n in which]
    unknown = [n for n in which if n not in MODELS and not is_yolo(n)]
    if unknown:
        print(f"--only {','.join(unknown)}: unknown model; use {', '.join(MODELS)} or yolo<family><size>-seg", file=sys.stderr)
        return 2
    yolo_extra = {k.strip(): yaml.safe_load(v) for k, v in (item.split("=", 1) for item in a.yolo_set)}
    budget = a.minutes * 60
    rows = []
    for name in which:
        log(f"{name}: training for {a.minutes:g} min (load average {loadavg()})")
        torch.manual_seed(a.seed)
        if name == "tv-recipe":
            row = run_tv_recipe(train_ds, val_ds, budget, a.seed, log, a.steps, depth=config.backbone)
        elif name == "tv-ours-pipeline":
            row = run_tv_ours_pipeline(config, train_ds, val_ds, budget, log, a.steps)
        elif is_yolo(name):
            with tempfile.TemporaryDirectory(prefix=f"nuclei_{name}_") as work:
                row = run_yolo(name, config, train_ds, val_ds, budget, Path(work), log, a.steps, a.yolo_imgsz, yolo_extra)
        else:
            cfg = config
            run_dir = Path(a.out) / f"{a.tag}_{name}_{time.strftime('%Y%m%d-%H%M%S')}"
            probe = ([float(d) for d in a.ema_probe.split(",")], a.ema_probe_warmup) if a.ema_probe else None
            row = run_ours(cfg, train_ds, val_ds, budget, run_dir, name, log, a.tta, probe)
            row["config"] = {k: v for k, v in cfg.model_dump().items() if v != Config.model_fields[k].default}
            row["amp"] = str(resolve_amp(cfg.amp, torch.device("cpu"))[0])
        log(f"{name}: mask AP {row['mask_ap']:.4f}, AP50 {row['mask_ap50']:.4f}, DSB {row['dsb']:.4f}, "
            f"{row['steps']} steps, {row['s_per_step']:.2f} s/step, eval {row['eval_s']:.0f} s, {row['predictions']} predictions")
        rows.append(row)
        if a.results:
            Path(a.results).parent.mkdir(parents=True, exist_ok=True)
            with open(a.results, "a") as f:
                f.write(json.dumps({"tag": a.tag, "minutes": a.minutes, "threads": a.threads, "seed": a.seed,
                                    "sets": a.sets, **row}) + "\n")

    print()
    print(cpu_line())
    print(format_table(table_rows(rows), COLUMNS))
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
    print(json.dumps({"rows": [{k: r[k] for k, _, _ in COLUMNS} for r in table_rows(rows)]}))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

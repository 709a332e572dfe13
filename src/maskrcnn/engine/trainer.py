"""The training loop: ``train(config, train_dataset, ...)`` and the :class:`Trainer` behind it.

One optimizer step = ``grad_accumulation`` loader batches of ``images_per_gpu`` images on every
process. Per step the trainer autocasts the forward (``Config.amp``), weights the model's five
unweighted losses with ``Config.loss_weights``, stops on a NaN/Inf loss (:mod:`.guard`),
clips the gradient norm, steps the optimizer (SGD or AdamW) and the per-step schedule (:mod:`.schedule`).
With ``Config.max_train_minutes`` the run ends when the time is spent and the schedule is fitted
to the steps that fit (:mod:`.budget`).
Each epoch ends with validation (losses; plus mask AP through ``evaluate_fn``) and an atomic
checkpoint (:mod:`.checkpoint`); Ctrl-C / SIGTERM finish the current step, save a mid-epoch
checkpoint and stop. ``resume`` restores model, optimizer, schedule, grad scaler, every RNG and
the position inside the epoch, so an interrupted and resumed run on CPU with
``deterministic=True`` ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..errors import MaskRCNNError
from . import distributed as du
from .budget import TimeBudget
from .checkpoint import (
    CONFIG_KEY,
    CheckpointManager,
    capture_rng,
    load_optimizer_state,
    model_state_tensors,
    optimizer_state,
    restore_rng,
)
from .guard import NonFiniteLossError, check_losses, find_nonfinite, nonfinite_message
from .loader import (
    Batch,
    as_training_dataset,
    build_loader,
    class_statistics,
    image_class_ids,
    image_references,
    move_to_device,
    unpack_batch,
)
from .oom import MicroBatchSplit, run_with_oom_fallback, split_batch
from .logging import RunLogger, format_class_counts, format_duration, plot_loss_curves
from .optim import build_optimizer, scaled_learning_rate, select_trainable, set_train_mode
from .resume import find_resume_point
from .rundir import new_run_dir, resolve_resume, write_run_files
from .runtime import StopRequest, determinism, resolve_amp, seed_everything
from .samplers import TrainingSampler, repeat_factors
from .schedule import LRSchedule, build_scheduler

__all__ = ["LOSS_TERMS", "TrainResult", "Trainer", "train", "EvaluateFn"]

#: The model's loss terms, in logging order.
LOSS_TERMS: tuple[str, ...] = ("rpn_class", "rpn_bbox", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask")


def unprefixed(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``loss_*`` terms (already weighted by its heads) under the names in :data:`LOSS_TERMS`.
    (Transitional: the loop is being changed to sum and log whatever ``loss_*`` keys the model returns.)"""
    return {k.removeprefix("loss_"): v for k, v in losses.items()}

#: ``evaluate_fn(model, val_dataset) -> {"mask_ap": ..., ...}``, called on rank 0 after each validation.
EvaluateFn = Callable[[nn.Module, Any], dict[str, float]]

_STATE_VERSION = 1


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    epochs_completed: int
    global_step: int
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_metric: str | None
    best_value: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    skipped_samples: int = 0
    budget_reached: bool = False
    train_seconds: float = 0.0


class Trainer:
    """Trains a Mask R-CNN on one or more processes (``torchrun``).

    Args:
        config: the run's settings (training fields: ``images_per_gpu``, ``epochs``, ``layers``,
            ``learning_rate``, schedule, ``amp``, ``loss_weights``, ...).
        train_dataset: a :class:`maskrcnn.data.Dataset` or a torch dataset of training samples.
        val_dataset: same kinds; validated every ``validate_every`` epochs when given.
        out_dir: folder of run directories (a new run goes to ``<out_dir>/<name>_<date>``).
        resume: None, ``"auto"`` (latest run of ``config.name`` in ``out_dir``) or a run directory.
        model: the network (default ``maskrcnn.modeling.build_model(config)``); weights loaded by
            the caller are kept (fine-tuning).
        run_dir: exact directory of a new run (instead of a dated one under ``out_dir``).
        evaluate_fn: ``(model, val_dataset) -> {"mask_ap": ...}`` called after each validation;
            ``"auto"`` (default) computes mask/box AP with :func:`.evaluate.mask_ap_evaluator` when
            ``val_dataset`` is a :class:`maskrcnn.data.Dataset`; None: validation losses only. The
            best checkpoint follows ``mask_ap`` when present, else the validation loss.
        device: "cuda", "cpu" or None (CUDA when available).
        progress: show progress bars; tensorboard: write TensorBoard events when installed.
        log_every: optimizer steps between ``metrics.jsonl`` records.
        find_unused_parameters: passed to DistributedDataParallel.
        run_inputs: what ``run.yaml`` records (``data``, ``val_data``, ``format``, ``weights``), so
            that ``maskrcnn train --resume RUN_DIR`` needs nothing else (:mod:`.rundir`).
    """

    def __init__(
        self,
        config: Config,
        train_dataset: Any,
        val_dataset: Any = None,
        *,
        out_dir: str | Path = "runs",
        resume: str | Path | None = None,
        model: nn.Module | None = None,
        run_dir: str | Path | None = None,
        evaluate_fn: EvaluateFn | str | None = "auto",
        device: str | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        log_every: int = 20,
        find_unused_parameters: bool = True,
        run_inputs: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.train_source = train_dataset
        self.val_source = val_dataset
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.user_model = model
        self.requested_run_dir = None if run_dir is None else Path(run_dir)
        self.evaluate_fn = evaluate_fn
        self.device_pref = device
        self.show_progress = progress
        self.tensorboard = tensorboard
        self.log_every = max(1, int(log_every))
        self.find_unused_parameters = find_unused_parameters
        self.run_inputs = run_inputs
        self.run_dir: Path | None = None
        # progress state (saved in checkpoints)
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.skipped = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._split = MicroBatchSplit()  # images per forward pass after an out-of-memory error (engine/oom.py)

    # ================================================================== public
    def fit(self) -> TrainResult:
        """Run (or continue) training; returns when done, interrupted, or raises on failure."""
        created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        try:
            with determinism(self.config.deterministic):
                return self._fit()
        finally:
            if hasattr(self, "log"):
                self.log.close()
            if created_group:
                du.cleanup_distributed()

    def _fit(self) -> TrainResult:
        self._setup()
        with StopRequest() as stop:
            self._stop = stop
            try:
                return self._run()
            except NonFiniteLossError as exc:
                self.log.close_bar()
                self.log.event("nonfinite_loss", f"error: {exc}", step=exc.step, term=exc.term)
                raise

    # ================================================================== setup
    def _setup(self) -> None:
        c = self.config
        self.dist = du.init_distributed(self.device_pref)
        self.device = self.dist.device
        self.amp_dtype, use_scaler = resolve_amp(c.amp, self.device)
        seed_everything(c.seed + self.dist.rank)
        resume_dir = self._setup_run_dir()
        self.ckpt = CheckpointManager(self.run_dir, c.checkpoint_keep)
        self.log = RunLogger(self.run_dir, enabled=self.dist.is_main, progress=self.show_progress, tensorboard=self.tensorboard)
        self._write_config(resume_dir is not None)

        model = self.user_model
        if model is None:
            from ..modeling import build_model

            model = build_model(c)
        trainable = select_trainable(model, c)
        if c.sync_bn and c.train_bn:
            model = du.convert_sync_bn(model, self.dist)
        self.module: nn.Module = model.to(self.device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.module, c, self.dist.world_size)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self._setup_data()
        self.scheduler = build_scheduler(self.optimizer, c, self.total_steps)
        self.budget = TimeBudget(c.max_train_minutes * 60.0) if c.max_train_minutes else None
        self._budget_reached = False
        if resume_dir is not None:
            self._restore()
        self.model = du.wrap_model(self.module, self.dist, self.find_unused_parameters)
        self._print_summary(trainable)

    def _setup_run_dir(self) -> Path | None:
        c = self.config
        if self.dist.is_main:
            resume_dir = resolve_resume(self.resume, self.out_dir, c.name)
            if resume_dir is not None:
                run_dir = resume_dir
            elif self.requested_run_dir is not None:
                run_dir = self.requested_run_dir
                run_dir.mkdir(parents=True, exist_ok=True)
            else:
                run_dir = new_run_dir(self.out_dir, c.name)
            payload = (str(run_dir), None if resume_dir is None else str(resume_dir))
        else:
            payload = None
        run_dir_s, resume_s = du.broadcast_object(payload)  # type: ignore[misc]
        self.run_dir = Path(run_dir_s)
        if self.resume == "auto" and resume_s is None and self.dist.is_main:
            print(f"resume=auto: no run of {c.name!r} with a checkpoint in {self.out_dir}; starting a new run", file=sys.stderr)
        return None if resume_s is None else Path(resume_s)

    def _write_config(self, resuming: bool) -> None:
        if not self.dist.is_main:
            return
        changed = write_run_files(self.run_dir, self.config, self.run_inputs, compare=resuming)
        if changed:
            self.log.info(f"resuming with changed config fields: {', '.join(changed)}")

    def _setup_data(self) -> None:
        c, d = self.config, self.dist
        self.train_ds, self.train_collate = as_training_dataset(self.train_source, c, True, c.seed)
        if len(self.train_ds) == 0:
            raise MaskRCNNError("training dataset is empty; add images (and call prepare()) before training")
        self.val_ds, self.val_collate = (None, None)
        if self.val_source is not None:
            self.val_ds, self.val_collate = as_training_dataset(self.val_source, c, False, c.seed)
            if len(self.val_ds) == 0:
                self.val_ds = None
        if self.evaluate_fn == "auto":
            from ..data.dataset import Dataset
            from .evaluate import mask_ap_evaluator

            use = self.val_ds is not None and isinstance(self.val_source, Dataset)
            self.evaluate_fn = mask_ap_evaluator(self.val_source, batch_size=c.images_per_gpu) if use else None
        need_all = c.repeat_factor_threshold is not None
        class_ids = image_class_ids(self.train_ds) if d.is_main else None
        factors = None
        if need_all:
            class_ids = du.broadcast_object(class_ids)  # type: ignore[assignment]
            if class_ids is None:
                raise MaskRCNNError("repeat_factor_threshold: the training dataset cannot report class ids per image; set it to null")
            factors = repeat_factors(class_ids, c.repeat_factor_threshold)
        self.class_ids = class_ids
        self.factors = factors
        self.sampler = TrainingSampler(len(self.train_ds), seed=c.seed, factors=factors, rank=d.rank, world_size=d.world_size)
        ipg, acc = c.images_per_gpu, c.grad_accumulation
        self.batches_per_epoch = [math.ceil(self.sampler.epoch_length(e) / ipg) for e in range(c.epochs)]
        self.steps_per_epoch = [math.ceil(b / acc) for b in self.batches_per_epoch]
        self.total_steps = max(1, sum(self.steps_per_epoch))

    def _print_summary(self, trainable: list[str]) -> None:
        c, d = self.config, self.dist
        if not d.is_main:
            return
        total_batch = c.images_per_gpu * d.world_size * c.grad_accumulation
        lr = scaled_learning_rate(c, d.world_size)
        n_params = sum(p.numel() for p in self.params)
        amp = "none" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")
        lines = [
            f"run: {self.run_dir}",
            f"device: {self.device} x {d.world_size} process(es), amp: {amp}, total batch {total_batch} "
            f"= {c.images_per_gpu} images x {d.world_size} x {c.grad_accumulation} accumulation",
            f"learning rate {lr:.4g} ({c.learning_rate:g} for a batch of {c.base_batch_size}), schedule {c.lr_schedule}, "
            f"{c.epochs} epochs = {self.total_steps} optimizer steps ({self.steps_per_epoch[0]} in the first epoch)"
            + (f"; time budget {c.max_train_minutes:g} min (the schedule follows the steps that fit)" if self.budget else ""),
            f"optimizer: {c.optimizer}",
            f"trainable: {n_params:,} parameters in {len(trainable)} tensors (layers={c.layers}, train_bn={c.train_bn})",
            f"training images: {len(self.train_ds)}" + (f", validation images: {len(self.val_ds)}" if self.val_ds is not None else ", no validation set"),
        ]
        if c.warmup_iters >= self.total_steps and self.budget is None:
            lines.append(f"note: warmup_iters={c.warmup_iters} is not shorter than the run ({self.total_steps} steps); "
                         "the learning rate never reaches its full value (lower warmup_iters)")
        if self.epoch or self.batches_done:
            lines.append(f"resumed at epoch {self.epoch + 1}, batch {self.batches_done}, step {self.global_step}")
        for line in lines:
            self.log.info(line)
        if self.class_ids is not None:
            names = self._class_names()
            stats = class_statistics(self.class_ids, c.num_classes, self.factors)
            self.log.info("instances per class in the training set:\n" + format_class_counts(
                names, stats["images"], stats["instances"], stats["expected"] if self.factors is not None else None))
            self.log.log({"type": "class_counts", "classes": names, **stats})

    def _class_names(self) -> list[str]:
        c = self.config
        if c.class_names is not None:
            return list(c.class_names)
        from .loader import base_dataset

        names = list(getattr(base_dataset(self.train_ds), "class_names", []) or [])
        if len(names) == c.num_classes:
            return names
        return ["BG"] + [f"class {i}" for i in range(1, c.num_classes)]

    # ================================================================== checkpoints
    def _state_json(self) -> dict[str, Any]:
        c = self.config
        _, opt_meta = optimizer_state(self.optimizer)
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "world_size": self.dist.world_size,
            "images_per_gpu": c.images_per_gpu,
            "grad_accumulation": c.grad_accumulation,
            "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "skipped_samples": self.skipped,
            "history": self.history,
            "budget": None if self.budget is None else self.budget.state(),
        }

    def _save(self, stem: str) -> Path | None:
        """Write the checkpoint pair ``stem`` (collective: every rank calls it)."""
        rank = self.dist.rank
        bad = [n for n, p in self.module.named_parameters() if not torch.isfinite(p).all()]  # same on every rank
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights in {bad[0]} at step {self.global_step}; not saved, last good checkpoint kept: "
                f"{self.last_checkpoint}; lower learning_rate or use amp=none", term=bad[0], step=self.global_step)
        rng_tensors, rng_meta = capture_rng(prefix=f"rng/rank{rank}")
        gathered = du.all_gather_objects((rank, rng_tensors, rng_meta))
        path = None
        if self.dist.is_main:
            opt_tensors, _ = optimizer_state(self.optimizer)
            state = self._state_json()
            state["rng"] = {}
            tensors = dict(opt_tensors)
            for r, t, m in gathered:  # type: ignore[misc]
                tensors.update(t)
                state["rng"][str(r)] = m
            meta = {CONFIG_KEY: self.config.to_yaml(), "epoch": str(self.epoch), "global_step": str(self.global_step)}
            path = self.ckpt.save(stem, model_state_tensors(self.module), meta, tensors, state)
            self.last_checkpoint = path
        du.barrier()
        return path

    def _save_best(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main or self.best is None:
            return
        meta = {CONFIG_KEY: self.config.to_yaml(), "epoch": str(record["epoch"]), "global_step": str(self.global_step),
                "metric": self.best["metric"], "value": repr(self.best["value"])}
        self.ckpt.save_best(model_state_tensors(self.module), meta)

    def _restore(self) -> None:
        c, rank = self.config, self.dist.rank
        point = find_resume_point(self.ckpt, self.module, self.optimizer)  # every file checked; a bad pair skipped
        weights, tensors, state, stem = point.weights, point.tensors, point.state, point.stem
        for note in point.notes(self.ckpt.weights_path(stem)) if self.dist.is_main else []:
            self.log.event("checkpoint_skipped", note)
        self.module.load_state_dict(weights, strict=True)
        fresh_lr = [g["initial_lr"] for g in self.optimizer.param_groups]
        try:
            load_optimizer_state(self.optimizer, tensors, state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise MaskRCNNError(f"{self.ckpt.state_path(stem)}: optimizer state does not fit ({exc}); "
                                "keep layers and train_bn as in the run's config.yaml") from None
        for g, lr in zip(self.optimizer.param_groups, fresh_lr):
            g["initial_lr"] = lr
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if str(rank) in state.get("rng", {}):
            restore_rng(tensors, state["rng"][str(rank)], prefix=f"rng/rank{rank}")
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.global_step = int(state["global_step"])
        self.best = state.get("best")
        self.skipped = int(state.get("skipped_samples", 0))
        self.history = list(state.get("history", []))
        if self.budget is not None:
            self.budget.resume_from(state.get("budget"))
        self.last_checkpoint = self.ckpt.weights_path(stem)
        old_images = state["world_size"] * state["images_per_gpu"]
        new_images = self.dist.world_size * c.images_per_gpu
        if self.batches_done and (old_images != new_images or state["grad_accumulation"] != c.grad_accumulation):
            # the position is kept in images seen; the resume is no longer bit-exact
            seen = self.batches_done * old_images
            self.batches_done = (seen // new_images) // c.grad_accumulation * c.grad_accumulation
            if self.dist.is_main:
                print("note: batch layout changed since the checkpoint; resuming near the same position", file=sys.stderr)

    # ================================================================== loop
    def _run(self) -> TrainResult:
        c = self.config
        interrupted = False
        t0 = time.time()
        self._ema_step_s: float | None = None
        if self.budget is not None:
            self.budget.start()
            if self.budget.exhausted():
                self.log.info(f"time budget of {c.max_train_minutes:g} min already spent; nothing to train "
                              "(raise max_train_minutes to continue)")
                self._budget_reached = True
                return self._finish(False, 0.0)
        while self.epoch < c.epochs:
            e = self.epoch
            completed = self._train_epoch(e)
            budget_end = self._budget_reached
            if not completed and not budget_end:  # a signal mid-epoch
                path = self._save(self.ckpt.step_stem(self.global_step))
                self.log.event("interrupted", f"{self._stop.signal_name or 'stop'}: saved {path} after step {self.global_step}; "
                               f"continue with: maskrcnn train --resume {self.run_dir}", step=self.global_step)
                interrupted = True
                break
            if completed:
                self.epoch, self.batches_done = e + 1, 0
            signal = self._stop.requested
            periodic = c.validate_every and ((e + 1) % c.validate_every == 0 or e + 1 == c.epochs)
            if self.val_ds is not None and c.validate_every and not signal and (periodic or budget_end):
                record = self._validate(e)
                self.history.append(record)
                if self._update_best(record):
                    self._save_best(record)
            self._save(self.ckpt.epoch_stem(e + 1) if completed else self.ckpt.step_stem(self.global_step))
            if budget_end:
                done = self.epoch + self.batches_done / max(1, self.batches_per_epoch[min(self.epoch, c.epochs - 1)])
                self.log.event("time_budget", f"time budget of {c.max_train_minutes:g} min reached after step "
                               f"{self.global_step} ({done:.2f} epochs)", step=self.global_step)
                break
            if signal:
                self.log.event("interrupted", f"{self._stop.signal_name}: stopped after epoch {e + 1}; "
                               f"continue with: maskrcnn train --resume {self.run_dir}", step=self.global_step)
                interrupted = True
                break
        return self._finish(interrupted, time.time() - t0)

    def _finish(self, interrupted: bool, seconds: float) -> TrainResult:
        best_path = self.ckpt.best_path if (self.best is not None and self.ckpt.best_path.is_file()) else None
        if self.dist.is_main:
            self.log.close_bar()
            png = plot_loss_curves(self.log.metrics_path, self.run_dir / "loss_curves.png")
            msg = f"{'stopped' if interrupted else 'finished'}: {self.epoch} epochs, {self.global_step} steps in {format_duration(seconds)}"
            if self._budget_reached:
                msg += f" (time budget of {self.config.max_train_minutes:g} min)"
            if self.skipped:
                msg += f"; {self.skipped} samples skipped (see metrics.jsonl)"
            self.log.info(msg)
            if best_path is not None:
                self.log.info(f"best ({self.best['metric']} {self.best['value']:.4f}, epoch {self.best['epoch']}): {best_path}")
            if self.last_checkpoint is not None:
                self.log.info(f"last: {self.last_checkpoint}")
            if png is not None:
                self.log.info(f"loss curves: {png}")
        return TrainResult(
            run_dir=self.run_dir,
            epochs_completed=self.epoch,
            global_step=self.global_step,
            last_checkpoint=self.last_checkpoint,
            best_checkpoint=best_path,
            best_metric=None if self.best is None else self.best["metric"],
            best_value=None if self.best is None else self.best["value"],
            history=list(self.history),
            interrupted=interrupted,
            skipped_samples=self.skipped,
            budget_reached=self._budget_reached,
            train_seconds=seconds,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, e: int) -> bool:
        """Train epoch ``e`` from ``self.batches_done``; False when stopped by a signal."""
        c = self.config
        n_batches = self.batches_per_epoch[e]
        self.sampler.set_epoch(e, start=self.batches_done * c.images_per_gpu)
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(e)
        loader = build_loader(self.train_ds, self.train_collate, self.sampler, c.images_per_gpu, c.num_workers,
                              c.seed, pin_memory=self.device.type == "cuda")
        set_train_mode(self.model, c.train_bn)
        self.log.progress_bar(self.steps_per_epoch[e], f"epoch {e + 1}/{c.epochs}", initial=self.batches_done // c.grad_accumulation)
        self._acc: dict[str, float] = {}
        self._epoch_rows: list[dict[str, float]] = []
        self._last_batch: Batch | None = None
        t0 = time.time()
        it = iter(loader)
        try:
            while self.batches_done < n_batches:
                micro = min(c.grad_accumulation, n_batches - self.batches_done)
                stop = self._train_step(it, micro, e)
                self.batches_done += micro
                if stop and self.batches_done < n_batches:
                    self._flush_train_log(e)
                    return False
        finally:
            del it
            self.log.close_bar()
        self._flush_train_log(e)
        self._epoch_summary(e, time.time() - t0)
        return True

    def _note_skipped(self, refs: list[str], epoch: int) -> None:
        if not refs:
            return
        self.skipped += len(refs)
        msg = f"skipped {len(refs)} sample(s) that failed to load (epoch {epoch + 1}): {', '.join(refs)}"
        if self.dist.is_main:
            self.log.event("skipped_samples", msg, files=refs, epoch=epoch + 1)
        else:
            print(f"[rank {self.dist.rank}] {msg}", file=sys.stderr)

    def _train_step(self, it: Iterator, micro: int, epoch: int) -> bool:
        """One optimizer step over ``micro`` loader batches; returns whether a stop was requested."""
        c, dev = self.config, self.device
        t0 = time.perf_counter()
        weights = torch.ones(len(LOSS_TERMS), device=dev)  # the heads apply Config.loss_weights
        lr = self.optimizer.param_groups[0]["lr"]
        # --- OOM fallback (engine/oom.py): an out-of-memory error in a forward/backward pass frees memory
        # and reruns this step's passes on the same batches split into smaller micro-batches (kept for later steps)
        fetched: list[tuple[Batch, float] | None] = []
        step_sum, n_images, stop = run_with_oom_fallback(
            lambda size: self._passes(it, fetched, micro, epoch, weights, lr, size), self._split, c.images_per_gpu,
            cleanup=lambda: self.optimizer.zero_grad(set_to_none=True),  # partial gradients go before the retry
            on_split=lambda old, new, err: self._log_split(old, new, err, epoch), device=dev,
            distributed=du.is_distributed())
        # --- end OOM fallback
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = c.gradient_clip_norm if c.gradient_clip_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise NonFiniteLossError(
                nonfinite_message("gradient norm", grad_norm, self.global_step, epoch + 1, lr, self._total_batch(),
                                  self._amp_name(), self._last_ckpt_name()), term="gradient norm", step=self.global_step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        seconds = time.perf_counter() - t0
        self._after_step(step_sum / max(1, micro), lr, grad_norm, n_images, seconds, epoch)
        if self.budget is not None:
            stop = self._budget_step(seconds) or stop
        return stop

    def _budget_step(self, seconds: float) -> bool:
        """Record a step against the time budget, re-fit the schedule to the steps that still fit;
        True when the budget is spent. Rank 0 decides for all ranks (the rate must be the same)."""
        b = self.budget
        assert b is not None
        b.step_done(seconds)
        left = b.steps_left()
        if du.is_distributed():
            left = int(du.broadcast_object(left))  # type: ignore[arg-type]
        self.scheduler.set_schedule(LRSchedule.from_config(self.config, max(1, min(self.total_steps, self.global_step + left))))
        self._budget_reached = left == 0
        return self._budget_reached

    # --- OOM fallback (engine/oom.py): the forward/backward passes of one step, and the log line
    def _fetch(self, it: Iterator, epoch: int) -> tuple[Batch, float] | None:
        """The next loader batch of the step and its loss scale (None: nothing to learn from)."""
        batch = unpack_batch(next(it))
        self._note_skipped(batch.skipped, epoch)
        scale = 1.0
        if not batch.images:
            if not du.is_distributed() or self._last_batch is None:
                return None  # nothing to learn from; in DDP a batch must still join the gradient all-reduce
            batch, scale = self._last_batch, 0.0
        elif du.is_distributed():
            self._last_batch = batch
        return batch, scale

    def _passes(self, it: Iterator, fetched: list[tuple[Batch, float] | None], micro: int, epoch: int,
                weights: torch.Tensor, lr: float, size: int | None) -> tuple[torch.Tensor, int, bool]:
        """Zero the gradients, then forward and backward every loader batch of the step, each in
        micro-batches of at most ``size`` images (None: whole batches) whose losses are weighted by
        their share of the batch. Batches come from ``it`` once and are kept in ``fetched``, so a
        retry after an out-of-memory error sees the same data."""
        c, dev = self.config, self.device
        self.optimizer.zero_grad(set_to_none=True)
        step_sum = torch.zeros(len(LOSS_TERMS) + 1)
        n_images, stop = 0, False
        for m in range(micro):
            if m == len(fetched):
                fetched.append(self._fetch(it, epoch))
            item = fetched[m]
            if item is None:
                continue
            batch, scale = item
            sync = self.model.no_sync() if (du.is_distributed() and m < micro - 1) else contextlib.nullcontext()
            with sync:
                parts = split_batch(batch.images, batch.targets, size)
                batch_sum = None
                for images, targets, share in parts:
                    part = move_to_device(Batch(images, targets, batch.skipped), dev)
                    with self._autocast():
                        losses = unprefixed(self.model(part.images, part.targets))
                    missing = [k for k in LOSS_TERMS if k not in losses]
                    if missing:
                        raise MaskRCNNError(f"the model returned no {missing[0]!r} loss; it must return {', '.join(LOSS_TERMS)}")
                    terms = torch.stack([losses[k].float() for k in LOSS_TERMS])
                    total = (terms * weights).sum()
                    flag = torch.tensor([1.0 if self._stop.requested else 0.0], device=dev)
                    reduced = du.all_reduce_mean(torch.cat([terms.detach(), total.detach().view(1), flag])).cpu()
                    values = {k: reduced[i] for i, k in enumerate(LOSS_TERMS)}
                    values["total loss"] = reduced[len(LOSS_TERMS)]
                    if find_nonfinite(values) is not None:
                        check_losses(values, self.global_step, epoch + 1, lr, self._total_batch(), self._amp_name(),
                                     self._last_ckpt_name(), image_references(self.train_ds, part.targets))
                    stop = stop or bool(reduced[-1] > 0)
                    if len(parts) == 1:
                        self.scaler.scale(total * (scale / micro)).backward()
                        batch_sum = reduced[:-1]
                    else:
                        self.scaler.scale(total * (scale / micro * share)).backward()
                        batch_sum = reduced[:-1] * share if batch_sum is None else batch_sum + reduced[:-1] * share
                    del losses, terms, total
            step_sum += batch_sum * scale
            n_images += len(batch.images) if scale else 0
        return step_sum, n_images, stop

    def _log_split(self, old: int, new: int, error: str, epoch: int) -> None:
        c = self.config
        msg = (f"out of memory at step {self.global_step + 1} (epoch {epoch + 1}) with {old} image(s) per forward pass "
               f"({error[:120]}); freed memory and retried the step in micro-batches of {new} image(s) "
               f"(same batch of {c.images_per_gpu} images by gradient accumulation); later steps keep {new} per pass")
        if self.dist.is_main:
            self.log.event("oom_split", msg, step=self.global_step + 1, epoch=epoch + 1, images_per_pass=new,
                           previous_images_per_pass=old)
        else:
            print(f"[rank {self.dist.rank}] {msg}", file=sys.stderr)
    # --- end OOM fallback

    def _total_batch(self) -> int:
        c = self.config
        return c.images_per_gpu * self.dist.world_size * c.grad_accumulation

    def _amp_name(self) -> str:
        return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def _last_ckpt_name(self) -> str | None:
        return None if self.last_checkpoint is None else str(self.last_checkpoint)

    def _after_step(self, means: torch.Tensor, lr: float, grad_norm: float, n_images: int, seconds: float, epoch: int) -> None:
        """Progress bar, throughput, ETA and periodic metrics records."""
        if not self.dist.is_main:
            return
        ema = self._ema_step_s
        self._ema_step_s = seconds if ema is None else 0.9 * ema + 0.1 * seconds
        eta = self._eta()
        ips = n_images * self.dist.world_size / max(seconds, 1e-9)
        values = {k: float(means[i]) for i, k in enumerate(LOSS_TERMS)}
        values["loss"] = float(means[len(LOSS_TERMS)])
        self.log.update_bar(values, lr, ips, eta)
        self._epoch_rows.append({**values, "images_per_s": ips})
        acc = self._acc
        for k, v in values.items():
            acc[k] = acc.get(k, 0.0) + v
        acc["images_per_s"] = acc.get("images_per_s", 0.0) + ips
        acc["grad_norm"] = acc.get("grad_norm", 0.0) + grad_norm
        acc["_n"] = acc.get("_n", 0) + 1
        acc["_lr"] = lr
        if acc["_n"] >= self.log_every:
            self._flush_train_log(epoch)

    def _eta(self) -> float:
        """Seconds left: the remaining steps at the smoothed step time, at most the time budget left."""
        eta = (self.total_steps - self.global_step) * (self._ema_step_s or 0.0)
        return eta if self.budget is None else min(eta, self.budget.remaining)

    def _epoch_summary(self, e: int, seconds: float) -> None:
        """One line per epoch when there is no progress bar (logs of non-interactive runs)."""
        rows = self._epoch_rows
        if self.show_progress or not rows or not self.dist.is_main:
            return
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        terms = ", ".join(f"{k} {mean[k]:.4f}" for k in LOSS_TERMS)
        eta = self._eta()
        self.log.info(f"epoch {e + 1}/{self.config.epochs}: loss {mean['loss']:.4f} ({terms}), lr {self.optimizer.param_groups[0]['lr']:.3g}, "
                      f"{mean['images_per_s']:.1f} images/s, {format_duration(seconds)}, eta {format_duration(eta)}")

    def _flush_train_log(self, epoch: int) -> None:
        acc = getattr(self, "_acc", None)
        if not self.dist.is_main or not acc or not acc.get("_n"):
            return
        n = acc.pop("_n")
        lr = acc.pop("_lr")
        record = {"type": "train", "epoch": epoch + 1, "step": self.global_step, "lr": lr}
        record.update({k: v / n for k, v in acc.items()})
        self.log.log(record, step=self.global_step)
        acc.clear()

    # ================================================================== validation
    def _validate(self, e: int) -> dict[str, Any]:
        """Validation losses (all ranks) and ``evaluate_fn`` metrics (rank 0) after epoch ``e``."""
        c, dev, d = self.config, self.device, self.dist
        sampler = TrainingSampler(len(self.val_ds), seed=c.seed, shuffle=False, rank=d.rank, world_size=d.world_size)
        loader = build_loader(self.val_ds, self.val_collate, sampler, c.images_per_gpu, c.num_workers, c.seed,
                              pin_memory=dev.type == "cuda")
        weights = torch.ones(len(LOSS_TERMS), device=dev)  # the heads apply Config.loss_weights
        sums = torch.zeros(len(LOSS_TERMS) + 2, device=dev)
        set_train_mode(self.module, train_bn=False)  # losses need train mode; statistics stay untouched
        devices = [dev.index if dev.index is not None else 0] if dev.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(c.seed)
            for raw in loader:
                batch = unpack_batch(raw)
                if not batch.images:
                    continue
                batch = move_to_device(batch, dev)
                with self._autocast():
                    losses = unprefixed(self.module(batch.images, batch.targets))
                terms = torch.stack([losses[k].float() for k in LOSS_TERMS])
                n = len(batch.images)
                sums += torch.cat([terms * n, (terms * weights).sum().view(1) * n, torch.tensor([float(n)], device=dev)])
        sums = du.all_reduce_mean(sums).cpu()
        count = max(float(sums[-1]), 1.0)
        record: dict[str, Any] = {"type": "val", "epoch": e + 1, "step": self.global_step, "loss": float(sums[len(LOSS_TERMS)]) / count}
        record.update({k: float(sums[i]) / count for i, k in enumerate(LOSS_TERMS)})
        if self.evaluate_fn is not None:
            metrics = None
            if d.is_main:
                self.module.eval()
                try:
                    metrics = {k: float(v) for k, v in (self.evaluate_fn(self.module, self.val_source) or {}).items()}
                except Exception as exc:  # noqa: BLE001 - a failed evaluation must not end a long run
                    self.log.event("evaluation_failed", f"evaluation after epoch {e + 1} failed ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}); continuing with validation losses")
            record.update(du.broadcast_object(metrics) or {})  # type: ignore[arg-type]
        set_train_mode(self.model, c.train_bn)
        summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("type", "epoch", "step"))
        self.log.info(f"validation after epoch {e + 1}: {summary}")
        self.log.log(record, step=self.global_step)
        return record

    def _update_best(self, record: dict[str, Any]) -> bool:
        """Track the best validation result; True when ``record`` is the new best."""
        loss = record["loss"]
        if isinstance(record.get("mask_ap"), float) and math.isfinite(record["mask_ap"]) and record["mask_ap"] >= 0:
            metric, value, key = "mask_ap", record["mask_ap"], (record["mask_ap"], -loss)  # ties: lower loss
        elif self.best is not None and self.best["metric"] == "mask_ap":
            return False  # this validation has no AP (its evaluation failed): not comparable
        else:
            metric, value, key = "loss", loss, (-loss,)
        if not all(math.isfinite(k) for k in key):
            return False
        best = self.best
        if best is None or best["metric"] != metric or key > tuple(best.get("key", (-math.inf,))):
            self.best = {"metric": metric, "value": value, "epoch": record["epoch"], "key": list(key)}
            return True
        return False


def train(
    config: Config,
    train_dataset: Any,
    val_dataset: Any = None,
    out_dir: str | Path = "runs",
    resume: str | Path | None = None,
    model: nn.Module | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``model`` (default: built from ``config``) and return the :class:`TrainResult`.

    ``options`` are the other keyword arguments of :class:`Trainer` (``run_dir``,
    ``evaluate_fn``, ``device``, ``progress``, ``tensorboard``, ``log_every``).
    """
    return Trainer(config, train_dataset, val_dataset, out_dir=out_dir, resume=resume, model=model, **options).fit()

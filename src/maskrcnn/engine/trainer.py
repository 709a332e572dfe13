"""The training loop: ``train(config, train_dataset, ..., hooks=[...])`` and the :class:`Trainer` behind it.

The loop is short: per epoch it builds the loader, and per optimizer step it fetches
``grad_accumulation`` loader batches, runs the one training step (:class:`.step.TrainStep`:
forward, loss sum, backward, clipping, AMP, optimizer step; out-of-memory fallback) and
advances the learning-rate schedule. Everything else is a hook (:mod:`.hooks`), called at
``before_train / before_epoch / before_step / after_step / after_epoch / after_train``:

* :class:`~.hooks.TimeBudgetHook` (``Config.max_train_minutes``): re-fits the schedule to the
  steps that fit and stops the run when the time is spent;
* :class:`~.hooks.MetricsLogger`: progress bar, ``metrics.jsonl``, TensorBoard, loss curves;
* :class:`~.hooks.ValidationHook`: validation losses, ``evaluate_fn`` (mask AP), best checkpoint;
* :class:`~.hooks.PeriodicCheckpoint`: an atomic checkpoint after every epoch and at a stop;
* :class:`~.hooks.SignalHandler`: Ctrl-C / SIGTERM finish the step, save and stop;
* your own hooks (``hooks=[...]``), after these, e.g. :class:`~.hooks.ThreadTuning`.

``resume`` restores model, optimizer, schedule, grad scaler, every RNG and the position inside
the epoch, so an interrupted and resumed run on CPU with ``deterministic=True`` ends with
exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..errors import MaskRCNNError
from ..structures import Batch
from . import distributed as du
from . import state as run_state
from .budget import TimeBudget
from .checkpoint import CheckpointManager
from .ema import ModelEMA
from .guard import NonFiniteLossError, check_losses, find_nonfinite
from .hooks import HookBase, Stop, default_hooks
from .loader import as_training_dataset, build_loader, image_class_ids, image_references, unpack_batch
from .logging import RunLogger
from .oom import MicroBatchSplit
from .optim import build_optimizer, select_trainable, set_train_mode
from .rundir import new_run_dir, resolve_resume
from .runtime import determinism, resolve_amp, seed_everything, use_channels_last
from .samplers import TrainingSampler, repeat_factors
from .schedule import build_scheduler
from .step import StepOutput, TrainStep

__all__ = ["TrainResult", "Trainer", "train", "EvaluateFn"]

#: ``evaluate_fn(model, val_dataset) -> {"mask_ap": ..., ...}``, called on rank 0 after each validation.
EvaluateFn = Callable[[nn.Module, Any], dict[str, float]]


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
    stop_reason: str | None = None


class Trainer:
    """Trains a Mask R-CNN on one or more processes (``torchrun``).

    Args:
        config: the run's settings (``images_per_gpu``, ``epochs``, ``layers``, ``optimizer``,
            ``learning_rate``, schedule, ``amp``, ``max_train_minutes``, ...).
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
        hooks: your :class:`~.hooks.HookBase` objects, called after the built-in ones.
        start_epoch: epochs this model has already been trained for (Keras' ``initial_epoch``,
            as Matterport's ``epochs``): a new run trains epochs ``start_epoch + 1 ..
            config.epochs`` (numbered so in logs and checkpoints) and its schedule spans those.

    Attributes hooks read (see :class:`~.hooks.HookBase`): ``config``, ``model`` (DDP-wrapped),
    ``module``, ``ema`` (:class:`~.ema.ModelEMA` or None), ``eval_module`` (what is validated and saved), ``optimizer``, ``scheduler``, ``dist``, ``run_dir``, ``log``, ``ckpt``,
    ``current_epoch`` (0-based, being trained), ``epoch`` (epochs completed), ``batches_done``,
    ``global_step``, ``total_steps``, ``last_step`` (:class:`~.step.StepOutput`),
    ``step_seconds``, ``epoch_completed``, ``stop``, ``error``, ``history``, ``best``, ``budget``.
    """

    def __init__(self, config: Config, train_dataset: Any, val_dataset: Any = None, *,
                 out_dir: str | Path = "runs", resume: str | Path | None = None, model: nn.Module | None = None,
                 run_dir: str | Path | None = None, evaluate_fn: EvaluateFn | str | None = "auto",
                 device: str | None = None, progress: bool = True, tensorboard: bool = True, log_every: int = 20,
                 find_unused_parameters: bool = True, run_inputs: dict[str, Any] | None = None,
                 hooks: Sequence[HookBase] = (), start_epoch: int = 0) -> None:
        if not 0 <= int(start_epoch) < config.epochs:
            raise MaskRCNNError(f"start_epoch={start_epoch}: must be below epochs={config.epochs} (the epoch to train up "
                                "to); raise epochs")
        self.config = config
        self.train_source, self.val_source = train_dataset, val_dataset
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.user_model = model
        self.requested_run_dir = None if run_dir is None else Path(run_dir)
        self.evaluate_fn = evaluate_fn
        self.device_pref = device
        self.show_progress, self.tensorboard = progress, tensorboard
        self.log_every = max(1, int(log_every))
        self.find_unused_parameters = find_unused_parameters
        self.run_inputs = run_inputs
        self.user_hooks = list(hooks)
        self.hooks: list[HookBase] = []
        self.run_dir: Path | None = None
        # progress (saved in checkpoints)
        self.epoch = self.current_epoch = self.start_epoch = int(start_epoch)
        self.batches_done = self.global_step = self.skipped = 0
        self.best: dict[str, Any] | None = None
        self.ema: ModelEMA | None = None  # the moving average of the weights (ema_decay), made in setup
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        # the current step and the end of the run
        self.last_step = StepOutput()
        self.step_seconds = 0.0
        self.epoch_completed = False
        self.stop: Stop | None = None
        self.train_seconds = 0.0
        self.error: BaseException | None = None
        self.split = MicroBatchSplit()  # images per forward pass after an out-of-memory error (engine/oom.py)
        self._stop_sources: list[Callable[[], bool]] = []
        self._last_batch: Batch | None = None

    # ================================================================== public
    def fit(self) -> TrainResult:
        """Run (or continue) training; returns when done, interrupted, or raises on failure."""
        created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        finished = False
        try:
            with determinism(self.config.deterministic):
                self._setup()
                result = self._run()
                if self.amp_dtype is not None:  # channels-last was for the autocast run; detection gets NCHW back
                    self.module.to(memory_format=torch.contiguous_format)
                if self.ema is not None:  # the trained model is the average, as in the checkpoints
                    self.module.load_state_dict(self.ema.model.state_dict())
                finished = True
                return result
        finally:
            if hasattr(self, "log"):
                self.log.close()
            if created_group:
                if finished:  # every rank leaves together: rank 0 may still be writing its files, and a
                    du.barrier()  # rank that tears down gloo while a peer is busy can abort at exit
                du.cleanup_distributed()

    def request_stop(self, reason: str, *, interrupted: bool = False, validate: bool = True) -> None:
        """End the run after the current step (call it on every rank, e.g. from ``after_step``):
        the epoch ends, validation runs (``validate``), a checkpoint is saved, the run finishes.
        ``interrupted``: the run is meant to be continued with ``--resume`` (signals)."""
        if self.stop is None:
            self.stop = Stop(reason, interrupted=interrupted, validate=validate and not interrupted)

    @property
    def eval_module(self) -> nn.Module:
        """The weights that are validated and saved: the moving average with ``ema_decay``
        (:mod:`.ema`), else the model being trained."""
        return self.module if self.ema is None else self.ema.model

    def add_stop_source(self, source: Callable[[], bool]) -> None:
        """``source()`` is polled on every forward pass and reduced over the ranks; True on any rank
        ends the run after the step (:class:`~.hooks.SignalHandler` registers the signal flag)."""
        self._stop_sources.append(source)

    # ================================================================== setup
    def _setup(self) -> None:
        c = self.config
        if c.architecture == "matterport":
            from ..config import ConfigError
            from ..modeling.matterport import TRAINING_UNSUPPORTED

            raise ConfigError(TRAINING_UNSUPPORTED)
        self.dist = du.init_distributed(self.device_pref)
        self.device = self.dist.device
        self.amp_dtype, use_scaler = resolve_amp(c.amp, self.device)
        seed_everything(c.seed + self.dist.rank)
        resume_dir = self._setup_run_dir()
        self.ckpt = CheckpointManager(self.run_dir, c.checkpoint_keep)
        self.log = RunLogger(self.run_dir, enabled=self.dist.is_main, progress=self.show_progress, tensorboard=self.tensorboard)
        run_state.write_config(self, resume_dir is not None)
        model = self.user_model
        if model is None:
            from ..modeling import build_model

            model = build_model(c, pretrained_backbone=resume_dir is None)  # timm_pretrained, from scratch only
        self.trainable = select_trainable(model, c)
        if c.sync_bn and c.train_bn:
            model = du.convert_sync_bn(model, self.dist)
        self.module: nn.Module = use_channels_last(model.to(self.device), self.amp_dtype)  # before DDP
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.ema = ModelEMA(self.module, c.ema_decay, c.ema_warmup_steps) if c.ema_decay else None
        self.optimizer = build_optimizer(self.module, c, self.dist.world_size)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self._setup_data()
        self.scheduler = build_scheduler(self.optimizer, c, self.total_steps)
        self.budget = TimeBudget(c.max_train_minutes * 60.0) if c.max_train_minutes else None
        self.hooks = default_hooks(self) + self.user_hooks
        for hook in self.hooks:
            hook.trainer = self
        if resume_dir is not None:
            run_state.restore(self)
        self.model = du.wrap_model(self.module, self.dist, self.find_unused_parameters)
        self.step = TrainStep(self.model, self.optimizer, self.device, params=self.params, amp_dtype=self.amp_dtype,
                              scaler=self.scaler, clip_norm=c.gradient_clip_norm,
                              oom_split=self.split, on_oom_split=self._log_split, check=self._check,
                              stop_requested=lambda: any(s() for s in self._stop_sources))

    def _setup_run_dir(self) -> Path | None:
        c = self.config
        payload = None
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
        run_dir_s, resume_s = du.broadcast_object(payload)  # type: ignore[misc]
        self.run_dir = Path(run_dir_s)
        if self.resume == "auto" and resume_s is None and self.dist.is_main:
            print(f"resume=auto: no run of {c.name!r} with a checkpoint in {self.out_dir}; starting a new run", file=sys.stderr)
        return None if resume_s is None else Path(resume_s)

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
        self.class_ids = image_class_ids(self.train_ds) if d.is_main else None
        self.factors = None
        if c.repeat_factor_threshold is not None:
            self.class_ids = du.broadcast_object(self.class_ids)  # type: ignore[assignment]
            if self.class_ids is None:
                raise MaskRCNNError("repeat_factor_threshold: the training dataset cannot report class ids per image; set it to null")
            self.factors = repeat_factors(self.class_ids, c.repeat_factor_threshold)
        ipg, acc = c.images_per_gpu, c.grad_accumulation
        length = None if c.steps_per_epoch is None else c.steps_per_epoch * acc * ipg
        self.sampler = TrainingSampler(len(self.train_ds), seed=c.seed, factors=self.factors, rank=d.rank,
                                       world_size=d.world_size, length=length)
        self.batches_per_epoch = [math.ceil(self.sampler.epoch_length(e) / ipg) for e in range(c.epochs)]
        self.steps_per_epoch = [math.ceil(b / acc) for b in self.batches_per_epoch]
        self.total_steps = max(1, sum(self.steps_per_epoch[self.start_epoch:]))

    # ================================================================== the loop
    def _run(self) -> TrainResult:
        t0 = time.time()
        try:
            self._call("before_train")
            while self.epoch < self.config.epochs and self.stop is None:
                self._train_epoch()
        except BaseException as exc:
            self.error = exc
            if isinstance(exc, NonFiniteLossError):
                self.log.close_bar()
                self.log.event("nonfinite_loss", f"error: {exc}", step=exc.step, term=exc.term)
            raise
        finally:
            self.train_seconds = time.time() - t0
            self._call("after_train")  # hooks see ``self.error`` (None: the run ended normally)
        return self._result()

    def _train_epoch(self) -> None:
        """Train epoch ``self.epoch`` from ``self.batches_done`` until it ends or a stop is requested."""
        c = self.config
        e = self.current_epoch = self.epoch
        n_batches = self.batches_per_epoch[e]
        self.sampler.set_epoch(e, start=self.batches_done * c.images_per_gpu)
        if hasattr(self.train_ds, "set_epoch"):
            self.train_ds.set_epoch(e)
        loader = build_loader(self.train_ds, self.train_collate, self.sampler, c.images_per_gpu, c.num_workers,
                              c.seed, pin_memory=self.device.type == "cuda")
        set_train_mode(self.model, c.train_bn)
        self._last_batch = None
        self._call("before_epoch")
        it = iter(loader)
        try:
            while self.batches_done < n_batches and self.stop is None:
                self._call("before_step")
                t0 = time.perf_counter()
                micro = min(c.grad_accumulation, n_batches - self.batches_done)
                self.last_step = self.step([self._fetch(it, e) for _ in range(micro)])
                self.scheduler.step()
                self.global_step += 1
                self.batches_done += micro
                self.step_seconds = time.perf_counter() - t0
                self._call("after_step")
        finally:
            del it
        self.epoch_completed = self.batches_done >= n_batches
        if self.epoch_completed:
            self.epoch, self.batches_done = e + 1, 0
        self._call("after_epoch")

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)()

    def _fetch(self, it: Iterator, epoch: int) -> tuple[Batch, float] | None:
        """The next loader batch of the step and its loss scale (None: nothing to learn from)."""
        batch = unpack_batch(next(it))
        self._note_skipped(batch.skipped, epoch)
        if not batch.images:
            if not du.is_distributed() or self._last_batch is None:
                return None
            return self._last_batch, 0.0  # in DDP a batch must still join the gradient all-reduce
        if du.is_distributed():
            self._last_batch = batch
        return batch, 1.0

    # ================================================================== messages
    def _check(self, values: Mapping[str, torch.Tensor], targets: Sequence[dict]) -> None:
        """The step's non-finite guard, with the run's context in the message."""
        if find_nonfinite(values) is None:
            return
        c = self.config
        amp = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        total = c.images_per_gpu * self.dist.world_size * c.grad_accumulation
        last = None if self.last_checkpoint is None else str(self.last_checkpoint)
        check_losses(values, self.global_step, self.current_epoch + 1, self.optimizer.param_groups[0]["lr"], total, amp,
                     last, image_references(self.train_ds, targets))

    def _note_skipped(self, refs: list[str], epoch: int) -> None:
        if not refs:
            return
        self.skipped += len(refs)
        self._say("skipped_samples", f"skipped {len(refs)} sample(s) that failed to load (epoch {epoch + 1}): {', '.join(refs)}",
                  files=refs, epoch=epoch + 1)

    def _log_split(self, old: int, new: int, error: str) -> None:
        """Log line of the out-of-memory fallback (engine/oom.py)."""
        step, epoch = self.global_step + 1, self.current_epoch + 1
        msg = (f"out of memory at step {step} (epoch {epoch}) with {old} image(s) per forward pass ({error[:120]}); "
               f"freed memory and retried the step in micro-batches of {new} image(s) (same batch of "
               f"{self.config.images_per_gpu} images by gradient accumulation); later steps keep {new} per pass")
        self._say("oom_split", msg, step=step, epoch=epoch, images_per_pass=new, previous_images_per_pass=old)

    def _say(self, event: str, msg: str, **fields: Any) -> None:
        if self.dist.is_main:
            self.log.event(event, msg, **fields)
        else:
            print(f"[rank {self.dist.rank}] {msg}", file=sys.stderr)

    def _result(self) -> TrainResult:
        best_path = self.ckpt.best_path if (self.best is not None and self.ckpt.best_path.is_file()) else None
        stop = self.stop
        return TrainResult(
            run_dir=self.run_dir, epochs_completed=self.epoch, global_step=self.global_step,
            last_checkpoint=self.last_checkpoint, best_checkpoint=best_path,
            best_metric=None if self.best is None else self.best["metric"],
            best_value=None if self.best is None else self.best["value"], history=list(self.history),
            interrupted=bool(stop and stop.interrupted), skipped_samples=self.skipped,
            budget_reached=bool(stop and stop.reason == Stop.BUDGET), train_seconds=self.train_seconds,
            stop_reason=None if stop is None else stop.reason)


def train(config: Config, train_dataset: Any, val_dataset: Any = None, out_dir: str | Path = "runs",
          resume: str | Path | None = None, model: nn.Module | None = None, **options: Any) -> TrainResult:
    """Train ``model`` (default: built from ``config``) and return the :class:`TrainResult`.

    ``options`` are the other keyword arguments of :class:`Trainer` (``run_dir``,
    ``evaluate_fn``, ``device``, ``progress``, ``tensorboard``, ``log_every``, ``hooks``).

    Example: a hook that records the losses and ends the run once the total is below 0.5::

        from maskrcnn.engine import HookBase, train

        class EarlyStop(HookBase):
            def __init__(self):
                self.seen = []

            def after_step(self):
                losses = self.trainer.last_step.losses      # {"loss_rpn_class": ..., "loss": total}
                self.seen.append(losses)
                if losses["loss"] < 0.5:
                    self.trainer.request_stop("loss below 0.5")  # validates, saves, finishes

        result = train(config, dataset, hooks=[EarlyStop()])
    """
    return Trainer(config, train_dataset, val_dataset, out_dir=out_dir, resume=resume, model=model, **options).fit()

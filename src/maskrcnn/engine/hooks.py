"""Hooks: everything the training loop does besides the training step.

A hook is a :class:`HookBase` with any of ``before_train``, ``before_epoch``, ``before_step``,
``after_step``, ``after_epoch`` and ``after_train`` (Detectron2's ``HookBase``, Ultralytics'
callbacks). The trainer sets ``hook.trainer`` and calls every hook, in order, at each point;
``after_train`` runs also when the run fails (``trainer.error`` is then set). Built-in hooks,
in their order (:func:`default_hooks`):

* :class:`EMAHook` (``Config.ema_decay``): after each step, move the moving average of the
  weights (:mod:`.ema`), which validation and checkpoints then use;
* :class:`TimeBudgetHook` (``Config.max_train_minutes``): after each step, record its time,
  re-fit the schedule to the steps that still fit, stop when none does (:mod:`.budget`);
* :class:`MetricsLogger`: the run summary, progress bar, ``metrics.jsonl`` and TensorBoard
  records every ``log_every`` steps, one line per epoch without a bar, loss curves at the end;
* :class:`ValidationHook` (with a validation set): validation losses and ``evaluate_fn`` every
  ``validate_every`` epochs and at a stop, the best checkpoint;
* :class:`PeriodicCheckpoint`: a checkpoint pair after every epoch and at a stop;
* :class:`SignalHandler`: the first Ctrl-C / SIGTERM ends the run after the current step, with
  a checkpoint to resume from.

User hooks come after these; :class:`ThreadTuning` is one to pass when the CPU is shared. A hook
reads the trainer's attributes (``trainer.last_step.losses``, ``trainer.global_step``, ...) and
ends the run with ``trainer.request_stop(reason)``. In multi-process training every rank calls
every hook; a hook that stops the run must decide the same on every rank (e.g. from the losses,
which are averaged over the ranks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import first_line
from . import distributed as du
from . import state as run_state
from .loader import build_loader, class_statistics
from .logging import format_class_counts, format_duration, plot_loss_curves
from .optim import scaled_learning_rate, set_train_mode
from .runtime import StopRequest
from .samplers import TrainingSampler
from .schedule import LRSchedule
from .step import TOTAL
from .threads import ThreadTuner
from .validation import better_result, validation_losses

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["HookBase", "Stop", "default_hooks", "EMAHook", "TimeBudgetHook", "MetricsLogger", "ValidationHook",
           "PeriodicCheckpoint", "SignalHandler", "ThreadTuning"]


@dataclass
class Stop:
    """Why the run ends before its last epoch.

    Attributes:
        reason: :attr:`BUDGET`, :attr:`SIGNAL` or the words of the hook that asked.
        interrupted: the run is meant to be continued with ``--resume`` (no validation).
        validate: validate before the last checkpoint (as at the end of a run).
        signal_name: ``SIGINT`` / ``SIGTERM`` for a signal.
    """

    BUDGET: ClassVar[str] = "time budget"
    SIGNAL: ClassVar[str] = "signal"

    reason: str
    interrupted: bool = False
    validate: bool = True
    signal_name: str | None = None


class HookBase:
    """Base class of training hooks: override the points you need (each does nothing here).

    ``self.trainer`` is the :class:`~maskrcnn.engine.trainer.Trainer`, set before ``before_train``.
    """

    trainer: "Trainer"

    def before_train(self) -> None:
        """After setup (and resume), before the first step."""

    def after_train(self) -> None:
        """After the last epoch, a stop, or a failure (``trainer.error``)."""

    def before_epoch(self) -> None:
        """Before the first step of ``trainer.current_epoch`` (or of what is left of it)."""

    def after_epoch(self) -> None:
        """When the epoch ended (``trainer.epoch_completed``) or a stop cut it short (``trainer.stop``)."""

    def before_step(self) -> None:
        """Before the batches of the next optimizer step are fetched."""

    def after_step(self) -> None:
        """After the optimizer and schedule stepped: ``trainer.last_step`` (losses, grad norm,
        images, lr), ``trainer.step_seconds``, ``trainer.global_step`` (steps done)."""


def default_hooks(t: "Trainer") -> list[HookBase]:
    """The built-in hooks of a run, in calling order."""
    hooks: list[HookBase] = []
    if t.ema is not None:
        hooks.append(EMAHook())
    if t.budget is not None:
        hooks.append(TimeBudgetHook())
    hooks.append(MetricsLogger())
    if t.val_ds is not None:
        hooks.append(ValidationHook())
    hooks += [PeriodicCheckpoint(), SignalHandler()]
    return hooks


# ============================================================================ weight average


class EMAHook(HookBase):
    """Moves ``trainer.ema`` (:class:`~.ema.ModelEMA`) towards the weights after every optimizer
    step, on every rank (the weights are the same on all, so are the averages)."""

    def after_step(self) -> None:
        t = self.trainer
        t.ema.update(t.module)


# ============================================================================ time budget


class TimeBudgetHook(HookBase):
    """Ends the run when ``Config.max_train_minutes`` is spent; the schedule follows the steps that fit.

    Rank 0 decides for all ranks (their step times differ, the schedule must not). The budget
    (``trainer.budget``, a :class:`~.budget.TimeBudget`) is saved in checkpoints, so a resumed run
    gets only the time that is left.
    """

    def before_train(self) -> None:
        t = self.trainer
        t.budget.start()
        if t.budget.exhausted():
            t.log.info(f"time budget of {t.config.max_train_minutes:g} min already spent; nothing to train "
                       "(raise max_train_minutes to continue)")
            t.request_stop(Stop.BUDGET)

    def after_step(self) -> None:
        t = self.trainer
        t.budget.step_done(t.step_seconds)
        left = t.budget.steps_left()
        if du.is_distributed():
            left = int(du.broadcast_object(left))  # type: ignore[arg-type]
        t.scheduler.set_schedule(LRSchedule.from_config(t.config, max(1, min(t.total_steps, t.global_step + left))))
        if left == 0:
            t.request_stop(Stop.BUDGET)

    def after_epoch(self) -> None:
        t = self.trainer
        if t.stop is not None and t.stop.reason == Stop.BUDGET:
            c = t.config
            done = t.epoch + t.batches_done / max(1, t.batches_per_epoch[min(t.epoch, c.epochs - 1)])
            t.log.event("time_budget", f"time budget of {c.max_train_minutes:g} min reached after step "
                        f"{t.global_step} ({done:.2f} epochs)", step=t.global_step)


# ============================================================================ metrics


class MetricsLogger(HookBase):
    """The run's summary, progress bar, ``metrics.jsonl`` / TensorBoard records and loss curves (rank 0).

    A ``train`` record every ``log_every`` steps holds the means of the loss terms (by the
    model's keys), ``loss`` (their sum), ``images_per_s`` and ``grad_norm``, with ``step``,
    ``epoch`` and ``lr`` (the rate the last step used).
    """

    def __init__(self) -> None:
        self._acc: dict[str, float] = {}
        self._epoch_rows: list[dict[str, float]] = []
        self._ema: float | None = None
        self._t_epoch = 0.0

    def before_train(self) -> None:
        _print_summary(self.trainer)

    def before_epoch(self) -> None:
        t, c = self.trainer, self.trainer.config
        self._acc, self._epoch_rows, self._t_epoch = {}, [], time.time()
        t.log.progress_bar(t.steps_per_epoch[t.current_epoch], f"epoch {t.current_epoch + 1}/{c.epochs}",
                           initial=t.batches_done // c.grad_accumulation)

    def after_step(self) -> None:
        t = self.trainer
        if not t.dist.is_main:
            return
        s, seconds = t.last_step, t.step_seconds
        self._ema = seconds if self._ema is None else 0.9 * self._ema + 0.1 * seconds
        ips = s.images * t.dist.world_size / max(seconds, 1e-9)
        t.log.update_bar({k: v for k, v in s.losses.items()}, s.lr, ips, self._eta())
        self._epoch_rows.append({**s.losses, "images_per_s": ips})
        for k, v in {**s.losses, "images_per_s": ips, "grad_norm": s.grad_norm}.items():
            self._acc[k] = self._acc.get(k, 0.0) + v
        self._acc["_n"] = self._acc.get("_n", 0) + 1
        self._acc["_lr"] = s.lr
        if self._acc["_n"] >= t.log_every:
            self._flush()

    def after_epoch(self) -> None:
        t = self.trainer
        self._flush()
        t.log.close_bar()
        rows = self._epoch_rows
        if t.show_progress or not rows or not t.dist.is_main or not t.epoch_completed:
            return
        mean = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in rows[-1]}
        terms = ", ".join(f"{k} {v:.4f}" for k, v in mean.items() if k not in (TOTAL, "images_per_s"))
        t.log.info(f"epoch {t.current_epoch + 1}/{t.config.epochs}: loss {mean.get(TOTAL, float('nan')):.4f} ({terms}), "
                   f"lr {t.optimizer.param_groups[0]['lr']:.3g}, {mean['images_per_s']:.1f} images/s, "
                   f"{format_duration(time.time() - self._t_epoch)}, eta {format_duration(self._eta())}")

    def after_train(self) -> None:
        t = self.trainer
        t.log.close_bar()
        if not t.dist.is_main or t.error is not None:
            return
        png = plot_loss_curves(t.log.metrics_path, t.run_dir / "loss_curves.png")
        stopped = t.stop is not None and t.stop.interrupted
        msg = f"{'stopped' if stopped else 'finished'}: {t.epoch} epochs, {t.global_step} steps in {format_duration(t.train_seconds)}"
        if t.stop is not None and t.stop.reason == Stop.BUDGET:
            msg += f" (time budget of {t.config.max_train_minutes:g} min)"
        elif t.stop is not None and not t.stop.interrupted:
            msg += f" (stopped: {t.stop.reason})"
        if t.skipped:
            msg += f"; {t.skipped} samples skipped (see metrics.jsonl)"
        t.log.info(msg)
        if t.best is not None and t.ckpt.best_path.is_file():
            t.log.info(f"best ({t.best['metric']} {t.best['value']:.4f}, epoch {t.best['epoch']}): {t.ckpt.best_path}")
        if t.last_checkpoint is not None:
            t.log.info(f"last: {t.last_checkpoint}")
        if png is not None:
            t.log.info(f"loss curves: {png}")

    def _eta(self) -> float:
        """Seconds left: the remaining steps at the smoothed step time, at most the time budget left."""
        t = self.trainer
        eta = (t.total_steps - t.global_step) * (self._ema or 0.0)
        return eta if t.budget is None else min(eta, t.budget.remaining)

    def _flush(self) -> None:
        t, acc = self.trainer, self._acc
        if not t.dist.is_main or not acc.get("_n"):
            return
        n, lr = acc.pop("_n"), acc.pop("_lr")
        record = {"type": "train", "epoch": t.current_epoch + 1, "step": t.global_step, "lr": lr}
        record.update({k: v / n for k, v in acc.items()})
        t.log.log(record, step=t.global_step)
        acc.clear()


def _epoch_span(t: "Trainer") -> str:
    """``12 epochs``, or ``epochs 3..5`` for a run that continues a model (``start_epoch``)."""
    c = t.config
    return f"{c.epochs} epochs" if not t.start_epoch else f"epochs {t.start_epoch + 1}..{c.epochs}"


def _print_summary(t: "Trainer") -> None:
    """The run's settings, data and class counts (rank 0)."""
    c, d = t.config, t.dist
    if not d.is_main:
        return
    total_batch = c.images_per_gpu * d.world_size * c.grad_accumulation
    n_params = sum(p.numel() for p in t.params)
    amp = "fp32" if t.amp_dtype is None else str(t.amp_dtype).replace("torch.", "") + " autocast, channels-last"
    amp += f" (amp={c.amp})"
    lines = [
        f"run: {t.run_dir}",
        f"device: {t.device} x {d.world_size} process(es), amp: {amp}, total batch {total_batch} "
        f"= {c.images_per_gpu} images x {d.world_size} x {c.grad_accumulation} accumulation",
        f"learning rate {scaled_learning_rate(c, d.world_size):.4g} ({c.learning_rate:g} for a batch of {c.base_batch_size}), "
        f"schedule {c.lr_schedule}, {_epoch_span(t)} = {t.total_steps} optimizer steps "
        f"({t.steps_per_epoch[t.start_epoch]} in the first epoch)"
        + (f"; time budget {c.max_train_minutes:g} min (the schedule follows the steps that fit)" if t.budget else ""),
        f"optimizer: {c.optimizer}",
        f"trainable: {n_params:,} parameters in {len(t.trainable)} tensors (layers={c.layers}, train_bn={c.train_bn})",
        f"training images: {len(t.train_ds)}"
        + (f", validation images: {len(t.val_ds)}" if t.val_ds is not None else ", no validation set"),
    ]
    if c.warmup_iters >= t.total_steps and t.budget is None:
        lines.append(f"note: warmup_iters={c.warmup_iters} is not shorter than the run ({t.total_steps} steps); "
                     "the learning rate never reaches its full value (lower warmup_iters)")
    if t.epoch > t.start_epoch or t.batches_done or t.global_step:
        lines.append(f"resumed at epoch {t.epoch + 1}, batch {t.batches_done}, step {t.global_step}")
    for line in lines:
        t.log.info(line)
    if t.class_ids is not None:
        names = _class_names(t)
        stats = class_statistics(t.class_ids, c.num_classes, t.factors)
        t.log.info("instances per class in the training set:\n" + format_class_counts(
            names, stats["images"], stats["instances"], stats["expected"] if t.factors is not None else None))
        t.log.log({"type": "class_counts", "classes": names, **stats})


def _class_names(t: "Trainer") -> list[str]:
    c = t.config
    if c.class_names is not None:
        return list(c.class_names)
    from .loader import base_dataset

    names = list(getattr(base_dataset(t.train_ds), "class_names", []) or [])
    if len(names) == c.num_classes:
        return names
    return ["BG"] + [f"class {i}" for i in range(1, c.num_classes)]


# ============================================================================ validation


class ValidationHook(HookBase):
    """Validation losses (all ranks) and ``evaluate_fn`` metrics (rank 0) every ``validate_every``
    epochs, after the last one and at a stop that validates; tracks the best result
    (:func:`.validation.better_result`) and writes ``best.safetensors``."""

    def after_epoch(self) -> None:
        t, c = self.trainer, self.trainer.config
        stop = t.stop
        if not c.validate_every or (stop is not None and not stop.validate):
            return
        e = t.current_epoch
        periodic = t.epoch_completed and ((e + 1) % c.validate_every == 0 or e + 1 == c.epochs)
        if not (periodic or stop is not None):
            return
        record = self.validate()
        t.history.append(record)
        best = better_result(t.best, record)
        if best is not None:
            t.best = best
            run_state.save_best(t, record)

    def validate(self) -> dict[str, Any]:
        """One validation of the current weights (their moving average with ``ema_decay``): the ``val``
        record (also logged)."""
        t, c, d = self.trainer, self.trainer.config, self.trainer.dist
        sampler = TrainingSampler(len(t.val_ds), seed=c.seed, shuffle=False, rank=d.rank, world_size=d.world_size)
        loader = build_loader(t.val_ds, t.val_collate, sampler, c.images_per_gpu, c.num_workers, c.seed,
                              pin_memory=t.device.type == "cuda")
        record: dict[str, Any] = {"type": "val", "epoch": t.current_epoch + 1, "step": t.global_step}
        module = t.eval_module
        losses = validation_losses(module, loader, t.device, seed=c.seed, amp_dtype=t.amp_dtype)
        record[TOTAL] = losses.pop(TOTAL)
        record.update(losses)
        if t.evaluate_fn is not None:
            metrics = None
            if d.is_main:
                module.eval()
                try:
                    metrics = {k: float(v) for k, v in (t.evaluate_fn(module, t.val_source) or {}).items()}
                except Exception as exc:  # noqa: BLE001 - a failed evaluation must not end a long run
                    first = first_line(exc, "")
                    t.log.event("evaluation_failed", f"evaluation after epoch {t.current_epoch + 1} failed "
                                f"({type(exc).__name__}: {first}); continuing with validation losses")
            record.update(du.broadcast_object(metrics) or {})  # type: ignore[arg-type]
        set_train_mode(t.model, c.train_bn)
        if t.ema is not None:
            t.ema.model.eval()
        summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("type", "epoch", "step"))
        t.log.info(f"validation after epoch {t.current_epoch + 1}: {summary}")
        t.log.log(record, step=t.global_step)
        return record


# ============================================================================ checkpoints and signals


class PeriodicCheckpoint(HookBase):
    """A checkpoint pair after every ``Config.checkpoint_every``-th epoch and the last one
    (``epoch_NNNN``), and at any stop (``step_NNNNNN`` inside an epoch); the last
    ``Config.checkpoint_keep`` pairs are kept (:mod:`.checkpoint`)."""

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.epoch_completed:
            run_state.save(t, t.ckpt.step_stem(t.global_step))
        elif t.stop is not None or t.epoch >= t.config.epochs or t.epoch % t.config.checkpoint_every == 0:
            run_state.save(t, t.ckpt.epoch_stem(t.epoch))


class SignalHandler(HookBase):
    """The first Ctrl-C or SIGTERM ends the run after the current step (every rank stops at the
    same step: the flag is reduced with the losses), saves a checkpoint and says how to resume;
    a second Ctrl-C stops at once. Handlers are restored after the run."""

    def __init__(self) -> None:
        self.request = StopRequest()

    def before_train(self) -> None:
        self.request.__enter__()
        self.trainer.add_stop_source(lambda: self.request.requested)

    def after_step(self) -> None:
        t = self.trainer
        if t.last_step.stop and t.stop is None:
            t.stop = Stop(Stop.SIGNAL, interrupted=True, validate=False, signal_name=self.request.signal_name)

    def after_epoch(self) -> None:
        t = self.trainer
        if t.stop is None or t.stop.reason != Stop.SIGNAL:
            return
        name = t.stop.signal_name or "stop"
        where = (f"stopped after epoch {t.current_epoch + 1}" if t.epoch_completed
                 else f"saved {t.last_checkpoint} after step {t.global_step}")
        t.log.event("interrupted", f"{name}: {where}; continue with: maskrcnn train --resume {t.run_dir}", step=t.global_step)

    def after_train(self) -> None:
        self.request.__exit__(None, None, None)


# ============================================================================ threads


class ThreadTuning(HookBase):
    """Trains with 1 torch thread or ``max_threads`` (default: 2, at most the core count),
    whichever is faster right now (:class:`~.threads.ThreadTuner`); for CPUs shared with other
    jobs. ``tuner.summary()`` and ``tuner.checks`` say what was used."""

    def __init__(self, max_threads: int | None = None, every_s: float = 20.0) -> None:
        import os

        self.tuner = ThreadTuner(max_threads or max(1, min(2, os.cpu_count() or 1)), every_s)

    def before_train(self) -> None:
        self.tuner.check()

    def after_step(self) -> None:
        self.tuner.update(self.trainer.step_seconds, time.perf_counter())

"""A run's saved state: what the trainer writes into a checkpoint pair and reads back on resume.

The weights file holds the model (and the config YAML, readable by ``maskrcnn.load``): with
``ema_decay`` the moving average of the weights (:mod:`.ema`), whose raw training weights then go
to the state file as ``train_model/<name>``. The state file holds the optimizer tensors and every
rank's RNG states as tensors, and as JSON: the
position (epoch, batch inside it, optimizer step), the batch layout, the optimizer's scalars,
the scheduler, the grad scaler, the best validation result, the history, the skipped-sample
count, the time budget and the EMA's update count (:mod:`.checkpoint` writes the pair atomically).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MaskRCNNError
from . import distributed as du
from .checkpoint import (CONFIG_KEY, TRAIN_MODEL_PREFIX, capture_rng, load_optimizer_state, model_state_tensors,
                         optimizer_state, restore_rng, train_model_tensors)
from .guard import NonFiniteLossError
from .resume import find_resume_point
from .rundir import write_run_files

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["STATE_VERSION", "write_config", "state_json", "save", "save_best", "restore",
           "training_weights"]

STATE_VERSION = 1


def write_config(t: "Trainer", resuming: bool) -> None:
    """``config.yaml`` and ``run.yaml`` of the run (rank 0, :func:`.rundir.write_run_files`); on
    resume, name the fields that changed."""
    if not t.dist.is_main:
        return
    changed = write_run_files(t.run_dir, t.config, t.run_inputs, compare=resuming)
    if changed:
        t.log.info(f"resuming with changed config fields: {', '.join(changed)}")


def state_json(t: "Trainer") -> dict[str, Any]:
    """The JSON part of the state file."""
    c = t.config
    _, opt_meta = optimizer_state(t.optimizer)
    return {
        "version": STATE_VERSION, "epoch": t.epoch, "batches_done": t.batches_done, "global_step": t.global_step,
        "world_size": t.dist.world_size, "images_per_gpu": c.images_per_gpu, "grad_accumulation": c.grad_accumulation,
        "optimizer": opt_meta, "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
        "best": t.best, "skipped_samples": t.skipped, "history": t.history,
        "budget": None if t.budget is None else t.budget.state(),
        "ema": None if t.ema is None else t.ema.state(),
    }


def save(t: "Trainer", stem: str) -> Path | None:
    """Write the checkpoint pair ``stem`` (collective: every rank calls it); the weights path on rank 0."""
    rank = t.dist.rank
    bad = [n for n, p in t.module.named_parameters() if not torch.isfinite(p).all()]  # same on every rank
    if bad:
        raise NonFiniteLossError(
            f"non-finite weights in {bad[0]} at step {t.global_step}; not saved, last good checkpoint kept: "
            f"{t.last_checkpoint}; lower learning_rate or use amp=none", term=bad[0], step=t.global_step)
    rng_tensors, rng_meta = capture_rng(prefix=f"rng/rank{rank}")
    gathered = du.all_gather_objects((rank, rng_tensors, rng_meta))
    path = None
    if t.dist.is_main:
        opt_tensors, _ = optimizer_state(t.optimizer)
        state = state_json(t)
        state["rng"] = {}
        tensors = dict(opt_tensors)
        if t.ema is not None:
            tensors.update({TRAIN_MODEL_PREFIX + k: v for k, v in model_state_tensors(t.module).items()})
        for r, tens, meta in gathered:  # type: ignore[misc]
            tensors.update(tens)
            state["rng"][str(r)] = meta
        meta = {CONFIG_KEY: t.config.to_yaml(), "epoch": str(t.epoch), "global_step": str(t.global_step)}
        path = t.ckpt.save(stem, model_state_tensors(t.eval_module), meta, tensors, state)
        t.last_checkpoint = path
    du.barrier()
    return path


def save_best(t: "Trainer", record: dict[str, Any]) -> None:
    """``best.safetensors`` with the metric and its value in the metadata (rank 0)."""
    if not t.dist.is_main or t.best is None:
        return
    meta = {CONFIG_KEY: t.config.to_yaml(), "epoch": str(record["epoch"]), "global_step": str(t.global_step),
            "metric": t.best["metric"], "value": repr(t.best["value"])}
    t.ckpt.save_best(model_state_tensors(t.eval_module), meta)


def restore(t: "Trainer") -> None:
    """Load the run's last checkpoint pair into the trainer (model, optimizer, schedule, scaler,
    RNG, position, best, history, budget)."""
    c, rank = t.config, t.dist.rank
    point = find_resume_point(t.ckpt, t.module, t.optimizer)  # every file checked; a bad pair skipped
    weights, tensors, state, stem = point.weights, point.tensors, point.state, point.stem
    for note in point.notes(t.ckpt.weights_path(stem)) if t.dist.is_main else []:
        t.log.event("checkpoint_skipped", note)
    _restore_weights(t, weights, tensors, state)
    fresh_lr = [g["initial_lr"] for g in t.optimizer.param_groups]
    try:
        load_optimizer_state(t.optimizer, tensors, state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise MaskRCNNError(f"{t.ckpt.state_path(stem)}: optimizer state does not fit ({exc}); "
                            "keep layers and train_bn as in the run's config.yaml") from None
    for g, lr in zip(t.optimizer.param_groups, fresh_lr):
        g["initial_lr"] = lr
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler.is_enabled() and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    if str(rank) in state.get("rng", {}):
        restore_rng(tensors, state["rng"][str(rank)], prefix=f"rng/rank{rank}")
    t.epoch, t.batches_done, t.global_step = int(state["epoch"]), int(state["batches_done"]), int(state["global_step"])
    t.best = state.get("best")
    t.skipped = int(state.get("skipped_samples", 0))
    t.history = list(state.get("history", []))
    if t.budget is not None:
        t.budget.resume_from(state.get("budget"))
    t.last_checkpoint = t.ckpt.weights_path(stem)
    old_images = state["world_size"] * state["images_per_gpu"]
    new_images = t.dist.world_size * c.images_per_gpu
    if t.batches_done and (old_images != new_images or state["grad_accumulation"] != c.grad_accumulation):
        # the position is kept in images seen; the resume is no longer bit-exact
        seen = t.batches_done * old_images
        t.batches_done = (seen // new_images) // c.grad_accumulation * c.grad_accumulation
        if t.dist.is_main:
            print("note: batch layout changed since the checkpoint; resuming near the same position", file=sys.stderr)


def training_weights(weights: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The raw training weights of a checkpoint pair: the state file's ``train_model/`` tensors when
    the weights file holds their moving average (``ema_decay``), else the weights themselves."""
    return train_model_tensors(tensors) or weights


def _restore_weights(t: "Trainer", weights: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                     state: dict[str, Any]) -> None:
    """The model continues from the raw training weights; the moving average from the weights file
    (or, when the run had none, starts from them)."""
    raw = training_weights(weights, tensors)
    t.module.load_state_dict(raw, strict=True)
    if t.ema is not None:  # weights: the average, or the raw weights when the run had none (it starts there)
        t.ema.load(weights, int((state.get("ema") or {}).get("updates", 0)) if raw is not weights else 0)
    elif raw is not weights and t.dist.is_main:
        t.log.info("the checkpoint holds a moving average of the weights (ema_decay) but ema_decay is now off; "
                   "training continues from the raw weights")

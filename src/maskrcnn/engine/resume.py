"""Which checkpoint a run resumes from: every file checked before use, a bad pair skipped.

A run's ``checkpoints/`` may hold a truncated file (a full disk or a copy cut short), a foreign
one (another run's, another program's), a hand-edited ``last`` pointer or a pair whose weights and
state do not belong together. :func:`find_resume_point` tries the pair ``last`` names, then every
other pair, newest written first, and returns the first one whose files are complete safetensors
files, whose state JSON has every field the trainer reads, whose RNG and optimizer tensors have
the right types and shapes, and whose weights fit the model being resumed. Every file it skipped
is reported with the reason (one line each); when no pair is usable it raises one
:class:`~maskrcnn.errors.MaskRCNNError` naming the newest bad file, why, and the fix.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MaskRCNNError
from .checkpoint import CHECKPOINT_FORMAT, load_safetensors, read_safetensors_metadata, train_model_tensors

if TYPE_CHECKING:
    from .checkpoint import CheckpointManager

__all__ = ["BadCheckpoint", "ResumePoint", "find_resume_point", "load_pair"]

#: Optimizer state tensors that have their parameter's shape (SGD momentum, AdamW moments).
_PARAM_SHAPED = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
_MT_WORDS = 624  # numpy's and python's Mersenne Twister state size


class BadCheckpoint(ValueError):
    """One checkpoint file cannot be used: ``path``, ``reason`` and, when it is not the file's fault, a ``fix``."""

    def __init__(self, path: Path, reason: str, fix: str | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.fix = path, reason, fix


@dataclass
class ResumePoint:
    """A checked checkpoint pair and what was skipped to find it."""

    stem: str
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    skipped: list[BadCheckpoint] = field(default_factory=list)

    def notes(self, weights_path: Path) -> list[str]:
        """One line per skipped file, then which pair is used instead (empty when nothing was skipped)."""
        if not self.skipped:
            return []
        lines = [f"{bad.path}: {bad.reason}; skipped" for bad in self.skipped]
        lines.append(f"resuming from {weights_path} (epoch {self.state['epoch']}, step {self.state['global_step']}), "
                     "the newest usable checkpoint; later steps are trained again")
        return lines


# --------------------------------------------------------------------------- checks of the state JSON


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise BadCheckpoint(path, f"not a training state file of this package ({what})")


def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_state_json(state: Any, path: Path) -> None:
    """Every field the trainer reads, with its type (raises :class:`BadCheckpoint`)."""
    _need(isinstance(state, dict), path, "state is not a JSON object")
    _need(state.get("version") == 1, path, f"unknown version {state.get('version')!r}")
    for key, low in (("epoch", 0), ("batches_done", 0), ("global_step", 0), ("world_size", 1),
                     ("images_per_gpu", 1), ("grad_accumulation", 1)):
        _need(_is_int(state.get(key), low), path, f"{key}={state.get(key)!r}")
    opt = state.get("optimizer")
    _need(isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("scalars", {}), dict),
          path, "no optimizer state")
    for g in opt["param_groups"]:
        _need(isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(i) for i in g["params"]),
              path, "bad optimizer parameter groups")
    sched = state.get("scheduler")
    _need(isinstance(sched, dict) and _is_int(sched.get("next_step")), path, "no scheduler position")
    _need(state.get("scaler") is None or isinstance(state["scaler"], dict), path, "bad grad scaler state")
    _need(state.get("best") is None or isinstance(state["best"], dict), path, "bad best-checkpoint record")
    _need(isinstance(state.get("history", []), list), path, "bad validation history")
    ema = state.get("ema")
    _need(ema is None or (isinstance(ema, dict) and _is_int(ema.get("updates"))), path, "bad moving-average record")
    budget = state.get("budget")
    _need(budget is None or (isinstance(budget, dict) and isinstance(budget.get("spent_s", 0.0), numbers.Real)),
          path, "bad time budget record")
    rng = state.get("rng")
    _need(isinstance(rng, dict), path, "no random generator states")
    for rank, meta in rng.items():
        ok = isinstance(meta, dict) and isinstance(meta.get("numpy"), dict) and isinstance(meta.get("python"), list)
        if ok:
            n, py = meta["numpy"], meta["python"]
            ok = (isinstance(n.get("name"), str) and _is_int(n.get("pos")) and n["pos"] <= _MT_WORDS
                  and _is_int(n.get("has_gauss")) and isinstance(n.get("cached_gaussian"), numbers.Real)
                  and len(py) == 3 and isinstance(py[1], list) and len(py[1]) == _MT_WORDS + 1
                  and all(_is_int(v) for v in py[1]))
        _need(ok, path, f"bad random generator state of rank {rank}")


def _check_state_tensors(tensors: dict[str, torch.Tensor], state: dict[str, Any], path: Path,
                         optimizer: torch.optim.Optimizer | None) -> None:
    """RNG tensors of every rank in the JSON; optimizer tensors finite and shaped like their parameters."""
    torch_state = torch.get_rng_state()
    for rank in state["rng"]:
        t = tensors.get(f"rng/rank{rank}/torch")
        _need(t is not None and t.dtype == torch.uint8 and t.shape == torch_state.shape, path,
              f"bad torch generator state of rank {rank}")
        t = tensors.get(f"rng/rank{rank}/numpy")
        _need(t is not None and t.dtype == torch.int64 and t.shape == (_MT_WORDS,), path,
              f"bad numpy generator state of rank {rank}")
    shapes: dict[int, tuple[int, ...]] = {}
    if optimizer is not None:
        saved, current = state["optimizer"]["param_groups"], optimizer.param_groups
        sizes = ([len(g["params"]) for g in saved], [len(g["params"]) for g in current])
        if sizes[0] != sizes[1]:
            raise BadCheckpoint(path, f"its optimizer has parameter groups of {sizes[0]} tensors, the model being "
                                f"trained {sizes[1]}", fix="keep layers and train_bn as in the run's config.yaml")
        for g_saved, g_now in zip(saved, current):
            shapes.update({i: tuple(p.shape) for i, p in zip(g_saved["params"], g_now["params"])})
    for name, t in tensors.items():
        if not name.startswith("optimizer/"):
            continue
        parts = name.split("/")
        _need(len(parts) == 3 and parts[1].isdigit(), path, f"unknown tensor {name!r}")
        idx, key = int(parts[1]), parts[2]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BadCheckpoint(path, f"optimizer tensor {name} contains NaN or Inf")
        if optimizer is not None:
            _need(idx in shapes, path, f"optimizer tensor {name} of no parameter")
            if key in _PARAM_SHAPED and tuple(t.shape) != shapes[idx]:
                raise BadCheckpoint(path, f"optimizer tensor {name} has shape {tuple(t.shape)}, its parameter "
                                    f"{shapes[idx]}", fix="resume with the run's own config.yaml")


def _check_weights(weights: dict[str, torch.Tensor], meta: dict[str, str], path: Path,
                   expected: dict[str, torch.Tensor] | None) -> None:
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise BadCheckpoint(path, f"not a training checkpoint of this package (format {meta.get('format')!r}, "
                            f"expected {CHECKPOINT_FORMAT!r})")
    _check_fit(weights, path, expected)


def _check_fit(weights: dict[str, torch.Tensor], path: Path, expected: dict[str, torch.Tensor] | None) -> None:
    """``weights`` have the model's names and shapes (with ``expected``) and are finite."""
    if expected is not None:
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        fix = "resume with the run's own config.yaml"
        if missing or extra:
            detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise BadCheckpoint(path, f"does not fit the configured model ({detail}, "
                                f"{len(missing)} missing, {len(extra)} unexpected)", fix=fix)
        for k, t in weights.items():
            if tuple(t.shape) != tuple(expected[k].shape):
                raise BadCheckpoint(path, f"does not fit the configured model ({k} has shape {tuple(t.shape)}, "
                                    f"the model {tuple(expected[k].shape)})", fix=fix)
    for k, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BadCheckpoint(path, f"weight {k} contains NaN or Inf")


# --------------------------------------------------------------------------- pairs


def load_pair(manager: CheckpointManager, stem: str, model: torch.nn.Module | None = None,
              optimizer: torch.optim.Optimizer | None = None, strict: bool = True
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state tensors, state JSON) of the pair ``stem``, every part checked.

    Both files must be complete safetensors files with a JSON ``state``; with ``strict`` the state
    has every field the trainer reads and the weights are this package's, finite; with ``model`` /
    ``optimizer`` the weights must fit the model's state dict and the optimizer tensors its
    parameters. Raises :class:`BadCheckpoint` naming the first bad file.
    """
    wpath, spath = manager.weights_path(stem), manager.state_path(stem)
    for p in (spath, wpath):
        if not p.is_file():
            raise BadCheckpoint(p, "missing (its pair is incomplete)")
    try:
        smeta = read_safetensors_metadata(spath)
    except (OSError, ValueError) as exc:
        raise BadCheckpoint(spath, str(exc)) from None
    if "state" not in smeta:
        raise BadCheckpoint(spath, "not a training state file of this package (no 'state' metadata)")
    try:
        state = json.loads(smeta["state"])
    except (ValueError, RecursionError):
        raise BadCheckpoint(spath, "not a training state file of this package (its 'state' is not JSON)") from None
    if not isinstance(state, dict):
        raise BadCheckpoint(spath, "not a training state file of this package (state is not a JSON object)")
    if strict:
        _check_state_json(state, spath)
    try:
        wmeta = read_safetensors_metadata(wpath)
    except (OSError, ValueError) as exc:
        raise BadCheckpoint(wpath, str(exc)) from None
    step = wmeta.get("global_step")
    if step is not None and "global_step" in state and step != str(state["global_step"]):
        raise BadCheckpoint(wpath, f"from step {step} but its state file from step {state['global_step']} "
                            "(files of different checkpoints)")
    tensors, weights = {}, {}
    for p, out in ((spath, tensors), (wpath, weights)):
        try:
            out.update(load_safetensors(p))
        except (OSError, ValueError) as exc:
            raise BadCheckpoint(p, str(exc)) from None
    if strict:
        expected = None if model is None else getattr(model, "module", model).state_dict()
        _check_weights(weights, wmeta, wpath, expected)
        raw = train_model_tensors(tensors)
        if raw:  # the raw training weights beside their moving average (ema_decay)
            _check_fit(raw, spath, expected)
        _check_state_tensors(tensors, state, spath, optimizer)
    return weights, tensors, state


def find_resume_point(manager: CheckpointManager, model: torch.nn.Module | None = None,
                      optimizer: torch.optim.Optimizer | None = None, strict: bool = True) -> ResumePoint:
    """The newest usable checkpoint pair of ``manager``'s run: ``last``'s pair, else the newest
    written that passes :func:`load_pair`. Raises one-line :class:`MaskRCNNError` when none does."""
    skipped: list[BadCheckpoint] = []
    try:
        last = manager.read_last()
    except ValueError as exc:
        last = None
        skipped.append(BadCheckpoint(manager.last_path, str(exc)))
    stems = manager.stems()
    if last is not None and last not in stems:
        skipped.append(BadCheckpoint(manager.last_path, f"names {last}, which has no checkpoint files"))
    order = ([last] if last in stems else []) + [s for s in stems if s != last]
    for stem in order:
        try:
            weights, tensors, state = load_pair(manager, stem, model, optimizer, strict)
        except BadCheckpoint as bad:
            skipped.append(bad)
            continue
        return ResumePoint(stem, weights, tensors, state, skipped)
    run = manager.run_dir
    if not skipped:
        raise MaskRCNNError(f"{run}: no checkpoint to resume from (checkpoints/ is empty); start a new run without --resume")
    first = next((b for b in skipped if b.path != manager.last_path), skipped[0])
    fix = first.fix or "start a new run without --resume (or restore the file from a backup)"
    more = len([b for b in skipped if b.path != manager.last_path]) - 1
    others = f"; {more} other checkpoint file(s) unusable too" if more > 0 else ""
    raise MaskRCNNError(f"{first.path}: {first.reason}{others}; no usable checkpoint in {manager.dir}; {fix}")

"""``maskrcnn tune``: hyperparameter search with Optuna over time-budgeted runs of our engine.

Each trial is one :func:`maskrcnn.engine.train` run of the base config with the trial's values
(:mod:`.space`) and ``max_train_minutes = minutes_per_trial``; it validates every
``validate_every`` epochs, and :class:`ReportToTrial` reports each validation's mask AP to the
trial and ends the run when the pruner (Optuna's median pruner, from the second validation on:
:func:`make_pruner`) says so. The trial's value is its
best validation mask AP. Trial 0 of a new study (``tpe``, ``random``) is the base config for the
fields whose values the space holds (:func:`base_values`), marked ``(base)`` in the table, so the
study shows what the search won over it. After every trial ``best.yaml`` (the base config with the best trial's
values; the base's own length and name), ``trials.md`` (one row per trial) and the plots of the
study (:mod:`.plots`: ``history.png``, ``slices.png``, ``importances.png``) are rewritten in the
output folder, so an interrupted search keeps what it found.

The study lives in ``--storage`` (default ``sqlite:///<out>/study.db``): running the same command
again continues it up to ``trials`` finished trials; several processes or machines sharing one
database URL (Optuna's RDB storage) run trials in parallel. Samplers: ``tpe`` (Bayesian, default),
``random`` and ``grid`` (floats on 3 points, see :func:`.space.grid_of`), seeded with ``Config.seed``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..engine.hooks import HookBase
from ..errors import MaskRCNNError
from .plots import write_study_plots
from .space import Param, decode, encode, grid_of

__all__ = ["tune", "TuneResult", "ReportToTrial", "SAMPLERS"]

SAMPLERS = ("tpe", "random", "grid")


class ReportToTrial(HookBase):
    """Reports each validation's ``mask_ap`` to an Optuna trial (step: the epoch) and stops the run
    (without another validation) when the trial should be pruned."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.reported = 0
        self.pruned = False

    def after_epoch(self) -> None:
        t = self.trainer
        records = [r for r in t.history if r.get("type") == "val"]
        for record in records[self.reported:]:
            ap = record.get("mask_ap")
            if isinstance(ap, float) and math.isfinite(ap):
                self.trial.report(ap, step=int(record["epoch"]))
        self.reported = len(records)
        if records and not self.pruned and self.trial.should_prune():
            self.pruned = True
            t.request_stop(f"pruned by the tuner at epoch {records[-1]['epoch']}", validate=False)


@dataclass
class TuneResult:
    """What :func:`tune` found: the best trial's number, value (mask AP) and config, and the files written
    (``plots``: ``history.png``, ``slices.png`` and, when computable, ``importances.png``)."""

    best_trial: int | None
    best_value: float | None
    best_config: Config | None
    best_yaml: Path
    table: Path
    trials: int
    plots: list[Path]


def _sampler(name: str, space: list[Param], seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({p.field: [encode(v) for v in grid_of(p)] for p in space}, seed=seed)
    raise ConfigError(f"--sampler {name}: use one of {', '.join(SAMPLERS)}")


def base_values(base: Config, space: list[Param]) -> dict[str, Any]:
    """The stored values (:func:`.space.encode`) of ``base``'s fields that lie in ``space``: a choice it
    lists or a number within its range. Fields whose base value is outside the space are left out."""
    out: dict[str, Any] = {}
    for p in space:
        value = getattr(base, p.field)
        if isinstance(value, tuple):
            value = list(value)
        if p.kind == "choice":
            if any(c == value for c in p.choices):
                out[p.field] = encode(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high:
            out[p.field] = int(value) if p.kind == "int" else float(value)
    return out


def make_pruner(base: Config, trials: int) -> Any:
    """Optuna's median pruner, from the second validation on: a trial stops when its best validation
    mask AP so far is below the median of earlier trials at the same epoch. The first validation
    (epoch ``validate_every``) never prunes: with the schedule fitted to each trial's time budget it
    ranks trials poorly (on nuclei, 6-minute trials: the best at epoch 5 finished last of five)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=1 if trials <= 4 else 3, n_warmup_steps=base.validate_every + 1)


def _open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``; a one-line error naming ``--storage`` when it cannot be opened."""
    from optuna.storages import RDBStorage

    try:
        return RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors for a bad URL, driver or database file
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise MaskRCNNError(f"--storage {url}: cannot open the study database ({first}); use e.g. "
                            "sqlite:///study.db") from None


def _enqueue_base(study: Any, base: Config, space: list[Param]) -> None:
    """Make trial 0 of a new ``study`` the base config (:func:`base_values`), so the table shows what the search won."""
    start = base_values(base, space)
    if start and not study.get_trials(deepcopy=False):
        study.enqueue_trial(start, user_attrs={"base": True}, skip_if_exists=True)


def trial_values(trial: Any, space: list[Param], grid: bool) -> dict[str, Any]:
    """The config values of ``trial``: suggested now (a running trial) or as stored (a finished one)."""
    from optuna.trial import Trial

    if isinstance(trial, Trial):
        return {p.field: p.suggest(trial, grid) for p in space}
    by_field = {p.field: p for p in space}
    return {k: decode(by_field[k], v) if k in by_field else v for k, v in trial.params.items()}


def tune(base: Config, train_dataset: Any, val_dataset: Any, *, trials: int, minutes_per_trial: float,
         out_dir: str | Path, space: list[Param], storage: str | None = None, sampler: str = "tpe",
         study_name: str | None = None, device: str | None = None, configure: Callable[[Config], Config] | None = None,
         log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> TuneResult:
    """Run (or continue) the study until ``trials`` trials have finished; returns the best.

    Args:
        base: the config every trial starts from.
        train_dataset, val_dataset: prepared datasets (the validation set gives the mask AP).
        trials: finished trials (complete or pruned) the study should have in all.
        minutes_per_trial: each trial's ``max_train_minutes``.
        out_dir: ``best.yaml``, ``trials.md``, ``study.db`` (default storage) and ``trials/`` (run folders).
        space: the searched fields (:func:`.space.default_space` / :func:`.space.read_space`).
        storage: an Optuna storage URL (``sqlite:///study.db``, ``postgresql://...``); default a
            SQLite file in ``out_dir``.
        sampler: ``tpe``, ``random`` or ``grid``. study_name: default ``base.name``.
        device: passed to the trainer. configure: a last change of each trial's config (e.g. the
            epochs fitted to the budget).
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from ..engine import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "trials"
    grid = sampler == "grid"
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = _sampler(sampler, space, base.seed)
    study = optuna.create_study(
        study_name=study_name or base.name, storage=_open_storage(url), sampler=chosen, direction="maximize", load_if_exists=True,
        pruner=make_pruner(base, trials))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if not grid:
        _enqueue_base(study, base, space)

    def objective(trial: Any) -> float:
        values = trial_values(trial, space, grid)
        try:
            cfg = base.replace(**values, max_train_minutes=minutes_per_trial, name=f"trial_{trial.number:04d}")
        except ConfigError as exc:
            log(f"trial {trial.number}: {exc}; skipped")
            raise optuna.TrialPruned(str(exc)) from None
        if configure is not None:
            cfg = configure(cfg)
        log(f"trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        hook = ReportToTrial(trial)
        result = train(cfg, train_dataset, val_dataset, out_dir=runs, run_dir=runs / f"trial_{trial.number:04d}",
                       hooks=[hook], device=device, progress=False, tensorboard=False)
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("seconds", round(result.train_seconds, 1))
        aps = [r["mask_ap"] for r in result.history if isinstance(r.get("mask_ap"), float) and math.isfinite(r["mask_ap"])]
        if hook.pruned:
            raise optuna.TrialPruned()
        if not aps:
            raise MaskRCNNError(f"trial {trial.number}: validation gave no mask AP (see {result.run_dir}); "
                                "check --val-data and validate_every")
        return max(aps)

    def after_trial(study: Any, trial: Any) -> None:
        _write_outputs(study, base, space, grid, out)
        state = trial.state.name.lower()
        value = "" if trial.value is None else f", mask AP {trial.value:.4f}"
        log(f"trial {trial.number}: {state}{value}")

    done = len(study.get_trials(deepcopy=False, states=finished))
    if done >= trials:
        log(f"study {study.study_name!r}: {done} trials finished already (--trials {trials}); nothing to run")
    else:
        study.optimize(objective, n_trials=trials - done, catch=(MaskRCNNError,),
                       callbacks=[MaxTrialsCallback(trials, states=finished), after_trial])
    return _write_outputs(study, base, space, grid, out)


def _write_outputs(study: Any, base: Config, space: list[Param], grid: bool, out: Path) -> TuneResult:
    """Rewrite ``best.yaml``, ``trials.md`` and the plots (:mod:`.plots`) from the study; the :class:`TuneResult`."""
    from optuna.trial import TrialState

    from ..utils.files import atomic_write_text

    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_config = None
    if best is not None:
        best_config = base.replace(**trial_values(best, space, grid))
        best_config.to_yaml(out / "best.yaml")
    values = [trial_values(t, space, grid) for t in all_trials]
    plots = write_study_plots(study, space, values, out)
    fields = [p.field for p in space]
    rows = ["| trial | state | mask AP | seconds | " + " | ".join(fields) + " |",
            "|---" * (4 + len(fields)) + "|"]
    for t, vals in zip(all_trials, values):
        ap = "" if t.value is None else f"{t.value:.4f}"
        cells = [str(t.number) + (" (base)" if t.user_attrs.get("base") else "")
                 + (" (best)" if best is not None and t.number == best.number else ""),
                 t.state.name.lower(), ap, str(t.user_attrs.get("seconds", ""))]
        cells += [_cell(vals.get(f, "")) for f in fields]
        rows.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out / "trials.md", "\n".join(rows) + "\n")
    return TuneResult(None if best is None else best.number, None if best is None else float(best.value), best_config,
                      out / "best.yaml", out / "trials.md", len(all_trials), plots)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

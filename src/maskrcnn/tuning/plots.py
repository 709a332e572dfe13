"""PNG plots of a ``maskrcnn tune`` study, written beside ``trials.md``.

* ``history.png``: the optimisation history: each finished trial's mask AP by trial number (complete
  trials as dots, pruned ones as crosses at their last reported AP) and the best so far.
* ``slices.png``: one panel per searched field: mask AP against the field's value (log axis for
  log-scaled ranges, the choices in order for categorical ones).
* ``importances.png``: the fields' importances for the mask AP (Optuna's fANOVA evaluator), once at
  least two complete trials differ in some field (needs scikit-learn, which
  ``maskrcnn[tune]`` installs).

Drawn with matplotlib's object API on the Agg canvas (:mod:`maskrcnn.evaluation.plots`), so a
search running in a thread or on a headless machine can write them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.plots import _figure, _save  # the one Agg figure and atomic PNG writer of the package
from .space import Param, encode

__all__ = ["StudySeries", "study_series", "write_study_plots"]


@dataclass
class StudySeries:
    """What the plots draw, from a study's trials (tested without pixels).

    ``history``: ``(trial number, mask AP, state)`` of finished trials in trial order (``state``
    ``complete`` or ``pruned``; a pruned trial's AP is its last reported one, trials without any are
    left out); ``best``: the best complete AP so far at each entry of ``history`` (None before the
    first complete trial); ``slices``: per searched field, ``(value, mask AP)`` of complete trials.
    """

    history: list[tuple[int, float, str]] = field(default_factory=list)
    best: list[float | None] = field(default_factory=list)
    slices: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)


def study_series(trials: list[Any], space: list[Param], values: list[dict[str, Any]]) -> StudySeries:
    """:class:`StudySeries` of Optuna ``FrozenTrial`` s ``trials`` whose config values are ``values``
    (:func:`maskrcnn.tuning.study.trial_values` of each)."""
    out = StudySeries(slices={p.field: [] for p in space})
    best: float | None = None
    for t, vals in zip(trials, values):
        state = t.state.name.lower()
        if state == "complete" and t.value is not None:
            ap = float(t.value)
            best = ap if best is None else max(best, ap)
            for p in space:
                if p.field in vals:
                    out.slices[p.field].append((vals[p.field], ap))
        elif state == "pruned" and t.intermediate_values:
            ap = float(t.intermediate_values[max(t.intermediate_values)])
        else:
            continue
        out.history.append((t.number, ap, state))
        out.best.append(best)
    return out


def _history(series: StudySeries, path: Path) -> Path:
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for state, marker in (("complete", "o"), ("pruned", "x")):
        pts = [(n, ap) for n, ap, s in series.history if s == state]
        if pts:
            ax.plot(*zip(*pts), marker, linestyle="none", label=f"{state} trial")
    best = [(n, b) for (n, _, _), b in zip(series.history, series.best) if b is not None]
    if best:
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
    ax.set(title="optimisation history", xlabel="trial", ylabel="validation mask AP")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, 100)


def _slices(series: StudySeries, space: list[Param], path: Path) -> Path:
    n = max(1, len(space))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.0 * cols, 3.2 * rows)
    for k, p in enumerate(space):
        ax = fig.add_subplot(rows, cols, k + 1)
        pts = series.slices.get(p.field, [])
        if p.kind == "choice":
            labels = [str(encode(c)) for c in p.choices]
            xs = [labels.index(str(encode(v))) if str(encode(v)) in labels else -1 for v, _ in pts]
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize="x-small")
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = [float(v) for v, _ in pts]
            if p.log:
                ax.set_xscale("log")
        ax.plot(xs, [ap for _, ap in pts], "o", alpha=0.7)
        ax.set_title(p.field, fontsize="small")
        ax.set_ylabel("mask AP" if k % cols == 0 else "")
    fig.tight_layout()
    return _save(fig, path, 100)


def _importances(study: Any, path: Path) -> Path | None:
    import optuna

    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except ImportError:  # fANOVA's random forest is scikit-learn's (maskrcnn[tune] installs it)
        return None
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials, or no parameter varies
        return None
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        return None
    names = list(imp)[::-1]
    fig = _figure(6.4, 0.5 + 0.35 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [imp[k] for k in names])
    ax.set(title="field importance for mask AP (fANOVA)", xlabel="importance")
    ax.tick_params(axis="y", labelsize="small")
    fig.tight_layout()
    return _save(fig, path, 100)


def write_study_plots(study: Any, space: list[Param], values: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``history.png``, ``slices.png`` and (when computable) ``importances.png`` to ``out``;
    ``values``: the config values of each of ``study.get_trials()``. Returns the files written."""
    trials = study.get_trials(deepcopy=False)
    series = study_series(trials, space, values)
    written = [_history(series, out / "history.png"), _slices(series, space, out / "slices.png")]
    # importances need two complete trials that differ in some field
    varies = any(len({str(encode(v)) for v, _ in pts}) > 1 for pts in series.slices.values())
    imp = _importances(study, out / "importances.png") if varies else None
    return written + ([imp] if imp is not None else [])

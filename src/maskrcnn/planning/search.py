"""The planner behind ``maskrcnn plan``: measure, rank the levers, search, measure what fits.

:func:`plan_memory` measures the base config; over budget, it measures each lever of
:data:`.levers.LEVERS` at its first setting, ranks the levers by accuracy cost per byte saved,
fits a :class:`.peak_model.PeakModel` to those measurements, searches the cheapest combination
whose estimate fits and measures it, step by step. Every peak in the plan is measured;
estimates only choose what to measure (and are shown next to the measurement).
``benchmarks/memory_levers.py`` measures every setting and combination the model can estimate
and reports the estimation error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..config import Config, ConfigError
from ..engine.runtime import cpu_has_fast_bf16
from ..errors import MaskRCNNError
from .levers import (
    LEVER_KEYS,
    Setting,
    State,
    apply_state,
    lever_settings,
    short_label,
    state_cost,
    state_key,
    state_label,
    time_penalty,
)
from .measure import Measurement, batch_features, measure_peak, source_size
from .peak_model import PeakModel
from .report import MemoryPlan, Row, format_bytes, parse_bytes

__all__ = ["plan_memory", "default_budget"]

Run = Callable[[Config, State, str], Measurement]


def default_budget(device: str) -> int:
    """The device's memory: CUDA total memory; CPU the memory available now."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    import psutil

    return int(psutil.virtual_memory().available)


def plan_memory(
    config: Config,
    budget: int | str | None = None,
    device: str = "cpu",
    *,
    headroom: float = 0.10,
    steps: int = 2,
    image_size: tuple[int, int] | None = None,
    instances: int | None = None,
    threads: int | None = None,
    levers: list[str] | None = None,
    explore: bool = False,
    max_rounds: int = 4,
    time_weight: float = 0.5,
    measure: Callable[[Config], Measurement] | None = None,
    log: Callable[[str], None] | None = None,
) -> MemoryPlan:
    """Measure ``config`` and, when its peak is above ``budget * (1 - headroom)``, find the cheapest
    combination of lever settings that fits.

    1. The base config is measured (:func:`.measure.measure_peak`). If it fits (and not
       ``explore``), done.
    2. Probes: the base with each lever at its first setting (:func:`.levers.lever_settings`) is measured.
    3. Ranking: the levers are ordered by ``(accuracy cost + time_weight * log2(step time ratio /
       1.5)) / memory saved`` (:func:`.levers.time_penalty`; free levers first, the largest
       saving among them).
    4. Search: the cheapest combination of settings (accuracy cost plus the time term) whose
       estimated peak (:class:`.peak_model.PeakModel`) fits, by a cost-ordered search over all
       combinations (cheap: estimates need no run).
    5. The combination is built up lever by lever in ranking order and every step is measured
       (the estimate made before is kept in the table's ``est.`` column; no peak in the plan is an
       estimate); the first step that fits is the recommendation. If none does, the estimates are
       rescaled by the measurement and the search runs again (at most ``max_rounds`` rounds).

    Args:
        budget: bytes or a size string (``"8GiB"``); default :func:`default_budget`.
        headroom: fraction of the budget left free (allocator fragmentation, CUDA context, larger
            images or more instances than the synthetic ones).
        levers: keys of :data:`.levers.LEVERS` to consider (default all).
        measure: ``config -> Measurement`` (default :func:`.measure.measure_peak` with the arguments above).
        log: progress messages (default: none).
    """
    say = log or (lambda msg: None)
    size = tuple(image_size or source_size(config))
    n_inst = int(config.max_gt_instances if instances is None else instances)
    if measure is None:
        def measure(cfg: Config) -> Measurement:
            return measure_peak(cfg, device, steps=steps, image_size=size, instances=n_inst, threads=threads)  # type: ignore[arg-type]
    budget_b = parse_bytes(budget) if budget is not None else default_budget(device)
    target = int(budget_b * (1.0 - headroom))
    settings, notes = _usable_settings(config, device, n_inst, size, levers)  # type: ignore[arg-type]
    run = _measurer(measure, say)
    base = run(config, {}, "the base config")
    if base.peak is None and not base.oom:
        raise MaskRCNNError(f"measuring the base config on {device} failed: {base.error}")
    rows = [Row("base config", {}, base.peak, True, "base", seconds=base.step_seconds, error=base.error)]
    plan = MemoryPlan(config, device, budget_b, target, headroom, base, rows, None, {}, False, settings,
                      size, n_inst, steps, notes)  # type: ignore[arg-type]
    fits_base = base.peak is not None and base.peak <= target
    if fits_base:
        plan.recommended, plan.fits = config, True
        if not explore:
            return plan
    probes = _measure_probes(plan, run)
    _rank_probes(plan, time_weight)
    if fits_base:
        return plan
    if base.peak is None:
        return _plan_without_base(plan, probes, run)
    model = PeakModel(config, base, probes, lambda cfg: batch_features(cfg, size, n_inst))  # type: ignore[arg-type]
    return _search_and_measure(plan, model, run, time_weight, max_rounds)


def _usable_settings(config: Config, device: str, instances: int, size: tuple[int, int],
                     levers: list[str] | None) -> tuple[dict[str, list[Setting]], list[str]]:
    """The lever settings to consider (``levers`` only; valid configs; none that cannot help
    here) and notes on what was left out."""
    settings = lever_settings(config, device, instances, size)
    if levers is not None:
        unknown = [k for k in levers if k not in LEVER_KEYS]
        if unknown:
            raise ConfigError(f"--levers {unknown[0]!r}: unknown lever; choose from {', '.join(LEVER_KEYS)}")
        settings = {k: v for k, v in settings.items() if k in levers}
    notes: list[str] = []
    if "amp" in settings and not device.startswith("cuda") and not cpu_has_fast_bf16():
        del settings["amp"]
        notes.append("amp left out: this CPU has no bf16 instructions, or they could not be detected (bf16 autocast "
                     "is emulated, several times slower)")
    for key, options in list(settings.items()):  # drop settings that make an invalid config
        valid = []
        for opt in options:
            try:
                config.replace(**opt.changes)
            except ConfigError:
                break
            valid.append(opt)
        if valid:
            settings[key] = valid
        else:
            del settings[key]
    return settings, notes


def _measurer(measure: Callable[[Config], Measurement], say: Callable[[str], None]) -> Run:
    """``run(config, state, label)``: each state measured once, with progress messages."""
    measured: dict[str, Measurement] = {}

    def run(cfg: Config, state: State, label: str) -> Measurement:
        k = state_key(state)
        if k in measured:
            return measured[k]
        say(f"measuring {label} ...")
        m = measure(cfg)
        measured[k] = m
        if m.peak is not None:
            say(f"  peak {format_bytes(m.peak)}, {m.step_seconds:.2f} s/step ({m.seconds:.0f} s)")
        else:
            say(f"  failed: {m.error}")
        return m

    return run


def _measure_probes(plan: MemoryPlan, run: Run) -> dict[str, tuple[Setting, Config, Measurement]]:
    """Each lever at its first setting, measured; a ``probe`` row each."""
    probes: dict[str, tuple[Setting, Config, Measurement]] = {}
    for key in LEVER_KEYS:
        if key not in plan.settings:
            continue
        first = plan.settings[key][0]
        cfg = apply_state(plan.config, plan.settings, {key: 1})
        m = run(cfg, {key: 1}, first.label)
        probes[key] = (first, cfg, m)
        plan.rows.append(Row(first.label, {key: 1}, m.peak, True, "probe", seconds=m.step_seconds, cost=first.cost,
                             cost_note=first.cost_note, error=m.error))
    return probes


def _search_and_measure(plan: MemoryPlan, model: PeakModel, run: Run, time_weight: float, max_rounds: int) -> MemoryPlan:
    """Search the cheapest combination whose estimate fits, build it up in ranking order measuring
    each step; when the whole combination does not fit, recalibrate and search again."""
    config, settings, target = plan.config, plan.settings, plan.target
    rank_order = [r.state and next(iter(r.state)) for r in plan.rows if r.kind == "probe"]
    best: State | None = None
    tried: list[Row] = []  # measured candidates of earlier rounds that did not fit
    chain_rows: list[Row] = []
    failed: set[str] = set()
    for _ in range(max_rounds):
        state = _search(model, config, settings, target, time_weight, failed)
        if state is None:
            break
        order = sorted((k for k in state if state[k]), key=lambda k: rank_order.index(k) if k in rank_order else 99)
        chain_rows = []
        for i in range(len(order)):
            st = {k: state[k] for k in order[: i + 1]}
            cfg = apply_state(config, settings, st)
            est, _ = model.estimate(cfg, st)
            added = settings[order[i]][st[order[i]] - 1].label
            m = run(cfg, st, state_label(settings, st))  # every combination shown is measured; the estimate only chose it
            single = len(st) == 1 and st[next(iter(st))] == 1  # a probe: measured before, no estimate
            chain_rows.append(Row(added if i == 0 else f"+ {added}", dict(st), m.peak, True, "path",
                                  estimate=None if single else est, seconds=m.step_seconds,
                                  cost=state_cost(settings, st), error=m.error))
            if m.peak is not None and m.peak <= target:
                best = dict(st)
                break
        if best is not None:
            break
        last = chain_rows[-1]  # did not fit: keep it in the table, rescale the estimates, search again
        short = " + ".join(short_label(settings[k][v - 1]) for k, v in last.state.items() if v)
        tried.append(Row(f"(did not fit) {short}", last.state, last.peak, True, "path",
                         estimate=last.estimate, seconds=last.seconds, cost=last.cost, error=last.error))
        chain_rows = []
        failed.add(state_key(state))
        if m.peak is not None:
            model.calibrate(cfg, state, m)
    shown = {state_key(r.state) for r in chain_rows}
    plan.rows += [r for r in tried if state_key(r.state) not in shown] + chain_rows
    if best is not None:
        plan.recommended_state, plan.recommended, plan.fits = best, apply_state(config, settings, best), True
    else:
        plan.notes.append("nothing tried fits the budget: raise --memory, lower --headroom, or use a smaller backbone "
                          "or smaller images than the levers reach")
    return plan


def _rank(cost: float, saving: float, seconds: float, base_seconds: float, time_weight: float) -> tuple[float, float]:
    """Order of levers: accuracy cost (plus :func:`.levers.time_penalty`) per byte saved, then the larger
    saving; levers that save nothing come last."""
    if saving <= 0:
        return (math.inf, -saving)
    return ((cost + time_penalty(seconds, base_seconds, time_weight)) / saving, -saving)


def _rank_probes(plan: MemoryPlan, time_weight: float) -> None:
    """Sort the single-lever rows by :func:`_rank` (the table's order)."""
    base = plan.base
    probes = [r for r in plan.rows if r.kind == "probe"]
    others = [r for r in plan.rows if r.kind != "probe"]

    def rank(r: Row) -> tuple[float, float]:
        if r.peak is None or base.peak is None:
            return (math.inf, math.inf)
        return _rank(r.cost, base.peak - r.peak, r.seconds, base.step_seconds, time_weight)

    probes.sort(key=rank)
    plan.rows[:] = [r for r in others if r.kind == "base"] + probes + [r for r in others if r.kind != "base"]


def _search(model: PeakModel, config: Config, settings: dict[str, list[Setting]], target: int,
            time_weight: float, exclude: set[str]) -> State | None:
    """The cheapest combination whose estimate fits: cost-ordered (uniform-cost) search over the
    lever settings, cost = accuracy cost + ``time_weight`` per doubling of the estimated step time;
    among equal costs fewer changes, then the lower estimate. Combinations in ``exclude`` (measured
    and found too big) are passed over."""
    import heapq
    import itertools

    tie = itertools.count()

    def evaluate(st: State) -> tuple[float, float] | None:
        try:
            cfg = apply_state(config, settings, st)
        except ConfigError:
            return None
        est, secs = model.estimate(cfg, st)
        return state_cost(settings, st) + time_penalty(secs, model.t0, time_weight), est

    start: State = {}
    c0, e0 = evaluate(start)  # type: ignore[misc]
    heap = [(c0, 0, e0, next(tie), start)]
    seen = {state_key(start)}
    while heap:
        _, n, est, _, st = heapq.heappop(heap)
        if est <= target and state_key(st) not in exclude and st:
            return st
        for key, options in settings.items():
            level = st.get(key, 0)
            if level >= len(options):
                continue
            nxt = {**st, key: level + 1}
            k = state_key(nxt)
            if k in seen:
                continue
            seen.add(k)
            scored = evaluate(nxt)
            if scored is not None:
                heapq.heappush(heap, (scored[0], n + 1, scored[1], next(tie), nxt))
    return None


def _plan_without_base(plan: MemoryPlan, probes: dict[str, tuple[Setting, Config, Measurement]],
                       run: Callable[[Config, State, str], Measurement]) -> MemoryPlan:
    """The base config ran out of memory: apply levers cumulatively in order of cost, measuring
    each combination, until one fits."""
    settings, config, target = plan.settings, plan.config, plan.target
    order = sorted(settings, key=lambda k: (settings[k][0].cost, LEVER_KEYS.index(k)))
    state: State = {}
    for key in order:
        for level in range(1, len(settings[key]) + 1):
            state = {**state, key: level}
            cfg = apply_state(config, settings, state)
            m = run(cfg, state, state_label(settings, state))
            plan.rows.append(Row(state_label(settings, state), dict(state), m.peak, True, "path", seconds=m.step_seconds,
                                 cost=state_cost(settings, state), error=m.error))
            if m.peak is not None and m.peak <= target:
                plan.recommended_state, plan.recommended, plan.fits = dict(state), cfg, True
                return plan
            if m.peak is not None:
                break  # runs now: go on with the next lever
    plan.notes.append("nothing tried fits the budget")
    return plan


# ---------------------------------------------------------------------------- report

"""The plan as a person reads it: its rows, the table with the recommended config diff, byte units."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError
from .levers import Setting, State, state_cost, state_key, state_label
from .measure import Measurement

__all__ = ["GiB", "MiB", "Row", "MemoryPlan", "format_plan", "parse_bytes", "format_bytes"]

GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass
class Row:
    """One line of the plan's table: a configuration, its peak (measured or estimated) and its cost."""

    label: str
    state: State
    peak: float | None
    measured: bool
    kind: str = "probe"  # base | probe | path | recommended
    estimate: float | None = None
    seconds: float = float("nan")
    cost: float = 0.0
    cost_note: str = ""
    error: str | None = None


@dataclass
class MemoryPlan:
    """What :func:`plan_memory` found. ``recommended`` is the cheapest measured config that fits
    (``config`` itself when it fits), or None when nothing tried fits."""

    config: Config
    device: str
    budget: int
    target: int
    headroom: float
    base: Measurement
    rows: list[Row]
    recommended: Config | None
    recommended_state: State
    fits: bool
    settings: dict[str, list[Setting]]
    image_size: tuple[int, int]
    instances: int
    steps: int
    notes: list[str] = field(default_factory=list)

    def diff(self) -> list[tuple[str, Any, Any]]:
        """``(field, base value, recommended value)`` of every changed field."""
        if self.recommended is None:
            return []
        a, b = self.config.model_dump(), self.recommended.model_dump()
        return [(k, a[k], b[k]) for k in a if a[k] != b[k]]

    def estimate_errors(self) -> list[tuple[str, float, float]]:
        """``(label, estimate, measured)`` of the rows whose peak was estimated before being measured."""
        return [(r.label, r.estimate, r.peak) for r in self.rows
                if r.measured and r.estimate is not None and r.peak is not None]

    def table(self) -> str:
        return format_plan(self)


def _cost_text(row: Row, settings: dict[str, list[Setting]]) -> str:
    if row.kind == "base":
        return "-"
    if row.kind == "probe":
        return row.cost_note
    applied = [settings[k][v - 1] for k, v in row.state.items() if v]
    if all(s.cost == 0 for s in applied):
        return "none"
    return f"~{row.cost:.2g} AP"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table a person reads in seconds, with the recommended config diff."""
    c, b = plan.config, plan.base
    out = []
    out.append(f"memory plan on {plan.device}: {c.backbone}, {plan.image_size[0]}x{plan.image_size[1]} px synthetic images "
               f"with {plan.instances} instances, {c.images_per_gpu} image(s) per pass x {c.grad_accumulation} accumulation")
    how = ("CUDA max allocated" if plan.device.startswith("cuda") else
           f"peak RSS above the process after imports ({format_bytes(b.overhead)}, not counted)")
    out.append(f"budget {format_bytes(plan.budget)}: fits when peak <= {format_bytes(plan.target)} ({plan.headroom:.0%} headroom); "
               f"peak = {how}, {plan.steps} steps per configuration, each in a fresh process")
    out.append("")
    w = min(64, max([len(r.label) for r in plan.rows] + [20]) + 4)
    head = f"    {'lever / setting':<{w}}{'peak':>10} {'est.':>10} {'saving':>10}  {'accuracy cost':<36}{'s/step':>8}"
    out.append(head)
    base_peak = b.peak
    rec_key = state_key(plan.recommended_state) if plan.fits and plan.recommended_state else None
    section, n = None, 0
    for r in plan.rows:
        if r.kind != section:
            if r.kind == "probe":
                out.append("  single levers, best first (accuracy cost per byte saved):")
            elif r.kind == "path":
                out.append("  the cheapest combination that fits, built up in ranking order:")
            section = r.kind
        if r.kind == "probe":
            n += 1
            lead = f"{n:>2}. "
        elif r.kind == "path":
            lead = "-> " if (rec_key is not None and r.measured and state_key(r.state) == rec_key) else "   "
            lead = " " + lead
        else:
            lead = "    "
        label = r.label if len(r.label) <= w - 1 else r.label[: w - 4] + "..."
        if r.peak is None:
            peak, saving = "failed", "-"
        else:
            peak = ("" if r.measured else "~") + format_bytes(r.peak)
            saving = "-" if r.kind == "base" or base_peak is None else format_bytes(base_peak - r.peak)
        est = format_bytes(r.estimate) if (r.estimate is not None and r.measured) else ""
        secs = "-" if not math.isfinite(r.seconds) else ("" if r.measured else "~") + f"{r.seconds:.2f}"
        fit = "" if r.peak is None else ("  fits" if r.peak <= plan.target else "")
        lead = lead if len(lead) == 4 else lead[:4]
        out.append(f"{lead}{label:<{w}}{peak:>10} {est:>10} {saving:>10}  {_cost_text(r, plan.settings):<36}{secs:>8}{fit}")
        if r.error and r.peak is None:
            out.append(f"    {'':<{w}}({r.error})")
    errs = plan.estimate_errors()
    if errs:
        worst = max(abs(e - m) / m for _, e, m in errs)
        out.append(f"  (est. = the estimate that chose the combination, made before measuring it; largest error {worst:.1%})")
    out.append("")
    if plan.fits and not plan.diff():
        out.append(f"the config fits: peak {format_bytes(b.peak)} <= {format_bytes(plan.target)}; nothing to change")
    elif plan.fits:
        m_rows = [r for r in plan.rows if r.measured and r.peak is not None and state_key(r.state) == state_key(plan.recommended_state)]
        peak = m_rows[-1].peak if m_rows else None
        out.append(f"recommended: {state_label(plan.settings, plan.recommended_state)}")
        out.append(f"  measured peak {format_bytes(peak)} <= {format_bytes(plan.target)}, accuracy cost "
                   f"{_cost_text(Row('', plan.recommended_state, None, True, 'path', cost=state_cost(plan.settings, plan.recommended_state)), plan.settings)}; "
                   "config changes:")
        for k, old, new in plan.diff():
            out.append(f"    {k}: {old} -> {new}")
    out.extend(plan.notes)
    return "\n".join(out)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
          "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1024, "mib": MiB, "gib": GiB, "tib": 1024 ** 4}


def parse_bytes(text: str | int | float) -> int:
    """``"8GiB"``, ``"8 GB"``, ``"7.5g"``, ``"512MiB"``, ``12e9`` -> bytes (``G``/``GB`` are decimal, ``GiB`` binary)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"--memory {text!r}: expected a size such as 8GiB, 16GB or 7.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float | None) -> str:
    """Bytes as ``1.23 GiB`` / ``456 MiB``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    return f"{sign}{n / MiB:.0f} MiB"

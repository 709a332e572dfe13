"""The search space of ``maskrcnn tune``: named config fields and the values each may take.

A :class:`Param` is one :class:`~maskrcnn.config.Config` field with a float or integer range
(``log`` for scale-like values) or a list of choices. :func:`default_space` is centred on the base
config (learning rate, weight decay, anchor scales, RoIs per image, augmentation strengths, mask
loss); :func:`read_space` reads a YAML file that replaces or extends it::

    learning_rate: {low: 0.0001, high: 0.01, log: true}
    train_rois_per_image: [64, 128, 256]
    mask_loss: [bce, bce+dice]
    aug_brightness: null          # leave a default parameter out

Choices that are not plain numbers or text (a list of anchor scales, ``null``) go to Optuna as
their YAML text, so any storage can hold them, and come back as values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, parse_yaml

__all__ = ["Param", "default_space", "read_space", "grid_of", "encode", "decode"]

_SCALAR = (bool, int, float, str)


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: the value itself when scalar, else its YAML flow text."""
    if isinstance(value, _SCALAR):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def decode(param: "Param", stored: Any) -> Any:
    """The config value of ``param`` from what Optuna stored (see :func:`encode`)."""
    if param.choices and not any(isinstance(c, _SCALAR) and c == stored for c in param.choices):
        return yaml.safe_load(stored) if isinstance(stored, str) else stored
    return stored


@dataclass(frozen=True)
class Param:
    """One searched field: ``low``..``high`` (``kind`` float or int; ``log``: log-uniform) or ``choices``."""

    field: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any, grid: bool = False) -> Any:
        """The value of this field in ``trial`` (an ``optuna.Trial``); with ``grid``, one of :func:`grid_of`."""
        if grid or self.kind == "choice":
            options = self.choices if self.kind == "choice" else tuple(grid_of(self))
            return decode(self, trial.suggest_categorical(self.field, [encode(c) for c in options]))
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.field, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.field}: one of {', '.join(str(encode(c)) for c in self.choices)}"
        return f"{self.field}: {self.low:g}..{self.high:g}{' (log)' if self.log else ''}"


def grid_of(p: Param, points: int = 3) -> list[Any]:
    """The values of ``p`` on a grid: its choices, or ``points`` values from low to high (geometric with ``log``)."""
    if p.kind == "choice":
        return list(p.choices)
    if p.log:
        vals = [math.exp(math.log(p.low) + (math.log(p.high) - math.log(p.low)) * i / (points - 1)) for i in range(points)]
    else:
        vals = [p.low + (p.high - p.low) * i / (points - 1) for i in range(points)]
    if p.kind == "int":
        return sorted({int(round(v)) for v in vals})
    return [float(f"{v:.4g}") for v in vals]


def default_space(config: Config) -> list[Param]:
    """The default search space around ``config``: learning rate x/4..x4 (log), weight decay 1e-5..1e-3
    (log), anchor scales x0.5 / x1 / x2, RoIs per image, horizontal flip, brightness and contrast
    jitter, scale jitter on or off, and the mask loss."""
    lr = config.learning_rate
    scales = config.rpn_anchor_scales
    return [
        Param("learning_rate", "float", lr / 4, lr * 4, log=True),
        Param("weight_decay", "float", 1e-5, 1e-3, log=True),
        Param("rpn_anchor_scales", "choice", choices=tuple([float(f"{s * f:g}") for s in scales] for f in (0.5, 1.0, 2.0))),
        Param("train_rois_per_image", "choice", choices=(64, 128, 256, 512)),
        Param("aug_hflip", "choice", choices=(0.0, 0.5)),
        Param("aug_brightness", "float", 0.0, 0.3),
        Param("aug_contrast", "float", 0.0, 0.3),
        Param("aug_scale_jitter", "choice", choices=(None, [0.8, 1.25])),
        Param("mask_loss", "choice", choices=("bce", "dice", "bce+dice")),
    ]


def read_space(path: str | Path, config: Config) -> list[Param]:
    """:func:`default_space` with the entries of the YAML file ``path`` (see the module doc) applied."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--space {path}: cannot read the file ({getattr(exc, 'strerror', None) or exc}); pass a YAML file") from None
    data = parse_yaml(text, f"--space {path}", fix="write one `field: [choices]` or `field: {low: , high: }` per line")
    if not isinstance(data, dict):
        raise ConfigError(f"--space {path}: expected a mapping of config field: range or choices")
    space = {p.field: p for p in default_space(config)}
    for field, spec in data.items():
        where = f"--space {path}: {field}"
        if field not in Config.model_fields:
            raise ConfigError(f"{where}: not a config field; see `maskrcnn config --describe`")
        if spec is None:
            space.pop(field, None)
        elif isinstance(spec, list) and spec:
            space[field] = Param(field, "choice", choices=tuple(spec))
        elif isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log"}:
            lo, hi, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi \
                    or (log and lo <= 0):
                raise ConfigError(f"{where}: needs numbers low < high (and low > 0 with log: true), e.g. "
                                  "{low: 0.001, high: 0.1, log: true}")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) and not log else "float"
            space[field] = Param(field, kind, float(lo), float(hi), log=log)
        else:
            raise ConfigError(f"{where}: give a list of choices, {{low: , high: , log: }} or null, e.g. "
                              f"{field}: [value1, value2]")
    for p in space.values():  # every value must make a valid config
        for value in grid_of(p):
            try:
                config.replace(**{p.field: value})
            except ConfigError as exc:
                raise ConfigError(f"--space: {p.field}={value!r} is not valid with the base config ({exc})") from None
    return list(space.values())

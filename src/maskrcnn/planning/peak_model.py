"""Estimates of the peak memory of lever combinations from a few measured probes.

The model (:class:`PeakModel`) separates what does not depend on the CPU/GPU kernels from what
does, and fits the latter to this machine's own measurements:

* **static** (kernel-independent, exact): the weights and buffers (measured) plus, per trainable
  parameter, its gradient and the optimizer's state (:func:`static_bytes`: SGD with momentum one
  buffer, AdamW two, SGD without momentum none);
* **per pass** ``P``: what a forward/backward pass allocates once, whatever its number of
  images: kernel workspaces and scratchpads (oneDNN picks other kernels, with other workspace
  sizes, on AVX2 and on AVX-512/AMX CPUs; cuDNN likewise by GPU), allocator overhead, the heads'
  fixed parts. It may scale with the pixels (a per-image im2col buffer does);
* **per image** ``U``: activations kept for the backward pass, temporaries and targets of one
  image; linear in the pixels, the RoIs and the GT instances per image.

``peak(c) = static(c) + P(c) + images_per_pass(c) * U(c)``. ``P`` and ``U`` are fitted per
machine: the micro-batch probe (fewer images per pass, same everything else) gives ``U`` of
the base config as the memory one image less saves, and ``P`` as the rest; the image-size (or
crop) probe gives ``P`` at its pixels, so ``P`` is the line through both (``U`` scales with the
pixels). Each other lever's probe measures its factor on ``U``; settings further along a lever
are linear in its natural variable (RoIs, GT instances per image) through the base and the
probe, frozen stages follow the share of backbone activations they hold; factors multiply
(exact for levers on the same memory, on the safe side for disjoint ones). Without a
micro-batch probe (one image per pass) the whole variable part counts as per image.

Every probe is reproduced exactly by construction; combinations are estimates, which only
choose what the planner measures next (:mod:`.search`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import lru_cache

from ..config import Config
from .levers import LEVER_KEYS, Setting, State
from .measure import Measurement

__all__ = ["PeakModel", "static_bytes", "trainable_bytes", "parameter_bytes", "frozen_share", "optimizer_copies"]

_PIXEL_LEVERS = ("image_size", "crop")

@lru_cache(maxsize=4)
def _model_facts(arch_json: str) -> tuple[tuple[tuple[str, int, bool], ...], dict[str, float], dict[str, str]]:
    """Parameter table ``(name, bytes, is_norm)``, the cumulative activation share of the frozen
    backbone prefix of each ``layers`` preset (ResNet bodies; 0 for others) and each preset's regex
    on this model, for the architecture fields in ``arch_json``."""
    import torch

    from ..config import LAYER_PRESETS
    from ..engine.optim import layer_regex
    from ..modeling import build_model

    cfg = Config(**json.loads(arch_json))
    model = build_model(cfg)
    norm: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            norm.update(f"{mod_name}.{p}" for p, _ in mod.named_parameters(recurse=False))
    table = tuple((n, p.numel() * p.element_size(), n in norm) for n, p in model.named_parameters())
    regexes = {preset: layer_regex(model, cfg.replace(layers=preset)) for preset in LAYER_PRESETS}
    body = model.backbone.body
    counts: dict[str, int] = {}
    hooks = []
    groups = {"conv1": "stem", "bn1": "stem", "relu": "stem", "maxpool": "stem",
              "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
    for name, child in body.named_children():
        group = groups.get(name)
        if group is None:
            continue
        for leaf in child.modules():
            if next(leaf.children(), None) is None:
                hooks.append(leaf.register_forward_hook(
                    lambda m, i, o, g=group: counts.__setitem__(g, counts.get(g, 0) + o.numel())))
    body.eval()
    with torch.no_grad():
        body(torch.zeros(1, cfg.image_channel_count, 128, 128))
    for hk in hooks:
        hk.remove()
    total = max(1, sum(counts.values()))
    acc, shares = 0.0, {"all": 0.0}
    for group, preset in (("stem", None), ("layer1", "3+"), ("layer2", "4+"), ("layer3", "5+"), ("layer4", "heads")):
        acc += counts.get(group, 0) / total
        if preset:
            shares[preset] = acc
    return table, shares, regexes


def _arch_json(config: Config) -> str:
    keep = ("backbone", "architecture", "backbone_width", "fpn_channels", "image_channel_count", "num_classes",
            "pool_size", "mask_pool_size", "box_head_dim", "mask_head_channels", "mask_head_convs", "train_bn",
            "rpn_anchor_ratios", "frozen_bn_eps")
    d = config.model_dump()
    return json.dumps({k: d[k] for k in keep}, sort_keys=True)


def trainable_bytes(config: Config) -> int:
    """Bytes of the parameters ``config.layers`` / ``train_bn`` leave trainable (their gradients and
    optimizer state take as much each); as :func:`maskrcnn.engine.optim.select_trainable` selects them."""
    table, _, regexes = _model_facts(_arch_json(config))
    pattern = re.compile(regexes.get(config.layers, config.layer_regex()))
    return sum(b for name, b, is_norm in table if pattern.search(name) and (config.train_bn or not is_norm))


def frozen_share(config: Config) -> float:
    """Share of the backbone body's activations in the stages ``config.layers`` freezes (0 for ``all``)."""
    _, shares, _ = _model_facts(_arch_json(config))
    return shares.get(config.layers, 0.0)


def parameter_bytes(config: Config) -> int:
    """Bytes of all parameters of the model of ``config`` (trainable or not)."""
    table, _, _ = _model_facts(_arch_json(config))
    return sum(b for _, b, _ in table)


def optimizer_copies(config: Config) -> int:
    """Tensors the optimizer keeps per trainable parameter: AdamW 2 (exp_avg, exp_avg_sq), SGD 1
    (momentum buffer) or 0 without momentum."""
    if config.optimizer == "adamw":
        return 2
    return 1 if config.momentum else 0


def static_bytes(config: Config, model_bytes: float) -> float:
    """Memory that is there whatever the kernels: the model (``model_bytes``, measured) and per
    trainable parameter its gradient and the optimizer's state."""
    return float(model_bytes + (1 + optimizer_copies(config)) * trainable_bytes(config))


class PeakModel:
    """``peak(c) = static(c) + P(c) + images_per_pass(c) * U(c)`` fitted to measured probes (see
    the module doc).

    Args:
        base_config, base: the base config and its measurement.
        probes: per lever key, ``(setting, config, measurement)`` of the base with that lever at
            its first setting.
        features: ``config -> {"pixels", "instances"}`` of its synthetic training images
            (:func:`.measure.batch_features`).
    """

    def __init__(self, base_config: Config, base: Measurement, probes: dict[str, tuple[Setting, Config, Measurement]],
                 features: Callable[[Config], dict[str, float]]) -> None:
        if base.peak is None:
            raise ValueError("PeakModel needs a measured base config")
        self.base_config = base_config
        self.features = features
        self.model_bytes = base.model
        self.n0 = float(base_config.images_per_gpu)
        self.f0 = features(base_config)
        self.v0 = float(base.peak) - self.static(base_config)
        self.t0 = base.step_seconds if math.isfinite(base.step_seconds) and base.step_seconds > 0 else 1.0
        self.scale = 1.0
        self.u0, self.p0 = self.v0 / self.n0, 0.0  # without a micro-batch probe: all per image
        measured = {k: (cfg, m) for k, (_, cfg, m) in probes.items() if m.peak is not None}
        if "micro_batch" in measured:
            cfg, m = measured["micro_batch"]
            saved = (self.v0 - (m.peak - self.static(cfg))) / (self.n0 - cfg.images_per_gpu)
            if saved > 0:
                self.u0, self.p0 = saved, self.v0 - self.n0 * saved
        self.factors: dict[str, float] = {}  # lever -> its probe's factor on U (non-pixel levers)
        self.times: dict[str, float] = {}  # lever -> its probe's step-time factor
        self.x1: dict[str, float] = {}  # lever -> the probe's natural variable (numeric levers)
        self.pass_at: dict[str, float] = {}  # pixel lever -> P at its probe's pixels
        self._first_frozen = "3+"
        for key, (cfg, m) in measured.items():
            v = float(m.peak) - self.static(cfg)
            self.times[key] = m.step_seconds / self.t0 if math.isfinite(m.step_seconds) and m.step_seconds > 0 else 1.0
            x1 = self._x(key, cfg, features(cfg))
            if x1 is not None and abs(x1 - self._x0(key)) > 1e-9:
                self.x1[key] = x1
            if key == "frozen_stages":
                self._first_frozen = cfg.layers
            if key in _PIXEL_LEVERS and key in self.x1:
                self.pass_at[key] = v - self.n0 * self.u0 * self._u_pixels(cfg, {key: 1}, features(cfg))
            elif key != "micro_batch":
                self.factors[key] = max(0.02, (v - self.p0) / (self.n0 * self.u0))

    # ---------------------------------------------------------------- parts
    def static(self, config: Config) -> float:
        """The kernel-independent part of ``config``'s peak (:func:`static_bytes`)."""
        return static_bytes(config, self.model_bytes)

    def _x(self, key: str, config: Config, feats: dict[str, float]) -> float | None:
        """The natural variable of a numeric lever (None for the others)."""
        if key == "micro_batch":
            return float(config.images_per_gpu)
        if key == "rois":
            return float(config.train_rois_per_image)
        if key == "gt_instances":
            return feats["instances"]
        if key in _PIXEL_LEVERS:
            return feats["pixels"]
        return None

    def _x0(self, key: str) -> float:
        return self._x(key, self.base_config, self.f0) or 0.0

    def _line(self, key: str, f1: float, x: float) -> float:
        """The line through (x0, 1) and the probe (x1, f1), at ``x``."""
        x0, x1 = self._x0(key), self.x1[key]
        return max(0.05, 1.0 - (1.0 - f1) * (x0 - x) / (x0 - x1))

    def _factor(self, key: str, config: Config, feats: dict[str, float], f1: float) -> float:
        """Factor of lever ``key`` at ``config``, from its probe's factor ``f1``."""
        if key == "frozen_stages":
            share0 = frozen_share(self.base_config)
            share1 = frozen_share(self.base_config.replace(layers=self._first_frozen))
            return f1 ** ((frozen_share(config) - share0) / (share1 - share0)) if share1 > share0 else f1
        if key in self.x1:
            x = self._x(key, config, feats)
            return self._line(key, f1, x) if x is not None else 1.0
        return f1

    def _pixel_law(self, state: State) -> str | None:
        """Which pixel probe carries smaller images and crops: the crop probe when only crops
        apply, else the image-size probe (or whichever was measured)."""
        image, crop = bool(state.get("image_size")), bool(state.get("crop"))
        if not image and not crop:
            return None
        law = "crop" if (crop and not image and "crop" in self.pass_at) else "image_size"
        return law if law in self.pass_at else ("crop" if "crop" in self.pass_at else None)

    def _u_pixels(self, config: Config, state: State, feats: dict[str, float]) -> float:
        """Factor on ``U`` of the pixels (and of the GT instances a crop cuts away)."""
        f = feats["pixels"] / self.f0["pixels"]
        if state.get("crop") and not state.get("gt_instances") and "gt_instances" in self.factors and "gt_instances" in self.x1:
            f *= self._line("gt_instances", self.factors["gt_instances"], feats["instances"])
        return f

    # ---------------------------------------------------------------- estimates
    def estimate(self, config: Config, state: State) -> tuple[float, float]:
        """``(peak bytes, step seconds)`` estimated for ``config`` (the base with ``state`` applied)."""
        feats = self.features(config)
        u, t = self.u0, 1.0
        for key in LEVER_KEYS:
            if not state.get(key) or key in _PIXEL_LEVERS:
                continue
            if key in self.factors:
                u *= self._factor(key, config, feats, self.factors[key])
            if key in self.times:
                t *= self._factor(key, config, feats, self.times[key])
        per_pass = self.p0
        law = self._pixel_law(state)
        if law is not None:
            u *= self._u_pixels(config, state, feats)
            x0, x1, pixels = self._x0(law), self.x1[law], feats["pixels"]
            per_pass = self.p0 + (self.pass_at[law] - self.p0) * (x0 - pixels) / (x0 - x1)
            t *= self._line(law, self.times[law], pixels)
        variable = max(0.02 * self.v0, per_pass + config.images_per_gpu * u) * self.scale
        return self.static(config) + variable, self.t0 * t

    def calibrate(self, config: Config, state: State, measured: Measurement) -> None:
        """Rescale later estimates so that ``config`` estimates to its measured peak."""
        if measured.peak is None:
            return
        est, _ = self.estimate(config, state)
        var_est = est - self.static(config)
        var_meas = measured.peak - self.static(config)
        if var_est > 0 and var_meas > 0:
            self.scale *= var_meas / var_est

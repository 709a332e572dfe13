"""The memory levers of ``maskrcnn plan``: config changes that lower the peak, with their accuracy cost.

Each lever (:data:`LEVERS`) has settings ordered by growing saving and cost
(:func:`lever_settings`); a *state* maps lever keys to the chosen level (0: as in the base
config) and :func:`apply_state` turns it into a config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from .measure import source_size

__all__ = ["Setting", "Lever", "LEVERS", "LEVER_KEYS", "State", "lever_settings", "apply_state", "state_cost",
           "state_key", "state_label", "short_label", "time_penalty"]


#: Accuracy cost unit: rough loss of mask AP points on COCO-like data, from the literature and common
#: practice (Detectron2/torchvision ablations, Matterport defaults). They only order the levers;
#: "none" means the same model is trained (only slower).
@dataclass(frozen=True)
class Setting:
    """One setting of a lever, as config changes relative to the base config.

    Attributes:
        lever: the lever's key (see :data:`LEVERS`).
        level: 1 for the first step away from the base config, 2 for the next, ...
        changes: the config fields this setting sets (absolute values).
        label: what a person reads, e.g. ``train_rois_per_image 512 -> 256``.
        cost: accuracy cost of this setting (rough mask AP points, cumulative along the lever).
        cost_note: the cost in words.
    """

    lever: str
    level: int
    changes: dict[str, Any] = field(hash=False, compare=False)
    label: str = ""
    cost: float = 0.0
    cost_note: str = ""


@dataclass(frozen=True)
class Lever:
    key: str
    title: str
    doc: str


#: The memory levers in the order of their accuracy cost (cheapest first); see :func:`lever_settings`.
LEVERS: tuple[Lever, ...] = (
    Lever("checkpointing", "gradient checkpointing",
          "gradient_checkpointing: the backbone stages' activations are recomputed in the backward pass; the same "
          "model is trained, steps take longer. Cost: none."),
    Lever("micro_batch", "micro-batches",
          "images_per_gpu halved, grad_accumulation doubled: the same total batch and learning rate in more, smaller "
          "passes. Cost: none with frozen BatchNorm (the default); with train_bn the statistics come from fewer "
          "images (~1 AP per halving)."),
    Lever("amp", "mixed precision",
          "amp: bf16 autocast (CUDA: auto = bf16, or fp16 with a grad scaler on GPUs without bf16); weights, "
          "losses and the optimizer stay fp32. Cost: ~0.1 AP. Slow on CPUs without bf16 units."),
    Lever("mini_masks", "mini-masks",
          "use_mini_mask: GT masks stored cropped to their box at mini_mask_shape (56x56, Matterport's default). "
          "Cost: ~0.2 AP (detail of large objects' targets)."),
    Lever("rois", "RoIs per image",
          "train_rois_per_image halved (512 -> 256 -> 128 -> 64): fewer sampled RoIs for the box and mask heads. "
          "Cost: ~0.2 / 0.6 / 1.5 AP (Matterport trains with 200)."),
    Lever("gt_instances", "GT instances per image",
          "max_gt_instances halved: images with more instances lose some for that step (they count as background). "
          "Cost: data-dependent; ~0 when images have fewer instances than the cap, ~0.3 / 1 AP on crowded data."),
    Lever("frozen_stages", "frozen stages",
          "layers all -> 3+ -> 4+ -> 5+ -> heads: early backbone stages are not trained (no gradients, momentum or "
          "saved activations). Cost with pretrained weights: ~0.3 (3+ is torchvision's fine-tuning default) / 1 / "
          "2.5 / 5 AP; never freeze a backbone trained from scratch."),
    Lever("crop", "crop training",
          "aug_crop: random crops of 3/4, then 1/2 of the resized image's sides; objects keep their scale, each step "
          "sees less context. Cost: ~0.8 / 2.5 AP."),
    Lever("image_size", "smaller images",
          "image_min_dim / image_max_dim x 0.8, 0.64, 0.5: small objects lose resolution. Cost: ~1.5 / 4 / 7 AP."),
)

LEVER_KEYS = tuple(lv.key for lv in LEVERS)


def _round_to(x: float, m: int, lo: int | None = None) -> int:
    return max(lo if lo is not None else m, int(round(x / m)) * m)


def lever_settings(config: Config, device: str = "cpu", instances: int | None = None,
                   image_size: tuple[int, int] | None = None) -> dict[str, list[Setting]]:
    """The settings of every lever applicable to ``config``, each list ordered by growing saving and cost."""
    c = config
    out: dict[str, list[Setting]] = {}
    if not c.gradient_checkpointing:
        out["checkpointing"] = [Setting("checkpointing", 1, {"gradient_checkpointing": True},
                                        "gradient_checkpointing: true", 0.0, "none (slower steps)")]
    ipg, acc = c.images_per_gpu, c.grad_accumulation
    divisors = [d for d in range(ipg - 1, 0, -1) if ipg % d == 0]
    if divisors:
        settings = []
        for i, d in enumerate(divisors, start=1):
            halvings = math.log2(ipg / d)
            cost = round(1.0 * halvings, 2) if c.train_bn else 0.0
            note = f"~{cost:g} AP (BatchNorm over fewer images)" if c.train_bn else "none (frozen BatchNorm)"
            settings.append(Setting("micro_batch", i, {"images_per_gpu": d, "grad_accumulation": acc * ipg // d},
                                    f"images_per_gpu {ipg} -> {d}, grad_accumulation {acc} -> {acc * ipg // d}", cost, note))
        out["micro_batch"] = settings
    if c.amp == "none":
        amp = "auto" if device.startswith("cuda") else "bf16"
        out["amp"] = [Setting("amp", 1, {"amp": amp}, f"amp: {amp}", 0.1, "~0.1 AP")]
    if not c.use_mini_mask:
        out["mini_masks"] = [Setting("mini_masks", 1, {"use_mini_mask": True, "mini_mask_shape": [56, 56]},
                                     "use_mini_mask: true (56x56)", 0.2, "~0.2 AP")]
    r, settings = c.train_rois_per_image, []
    for i, (frac, cost) in enumerate(((0.5, 0.2), (0.25, 0.6), (0.125, 1.5)), start=1):
        new = int(r * frac)
        if new < 32:
            break
        settings.append(Setting("rois", i, {"train_rois_per_image": new}, f"train_rois_per_image {r} -> {new}", cost, f"~{cost:g} AP"))
    if settings:
        out["rois"] = settings
    n = c.max_gt_instances if instances is None else min(int(instances), c.max_gt_instances)
    settings = []
    for i, (frac, cost) in enumerate(((0.5, 0.3), (0.25, 1.0)), start=1):
        new = int(c.max_gt_instances * frac)
        if new < 8 or new >= n:
            continue
        settings.append(Setting("gt_instances", len(settings) + 1, {"max_gt_instances": new},
                                f"max_gt_instances {c.max_gt_instances} -> {new}", cost, f"data-dependent, ~{cost:g} AP if crowded"))
    if settings:
        out["gt_instances"] = settings
    order = ["all", "3+", "4+", "5+", "heads"]
    costs = {"3+": 0.3, "4+": 1.0, "5+": 2.5, "heads": 5.0}
    if c.layers in order and c.layers != "heads":
        start = order.index(c.layers)
        out["frozen_stages"] = [Setting("frozen_stages", i, {"layers": lay}, f"layers {c.layers} -> {lay}",
                                        costs[lay] - costs.get(c.layers, 0.0),
                                        f"~{costs[lay] - costs.get(c.layers, 0.0):g} AP (pretrained weights)")
                                for i, lay in enumerate(order[start + 1:], start=1)]
    out.update(_image_levers(c, image_size or source_size(c)))
    return out


def _image_levers(c: Config, size: tuple[int, int]) -> dict[str, list[Setting]]:
    """The crop and image-size levers of ``c`` for source images of ``size`` (H, W)."""
    from ..data.resize import compute_scale

    out: dict[str, list[Setting]] = {}
    h, w = size
    mode = c.image_resize_mode
    if mode != "crop" and c.aug_crop is None:
        _, (sh, sw) = compute_scale(h, w, mode, c.image_min_dim, c.image_max_dim, c.image_min_scale)
        if mode == "square":
            sh = sw = c.image_max_dim
        settings = []
        for i, (frac, cost) in enumerate(((0.75, 0.8), (0.5, 2.5)), start=1):
            ch, cw = _round_to(sh * frac, 32, 64), _round_to(sw * frac, 32, 64)
            if ch >= sh and cw >= sw:
                continue
            settings.append(Setting("crop", len(settings) + 1, {"aug_crop": [ch, cw]}, f"aug_crop: [{ch}, {cw}] of {sh}x{sw}",
                                    cost, f"~{cost:g} AP"))
        if settings:
            out["crop"] = settings
    settings = []
    for i, (frac, cost) in enumerate(((0.8, 1.5), (0.64, 4.0), (0.5, 7.0)), start=1):
        if mode == "minmax":
            ch = {"image_min_dim": _round_to(c.image_min_dim * frac, 32), "image_max_dim": _round_to(c.image_max_dim * frac, 32)}
            label = f"image_min_dim/max_dim {c.image_min_dim}/{c.image_max_dim} -> {ch['image_min_dim']}/{ch['image_max_dim']}"
        elif mode == "square":
            new = _round_to(c.image_max_dim * frac, 64)
            ch = {"image_max_dim": new, "image_min_dim": min(c.image_min_dim, new)}
            label = f"image_max_dim {c.image_max_dim} -> {new} (square)"
        elif mode == "crop":
            new = _round_to(c.image_min_dim * frac, c.size_divisibility)
            ch = {"image_min_dim": new}
            label = f"crop size image_min_dim {c.image_min_dim} -> {new}"
        else:
            break  # none / pad64 never shrink an image
        if all(getattr(c, k) == v for k, v in ch.items()):
            continue
        settings.append(Setting("image_size", len(settings) + 1, ch, label, cost, f"~{cost:g} AP"))
    if settings:
        out["image_size"] = settings
    return out


State = dict[str, int]  # lever key -> level (0 = as in the base config)


def state_key(state: State) -> str:
    """A hashable text of ``state`` (levels 0 left out): equal for equal combinations."""
    return json.dumps({k: v for k, v in sorted(state.items()) if v})


def apply_state(config: Config, settings: dict[str, list[Setting]], state: State) -> Config:
    """``config`` with the chosen level of each lever applied (validated)."""
    changes: dict[str, Any] = {}
    for key in LEVER_KEYS:
        level = state.get(key, 0)
        if level:
            changes.update(settings[key][level - 1].changes)
    return config.replace(**changes) if changes else config


def state_cost(settings: dict[str, list[Setting]], state: State) -> float:
    return sum(settings[k][lv - 1].cost for k, lv in state.items() if lv)


def short_label(setting: Setting) -> str:
    """A few words for a setting: ``1 img/pass``, ``256 RoIs``, ``layers 3+``, ``crop 192x256`` ..."""
    ch = setting.changes
    if "gradient_checkpointing" in ch:
        return "checkpointing"
    if "images_per_gpu" in ch:
        return f"{ch['images_per_gpu']} img/pass"
    if "amp" in ch:
        return f"amp {ch['amp']}"
    if "use_mini_mask" in ch:
        return "mini-masks"
    if "train_rois_per_image" in ch:
        return f"{ch['train_rois_per_image']} RoIs"
    if "max_gt_instances" in ch:
        return f"{ch['max_gt_instances']} GT"
    if "layers" in ch:
        return f"layers {ch['layers']}"
    if "aug_crop" in ch:
        return f"crop {ch['aug_crop'][0]}x{ch['aug_crop'][1]}"
    if "image_max_dim" in ch:
        return f"images {ch.get('image_min_dim', '')}/{ch['image_max_dim']}"
    if "image_min_dim" in ch:
        return f"crop size {ch['image_min_dim']}"
    return setting.label


def time_penalty(seconds: float, base_seconds: float, weight: float) -> float:
    """``weight`` per doubling of the step time beyond 1.5x (smaller slowdowns are within the noise
    of timing on a shared machine, and checkpointing's usual +30 % is its only, acceptable, cost)."""
    if not (base_seconds > 0 and math.isfinite(seconds) and seconds > 0):
        return 0.0
    return weight * max(0.0, math.log2(seconds / base_seconds) - math.log2(1.5))


def state_label(settings: dict[str, list[Setting]], state: State) -> str:
    parts = [settings[k][lv - 1].label for k in LEVER_KEYS if (lv := state.get(k, 0))]
    return ", ".join(parts) if parts else "base config"


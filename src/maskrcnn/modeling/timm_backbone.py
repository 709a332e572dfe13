"""Backbones from timm (``Config.backbone: "timm:<name>"``): a ``features_only`` model behind the same FPN.

The body is ``timm.create_model(name, features_only=True, pretrained=False, in_chans=C)``. Of its
features (``feature_info``: channels and reduction of each output) the last one at each stride 4,
8, 16 and 32 becomes C2..C5 and enters :class:`~.backbone.FPN` (P2..P5, P6 by max-pool), so the
RPN, RoI heads, anchors and poolers are those of the ResNet model. A stride-2 feature (EfficientNet,
MobileNetV3, RegNet, Inception-v3 have one) is left out; a model without features at all four
strides (a ViT: every feature at stride 16; a model built with ``output_stride=16``) is a
:class:`~maskrcnn.config.ConfigError` naming the strides it has. A feature whose size is not
``ceil(input / stride)`` (Inception-v3's unpadded convolutions) is resized bilinearly to it, so
anchors and RoIAlign find the stride they assume.

Parameter names are ``backbone.body.<the timm feature model's names>`` (timm flattens the first
``nn.Sequential`` level: ConvNeXt's ``stages.0`` is ``stages_0`` there); our checkpoints save and
load them like any other parameter.

ImageNet weights (``Config.timm_pretrained``, loaded when training starts from scratch): a local
file or an http(s) URL (downloaded once into the cache by :func:`maskrcnn.weights.download`) with
timm's state dict of the classification model, ``timm.create_model(name, pretrained=True).state_dict()``
saved with safetensors or ``torch.save``. Nothing is ever fetched from a model hub. The file is
read by :func:`maskrcnn.weights.read_state_dict` (no pickled code runs), its keys are matched to
the feature model's (the classifier is left out), and an RGB stem is adapted to other channel
counts by :func:`maskrcnn.weights.adapt_conv1`. Normalise the input as the weights expect
(``pixel_mean``/``pixel_std``: ImageNet's by default; Inception-v3's timm weights use 0.5/0.5).

BatchNorm follows ``train_bn`` as for the ResNet: frozen by default (statistics and affine
parameters untouched; :mod:`maskrcnn.engine.optim` keeps the layers in eval mode), trained with
``train_bn: true``. Layer presets (:meth:`TimmBackboneWithFPN.layer_regex`): ``heads`` freezes the
whole body, ``all`` trains it, ``3+`` / ``4+`` / ``5+`` train the body after the module that
outputs C2 / C3 / C4 (as the ResNet's ``layer2`` / ``layer3`` / ``layer4`` on).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LAYER_PRESETS, TIMM_EXAMPLES, ConfigError
from ..errors import WeightsError
from .backbone import FPN

__all__ = ["TimmBackboneWithFPN", "FPN_STRIDES", "pick_features", "timm_source_key"]

#: Strides of C2..C5 (P2..P5).
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32)

#: Layer preset -> index of the C feature (C2 = 0) whose module is the last frozen one.
_PRESET_FEATURE = {"3+": 0, "4+": 1, "5+": 2}


def _examples() -> str:
    return ", ".join(f"timm:{n}" for n in TIMM_EXAMPLES)


def pick_features(reductions: list[int], backbone: str) -> list[int]:
    """Positions in a feature model's outputs (``reductions``: the stride of each) of C2..C5: the last
    feature at each stride of :data:`FPN_STRIDES`; a one-line :class:`ConfigError` when one is missing."""
    picked, missing = [], []
    for s in FPN_STRIDES:
        at = [i for i, r in enumerate(reductions) if r == s]
        if at:
            picked.append(at[-1])
        else:
            missing.append(s)
    if missing:
        raise ConfigError(f"backbone={backbone}: its features have strides {list(reductions)}; the FPN needs features "
                          f"at strides 4, 8, 16 and 32 (P2..P5), missing {missing}; use a convolutional model, "
                          f"e.g. {_examples()}")
    return picked


def timm_source_key(key: str, source: dict[str, Any]) -> str | None:
    """The key of ``source`` (a classification model's state dict) holding feature-model tensor ``key``.

    The same name, or the name with one ``_`` of its first component read as ``.`` (timm's feature
    wrapper flattens the first ``nn.Sequential`` level: ``stages_0.blocks.1.x`` is ``stages.0.blocks.1.x``).
    None when there is none.
    """
    if key in source:
        return key
    first, _, rest = key.partition(".")
    for i, ch in enumerate(first):
        if ch == "_":
            cand = f"{first[:i]}.{first[i + 1:]}" + (f".{rest}" if rest else "")
            if cand in source:
                return cand
    return None


class TimmBackboneWithFPN(nn.Module):
    """``body`` (a timm ``features_only`` model) + ``fpn``; ``forward(x [B,C,H,W]) -> [P2, P3, P4, P5, P6]``.

    Args:
        name: the timm model name (``Config.backbone`` without ``timm:``).
        fpn_channels, v2: as :class:`~.backbone.BackboneWithFPN` (``v2``: FPN with BatchNorm).
        in_channels: input channels (``Config.image_channel_count``).
        gradient_checkpointing: timm's own activation recomputation of the body
            (``set_grad_checkpointing``); a :class:`ConfigError` for a model without it.
    """

    def __init__(self, name: str, fpn_channels: int, v2: bool, in_channels: int = 3,
                 gradient_checkpointing: bool = False) -> None:
        import timm  # Config validation checked that it is installed and knows the name

        super().__init__()
        self.name = name
        backbone = f"timm:{name}"
        try:
            self.body = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_channels)
        except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
            first = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ConfigError(f"backbone={backbone}: timm cannot build it as a feature extractor ({first}); "
                              f"use another model, e.g. {_examples()}") from None
        info = self.body.feature_info
        self.indices = pick_features(list(info.reduction()), backbone)
        channels, modules = list(info.channels()), list(info.module_name())
        self.feature_modules = [modules[i] for i in self.indices]
        self.fpn = FPN([channels[i] for i in self.indices], fpn_channels, norm=v2)
        self.out_channels = fpn_channels
        if gradient_checkpointing:
            if not hasattr(self.body, "set_grad_checkpointing"):
                raise ConfigError(f"gradient_checkpointing: {backbone} does not support it; set gradient_checkpointing: false")
            self.body.set_grad_checkpointing(True)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.body(x)
        h, w = x.shape[-2:]
        picked = []
        for i, s in zip(self.indices, FPN_STRIDES):
            f = feats[i]
            size = (-(-h // s), -(-w // s))
            if tuple(f.shape[-2:]) != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            picked.append(f)
        return self.fpn(picked)

    # ------------------------------------------------------------------ layers
    def layer_regex(self, layers: str) -> str:
        """The regular expression of trainable parameter names for ``Config.layers`` on this model.

        ``heads`` and ``all`` are the presets of :data:`~maskrcnn.config.LAYER_PRESETS`; ``3+``,
        ``4+``, ``5+`` name the body's modules after the one that outputs C2, C3, C4 (in module
        order, which is the forward order of timm's feature models); any other value is the user's
        regex, unchanged.
        """
        k = _PRESET_FEATURE.get(layers)
        if k is None:
            return LAYER_PRESETS.get(layers, layers)
        mods = list(self.body.named_modules())
        names = [n for n, _ in mods]
        target = self.feature_modules[k]
        found = [n for n in (target, target.replace(".", "_", 1)) if n in names]
        if not found:
            raise ConfigError(f"layers={layers}: cannot find timm:{self.name}'s module {target!r}; use heads, all "
                              "or a regex over parameter names")
        b = names.index(found[0])
        end = b + 1
        while end < len(names) and names[end].startswith(names[b] + "."):
            end += 1
        kept: list[str] = []
        for n, m in mods[end:]:
            if any(n.startswith(p + ".") for p in kept) or next(m.parameters(), None) is None:
                continue
            kept.append(n)
        body = "|".join(re.escape(n) for n in kept)
        return rf"^(backbone\.body\.(?:{body})|backbone\.fpn|rpn|roi_heads)\." if kept else LAYER_PRESETS["heads"]

    # ------------------------------------------------------------------ ImageNet weights
    def load_pretrained(self, spec: str) -> int:
        """Load timm's ImageNet weights of this model from ``spec`` (file or http(s) URL); returns the
        number of tensors loaded. Every problem is a one-line :class:`~maskrcnn.errors.WeightsError`."""
        from .. import weights as W

        path = _weights_file(spec, self.name)
        source = W.read_state_dict(path)
        own = self.body.state_dict()
        loaded: dict[str, Tensor] = {}
        missing = []
        for key, mine in own.items():
            src = timm_source_key(key, source)
            if src is None:
                if not key.endswith("num_batches_tracked"):
                    missing.append(key)
                continue
            t = source[src]
            if t.shape != mine.shape:
                if t.ndim == 4 and t.shape[1] == 3 and t.shape[0] == mine.shape[0] and t.shape[2:] == mine.shape[2:]:
                    t = W.adapt_conv1(t, mine.shape[1])
                else:
                    raise WeightsError(f"{path}: {src} has shape {tuple(t.shape)} but timm:{self.name} expects "
                                       f"{tuple(mine.shape)}; pass the ImageNet weights of {self.name} itself")
            loaded[key] = t
        if missing:
            raise WeightsError(f"{path}: no tensor for {missing[0]!r} ({len(missing)} of {len(own)} missing), not the "
                               f"weights of timm:{self.name}; save timm.create_model({self.name!r}, pretrained=True)"
                               ".state_dict() with safetensors or torch.save and pass that file")
        self.body.load_state_dict(loaded, strict=False)  # only num_batches_tracked can be left out
        return len(loaded)


def _weights_file(spec: str, name: str) -> Path:
    """The local file of ``timm_pretrained``: the path itself, or an http(s) URL downloaded once into the cache."""
    from .. import weights as W

    if re.match(r"^https?://", spec, re.I):
        file = Path(urlparse(spec).path).name
        if not file:
            raise WeightsError(f"timm_pretrained={spec}: the URL names no file; give the URL of the weights file itself")
        return W.download(spec, file)
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(f"timm_pretrained={spec}: file not found; pass timm's ImageNet weights of {name} "
                           "(.safetensors or .pth) or an http(s) URL")
    return path

"""Weights: named downloads, torchvision state dicts and our own checkpoints.

* Named weights ``"coco"`` (torchvision ``maskrcnn_resnet50_fpn``, 37.9 box / 34.6 mask AP),
  ``"coco-v2"`` (``maskrcnn_resnet50_fpn_v2``, 47.4 / 41.8) and ``"imagenet"`` (torchvision's
  ImageNet ResNet-50 or -101 classifier, ``IMAGENET1K_V1``, the one torchvision's Mask R-CNN
  starts from; the depth follows ``Config.backbone``; ``imagenet-resnet50``/``-resnet101`` name
  one) are downloaded once into the cache
  (``$MASKRCNN_CACHE`` or ``~/.cache/maskrcnn``), checked against the SHA-256 prefix in their file
  name, and loaded. torchvision's own cache is used when the file is already there. Offline, the
  error says which file to put where.
* torchvision state dicts (``.pth``/``.pt``) are read with ``torch.load(weights_only=True)``: no
  arbitrary unpickling. Legacy key names of the 2019 v1 file are accepted. A v1 file gets frozen
  BatchNorm ``eps = 0`` (torchvision's convention for it, inherited by models fine-tuned from it)
  unless ``frozen_bn_eps`` is given.
* Backbone-only state dicts (``imagenet``, a torchvision ``resnet*.pth`` with keys ``conv1.weight``,
  ``layer1.0...``, or keys prefixed ``backbone.body.``) load into the ResNet body only, for training
  (``train --weights``): the FPN, RPN and heads start as when training from scratch, as
  Matterport's ``--weights=imagenet`` does.
* Matterport's Keras ``.h5`` files (read with h5py, :mod:`.h5`) imply ``architecture: matterport``
  (its own network, :mod:`maskrcnn.modeling.matterport`), for detection and evaluation only.
* Our checkpoints are safetensors: one ``.safetensors`` file whose metadata holds the config YAML,
  or a folder with ``model.safetensors`` and ``config.yaml``.

This package holds the table of named weights and :func:`resolve_weights`, the one entry point;
the jobs it calls live in its modules: ``download`` (cache, download, hash), ``files`` (reading
and checking a file), ``convert`` (torchvision key names, backbone-only layouts, implied config),
``load`` (into a model), ``checkpoint`` (ours), ``h5`` (Matterport's Keras files) and ``start``
(a model with weights for a config: ``train --weights``, ``convert --weights``). Every public name is importable from here, and
the resolver looks ``NAMED_WEIGHTS`` and ``download`` up here, so replacing them on
``maskrcnn.weights`` (a mirror, a test) takes effect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import Config
from ..errors import WeightsError
from .checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from .convert import (COCO_CLASSES, backbone_state_dict, config_from_state_dict, convert_torchvision,
                      depth_from_keys, v1_frozen_bn_eps)
from .download import cache_dir, download, expected_prefix, file_sha256
from .files import check_finite, check_weights_file, read_state_dict
from .h5 import is_h5, load_h5_into, read_h5_weights
from .load import CLASS_DEPENDENT, adapt_conv1, load_into
from .start import model_from_weights, weights_to_checkpoint

__all__ = [
    "NAMED_WEIGHTS", "COCO_CLASSES", "resolve_named", "cache_dir", "download",
    "read_state_dict", "convert_torchvision", "config_from_state_dict", "load_into",
    "save_checkpoint", "load_checkpoint", "is_checkpoint", "check_weights_file", "check_finite",
    "ResolvedWeights", "resolve_weights", "backbone_state_dict", "imagenet_name", "IMAGENET",
    "NamedWeights", "CLASS_DEPENDENT", "file_sha256", "expected_prefix", "adapt_conv1", "depth_from_keys",
    "v1_frozen_bn_eps", "is_h5", "is_matterport", "local_path", "read_h5_weights", "load_h5_into",
    "model_from_weights", "weights_to_checkpoint",
]


@dataclass(frozen=True)
class NamedWeights:
    file: str
    url: str
    architecture: str | None  # None: a backbone only (an ImageNet classifier)
    backbone: str = "resnet50"


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "coco": NamedWeights("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
                         "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "v1"),
    "coco-v2": NamedWeights("maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
                            "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "v2"),
    "imagenet-resnet50": NamedWeights("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                                      None, "resnet50"),
    "imagenet-resnet101": NamedWeights("resnet101-63fe2227.pth",
                                       "https://download.pytorch.org/models/resnet101-63fe2227.pth", None, "resnet101"),
    # Matterport publishes no hash: the file is checked by reading its layout (compat.mrcnn.utils).
    "matterport-coco": NamedWeights("mask_rcnn_coco.h5",
                                    "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
                                    "matterport", "resnet101"),
}
#: ``"imagenet"`` picks one of these by ``Config.backbone``.
IMAGENET = "imagenet"


def imagenet_name(backbone: str | None) -> str:
    """The named ImageNet weights of a backbone depth (``"imagenet-resnet50"``), or a one-line error."""
    name = f"{IMAGENET}-{backbone or 'resnet50'}"
    if name not in NAMED_WEIGHTS:
        depths = ", ".join(k.split("-", 1)[1] for k in NAMED_WEIGHTS if k.startswith(IMAGENET + "-"))
        raise WeightsError(f"--weights imagenet: torchvision publishes ImageNet weights here for {depths}, not "
                           f"{backbone}; set backbone: resnet50 (or resnet101), or pass a backbone .pth file")
    return name


def resolve_named(name: str, *, progress: bool = True) -> tuple[Path, NamedWeights]:
    """The cached file of the named weights ``name`` (downloaded first if needed, hash re-checked) and its entry."""
    try:
        entry = NAMED_WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"unknown weights name {name!r}; use one of {', '.join(NAMED_WEIGHTS)}, {IMAGENET}, "
                           "a checkpoint (.safetensors or folder) or a torchvision .pth file") from None
    path = download(entry.url, entry.file, progress=progress)
    prefix = expected_prefix(entry.file)
    if prefix is not None and not file_sha256(path).startswith(prefix):
        raise WeightsError(f"{path}: SHA-256 does not match {prefix}; delete the file and download it again")
    return path, entry


def is_matterport(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names Matterport Keras weights: ``"matterport-coco"`` or an ``.h5`` file."""
    entry = NAMED_WEIGHTS.get(str(spec))
    return entry.architecture == "matterport" if entry is not None else is_h5(spec)


def local_path(spec: str | os.PathLike[str], *, progress: bool = True) -> str:
    """The file ``spec`` names: the cached file of named weights (downloaded first if needed), else ``spec``."""
    return str(resolve_named(str(spec), progress=progress)[0]) if str(spec) in NAMED_WEIGHTS else os.fspath(spec)


# ---------------------------------------------------------------------------- one entry point


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights named by a spec, read and checked (known key names, finite values).

    Attributes:
        state_dict: the tensors, under the current torchvision key names.
        implied: config fields the weights fix: a checkpoint's whole config; for a state dict its
            architecture, backbone, class count, channel and head widths (plus ``frozen_bn_eps``
            for a v1 file: torchvision's convention is 0, see :func:`v1_frozen_bn_eps`).
        source: the spec as given, for messages.
        config: a checkpoint's own config (None for a state dict).
        backbone_only: the tensors are a ResNet body only (``backbone.body.*``; ImageNet weights):
            load them with ``load_into(..., backbone_only=True)``; they cannot detect.
    """

    state_dict: dict[str, Tensor]
    implied: dict[str, Any]
    source: str
    config: Config | None = None
    backbone_only: bool = False

    @property
    def frozen_bn_eps(self) -> float | None:
        """The frozen-BatchNorm eps the weights were made with, None when they do not say."""
        return self.implied.get("frozen_bn_eps")

    def fit(self, config: Config, keys: tuple[str, ...]) -> Config:
        """``config`` with ``frozen_bn_eps`` following the weights when it is unset; a one-line
        :class:`WeightsError` when one of ``keys`` differs from what the weights imply."""
        for key in keys:
            if key in self.implied and getattr(config, key) != self.implied[key]:
                raise WeightsError(f"{self.source}: the weights have {key}={self.implied[key]!r} but the config says "
                                   f"{getattr(config, key)!r}; set {key}: {self.implied[key]!r} in the config or use "
                                   "matching weights")
        if config.frozen_bn_eps is None and self.frozen_bn_eps is not None:
            return config.replace(frozen_bn_eps=self.frozen_bn_eps)
        return config


def resolve_weights(spec: str | os.PathLike[str], *, progress: bool = True, backbone: str | None = None,
                    allow_backbone_only: bool = False) -> ResolvedWeights:
    """Read the weights ``spec`` names: ``"coco"``/``"coco-v2"``/``"imagenet"`` (downloaded once,
    hash-checked), one of our checkpoints (``.safetensors`` with a config, or a folder), or a
    state-dict file.

    The one place that turns a weights spec into tensors and config values (``maskrcnn.load``,
    ``maskrcnn train --weights``). ``"imagenet"`` is the ImageNet ResNet of depth ``backbone``
    (default resnet50). Backbone-only weights (``imagenet``, a ResNet classifier ``.pth``) are
    accepted only with ``allow_backbone_only`` (training starts from them; detecting cannot).
    Every problem is a one-line :class:`WeightsError` naming the file and the fix.
    """
    source = str(spec)
    name = imagenet_name(backbone) if source == IMAGENET else source
    if name in NAMED_WEIGHTS:
        if NAMED_WEIGHTS[name].architecture is None and not allow_backbone_only:
            raise WeightsError(_BACKBONE_ONLY.format(source=source))  # before downloading it
        path, entry = resolve_named(name, progress=progress)
        if entry.architecture == "matterport":
            sd, implied = read_h5_weights(path)
            return ResolvedWeights(sd, implied, source)
        sd = convert_torchvision(read_state_dict(path))
        if entry.architecture is None:
            return _backbone_weights(sd, source, allow_backbone_only)
        implied = _implied_by(sd, source)
        if implied["architecture"] == "v1":
            implied["frozen_bn_eps"] = 0.0  # torchvision's COCO file
        return ResolvedWeights(sd, implied, source)
    if is_h5(spec):  # Matterport's Keras weights: its own network (architecture: matterport)
        sd, implied = read_h5_weights(spec)
        return ResolvedWeights(sd, implied, source)
    if is_checkpoint(spec):
        config, sd = load_checkpoint(spec)
        return ResolvedWeights(sd, config.model_dump(), source, config)
    sd = read_state_dict(spec)
    if backbone_state_dict(sd) is not None:
        return _backbone_weights(sd, source, allow_backbone_only)
    sd = convert_torchvision(sd)
    implied = _implied_by(sd, source)
    if implied["architecture"] == "v1":
        implied["frozen_bn_eps"] = v1_frozen_bn_eps(sd)
    return ResolvedWeights(sd, implied, source)


_BACKBONE_ONLY = ("{source}: holds a backbone only (ImageNet classifier weights), which cannot detect; train from it "
                  "with maskrcnn train --weights {source}")


def _backbone_weights(sd: dict[str, Tensor], source: str, allowed: bool) -> ResolvedWeights:
    """A backbone-only state dict as :class:`ResolvedWeights` (it implies the depth and stem width)."""
    body = backbone_state_dict(sd)
    if body is None:
        raise WeightsError(f"{source}: not a ResNet backbone state dict (no conv1.weight / layer1.* keys); pass "
                           "torchvision ResNet weights")
    if not allowed:
        raise WeightsError(_BACKBONE_ONLY.format(source=source))
    try:
        implied: dict[str, Any] = {"backbone": depth_from_keys(body),
                                   "backbone_width": int(body["backbone.body.conv1.weight"].shape[0]),
                                   "frozen_bn_eps": 1e-5}  # an ImageNet classifier's plain BatchNorm
    except (WeightsError, IndexError) as exc:
        raise WeightsError(f"{source}: {exc}") from None
    return ResolvedWeights(body, implied, source, backbone_only=True)


def _implied_by(sd: dict[str, Tensor], source: str) -> dict[str, Any]:
    try:
        return config_from_state_dict(sd)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}") from None

"""A model with weights loaded for a config: the start of a training run, or a checkpoint to write.

:func:`model_from_weights` is the one place that fits a config to resolved weights and loads
them (``maskrcnn train --weights`` and ``maskrcnn convert --weights``): full Mask R-CNN weights
(class layers of another class count re-initialised, ``conv1`` adapted), backbone-only weights
(the ResNet body; the FPN, RPN and heads keep their initialisation) and Matterport ``.h5`` files
(``architecture: matterport``, loaded exactly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config import Config

__all__ = ["model_from_weights", "weights_to_checkpoint"]


def model_from_weights(spec: str | os.PathLike[str], config: Any = None, *, log: Callable[[str], None] = print,
                       source: str | None = None) -> tuple[Config, nn.Module]:
    """``(config, model)`` with the weights ``spec`` loaded.

    ``config``: a :class:`Config`, a YAML path, or None for the one the weights imply (a
    backbone-only file: the defaults with its depth and stem width). With a Matterport ``.h5`` it
    may be a Matterport config (see :func:`maskrcnn.compat.matterport.config_for_h5`). The
    architecture and backbone must match the weights (a one-line error otherwise).
    """
    from ..modeling import build_model
    from . import is_matterport, load_into, resolve_weights

    source = source or str(spec)
    if is_matterport(spec):
        from ..compat.matterport import config_for_h5

        resolved = resolve_weights(spec)
        config = config_for_h5(config, resolved.implied, resolved.source)
        model = build_model(config)
        load_into(model, resolved.state_dict, source=source, reinit_classes=False, log=log)
        return config, model
    if isinstance(config, (str, os.PathLike)):
        config = Config.from_yaml(config)
    resolved = resolve_weights(spec, backbone=None if config is None else config.backbone, allow_backbone_only=True)
    if config is None:
        keep = ("backbone", "backbone_width") if resolved.backbone_only else tuple(resolved.implied)
        config = resolved.config or Config.create(**{k: resolved.implied[k] for k in keep if k in resolved.implied})
    config = resolved.fit(config, ("backbone", "backbone_width") if resolved.backbone_only else ("architecture", "backbone"))
    model = build_model(config)
    load_into(model, resolved.state_dict, source=source, reinit_classes=True, log=log,
              backbone_only=resolved.backbone_only)
    return config, model


def weights_to_checkpoint(spec: str | os.PathLike[str], out: str | os.PathLike[str], config: Any = None, *,
                          log: Callable[[str], None] = print) -> Config:
    """Write the weights ``spec`` (named weights, a torchvision or backbone-only state dict, a
    Matterport ``.h5``, one of ours) as our checkpoint ``out`` (``.safetensors`` file or folder)
    with its config; returns the config. See :func:`model_from_weights` for ``config``."""
    from .checkpoint import save_checkpoint

    config, model = model_from_weights(spec, config, log=log)
    save_checkpoint(model, config, Path(out))
    return config

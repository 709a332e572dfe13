"""Which parameters train, how they are grouped, and the optimizer.

* Layer selection: ``Config.layers`` is a preset (``heads``, ``3+``, ``4+``, ``5+``, ``all``) or a
  regular expression searched in parameter names (``backbone.body.layer3.0.conv1.weight``); a timm
  backbone places ``3+``/``4+``/``5+`` in its own modules (:func:`layer_regex`).
  Parameters that do not match get ``requires_grad=False``.
* BatchNorm is frozen unless ``Config.train_bn``: its affine parameters do not train and its
  running statistics are not updated (the modules stay in eval mode while training). A
  BatchNorm whose parameters are outside the selected layers is frozen as well.
* Weight decay applies to weights only: never to biases or normalisation parameters.
* The optimizer is ``Config.optimizer``: SGD with momentum (default) or AdamW.
* The learning rate is ``learning_rate * total_batch / base_batch_size`` with
  ``total_batch = images_per_gpu * world_size * grad_accumulation``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ..config import Config, ConfigError

__all__ = [
    "NORM_TYPES",
    "layer_regex",
    "select_trainable",
    "set_train_mode",
    "param_groups",
    "scaled_learning_rate",
    "build_optimizer",
]

#: Module types whose parameters are normalisation parameters (no weight decay, frozen BN).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def _batchnorms(model: nn.Module) -> Iterable[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            yield name, module


def layer_regex(model: nn.Module, config: Config) -> str:
    """The regular expression of trainable parameter names that ``config.layers`` denotes on ``model``:
    the backbone's own when it has one (a timm body, :mod:`maskrcnn.modeling.timm_backbone`), else
    :meth:`Config.layer_regex`."""
    own = getattr(getattr(model, "backbone", None), "layer_regex", None)
    return own(config.layers) if callable(own) else config.layer_regex()


def select_trainable(model: nn.Module, config: Config) -> list[str]:
    """Set ``requires_grad`` from ``config.layers`` and ``config.train_bn``; return trainable names.

    Raises :class:`ConfigError` when the selection matches no parameter.
    """
    pattern = re.compile(layer_regex(model, config))
    frozen_bn_params: set[str] = set()
    if not config.train_bn:
        for mod_name, bn in _batchnorms(model):
            for p_name, _ in bn.named_parameters(recurse=False):
                frozen_bn_params.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    trainable = []
    for name, param in model.named_parameters():
        on = bool(pattern.search(name)) and name not in frozen_bn_params
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    if not trainable:
        raise ConfigError(
            f"layers={config.layers!r}: selects no trainable parameter; use a preset "
            "(heads, 3+, 4+, 5+, all) or a regex over names like 'roi_heads\\.'"
        )
    return trainable


def set_train_mode(model: nn.Module, train_bn: bool) -> None:
    """``model.train()``, keeping BatchNorm in eval mode when it is frozen.

    A BatchNorm is frozen when ``train_bn`` is False or when none of its parameters train
    (layers outside the selection keep their statistics too).
    """
    model.train()
    for _, bn in _batchnorms(model):
        params = list(bn.parameters(recurse=False))
        trains = train_bn and (not params or any(p.requires_grad for p in params))
        if not trains:
            bn.eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split in two groups: with weight decay, and without.

    No decay on biases, on 0-/1-dimensional parameters and on every parameter of a
    normalisation module (:data:`NORM_TYPES`). Each group carries its parameter names in
    ``"names"`` for inspection.
    """
    norm_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in norm_params or param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


def scaled_learning_rate(config: Config, world_size: int = 1) -> float:
    """``learning_rate`` scaled linearly from ``base_batch_size`` to the real total batch."""
    total = config.images_per_gpu * world_size * config.grad_accumulation
    return config.learning_rate * total / config.base_batch_size


#: Devices with fused AdamW kernels in PyTorch 2.14: one kernel updates every parameter tensor,
#: where the default CPU implementation loops over them in Python (nuclei preset, 102 tensors, 4.1 M
#: values, 2 cores: 11.6 ms -> 1.9 ms per step, 5 % of the step).
_FUSED_DEVICES = frozenset({"cpu", "cuda", "mps", "xpu"})


def _fused_kernels_cover(params: Iterable[torch.Tensor]) -> bool:
    """True when every parameter is a floating-point tensor on a device with fused AdamW kernels."""
    return all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, config: Config, world_size: int = 1) -> torch.optim.Optimizer:
    """``config.optimizer`` over :func:`param_groups`, at the scaled learning rate.

    ``sgd``: SGD with ``config.momentum`` (torchvision's and Matterport's choice; the recipe for
    fine-tuning pretrained weights). ``adamw``: AdamW with betas (0.9, 0.999) and decoupled weight
    decay ``config.weight_decay`` on weights only; it converges far faster from scratch on small
    data sets (``maskrcnn demo``: mask AP50 0.94 against SGD's 0.75 at equal steps). AdamW runs
    PyTorch's fused kernel where the parameters' device has one (the same update in one pass).

    Call :func:`select_trainable` first; the optimizer only holds trainable parameters.
    """
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError(f"layers={config.layers!r}: no trainable parameter; choose other layers")
    lr = scaled_learning_rate(config, world_size)
    if config.optimizer == "adamw":
        fused = _fused_kernels_cover(p for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)

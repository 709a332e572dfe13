"""Fast-mode graph changes (``Config.fast``): fold BatchNorm into the preceding convolution, channels-last.

``conv(x) * scale + bias == conv'(x)`` with ``W' = W * scale`` and ``b' = b * scale + bias``; the
results differ from the unfolded network only by float rounding (about 1e-6 relative), and one
full pass over every activation is saved. Channels-last (NHWC) weights make every convolution
produce NHWC activations, the layout oneDNN's bf16 kernels (AMX, AVX512-BF16) and cuDNN's tensor
cores want. The precision is not changed here: the predictor runs the copy under autocast
(:func:`maskrcnn.engine.runtime.autocast` with :func:`~maskrcnn.engine.runtime.resolve_fast_dtype`).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from .layers import FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "fast_copy"]

M = TypeVar("M", bound=nn.Module)


def _scale_bias(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(bn, FrozenBatchNorm2d):
        return bn.scale_and_bias()
    assert isinstance(bn, nn.BatchNorm2d)
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module) -> None:
    scale, bias = _scale_bias(bn)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bias)
    conv.bias = nn.Parameter(b * scale + bias)


def _is_bn(m: nn.Module) -> bool:
    """A plain BatchNorm (exact type): a subclass may do more in its forward (timm's BatchNormAct2d
    applies an activation too), so replacing it by ``Identity`` would change the network."""
    return type(m) in (FrozenBatchNorm2d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``conv -> BN`` pair of ``model`` in place (BN replaced by ``Identity``); returns the count.

    Pairs are found as consecutive children of ``nn.Sequential`` and as ``convN``/``bnN``
    attributes (ResNet blocks and stem). The model must be in eval mode.
    """
    if model.training:
        raise RuntimeError("fold_batchnorm needs an eval-mode model")
    count = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            kids = list(module._modules.items())
            for (_, a), (name_b, b) in zip(kids, kids[1:]):
                if isinstance(a, nn.Conv2d) and _is_bn(b):
                    _fold(a, b)
                    module._modules[name_b] = nn.Identity()
                    count += 1
        for name, child in list(module._modules.items()):
            if name.startswith("conv") and isinstance(child, nn.Conv2d):
                bn_name = "bn" + name[4:]
                bn = module._modules.get(bn_name)
                if bn is not None and _is_bn(bn):
                    _fold(child, bn)
                    module._modules[bn_name] = nn.Identity()
                    count += 1
    return count


def fast_copy(model: M, channels_last: bool = True) -> M:
    """A copy of ``model`` for fast inference: eval mode, every ``conv -> BN`` pair folded
    (:func:`fold_batchnorm`) and, with ``channels_last``, every 4-d weight in NHWC layout.
    ``model`` itself is left untouched (its weights can still be trained or saved)."""
    fast = copy.deepcopy(model).eval()
    fold_batchnorm(fast)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast

"""Small building blocks: frozen BatchNorm and conv helpers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "conv_norm_relu"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, not parameters).

    ``y = x * scale + bias`` with ``scale = weight * rsqrt(running_var + eps)`` and
    ``bias = bias - running_mean * scale``, computed exactly as torchvision does so that outputs
    match bit for bit. ``eps`` is an attribute: torchvision's v1 COCO file needs ``eps = 0``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def scale_and_bias(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(scale, bias)`` vectors ``[C]``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def _vectors(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(scale, bias)`` as ``[1, C, 1, 1]`` in ``dtype`` (a no-op cast in fp32)."""
        scale, bias = self.scale_and_bias()
        return scale.reshape(1, -1, 1, 1).to(dtype), bias.reshape(1, -1, 1, 1).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            # no autograd graph (inference, or a frozen stage in training): the same arithmetic, in place
            # on the conv output it always follows, so no second full-size buffer is allocated (and a
            # bf16/fp16 activation under autocast stays in its dtype)
            if x.dtype == self.weight.dtype:
                scale, bias = self._vectors(x.dtype)
                return x.mul_(scale).add_(bias)
            # bf16/fp16 under autocast: the vectors in the activation's dtype, one pass. An fp32 vector
            # in place on a bf16 tensor takes PyTorch's slow mixed-dtype loop (2x256x128x192, 2 cores:
            # 150 ms against 1.2 ms)
            scale, bias = self._vectors(x.dtype)
            return torch.addcmul(bias, x, scale, out=x)
        if torch.is_grad_enabled():
            # training: one fused op (one output buffer instead of two); under autocast the activation
            # keeps its bf16/fp16 dtype
            scale, bias = self._vectors(x.dtype)
            return torch.addcmul(bias, x, scale)
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_norm_relu(cin: int, cout: int, k: int, norm: bool, relu: bool = True) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` layout: ``[conv, (bn), (relu)]`` (key names ``.0``, ``.1``)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)

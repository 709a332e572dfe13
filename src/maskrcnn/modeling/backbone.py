"""ResNet body (torchvision's blocks) + FPN producing P2..P6.

Feature maps, for a padded batch ``[B, C, H, W]`` with H, W multiples of 32:

======  ======  ==========================
level   stride  shape
======  ======  ==========================
P2      4       ``[B, fpn_channels, H/4, W/4]``
P3      8       ``[B, fpn_channels, H/8, W/8]``
P4      16      ``[B, fpn_channels, H/16, W/16]``
P5      32      ``[B, fpn_channels, H/32, W/32]``
P6      64      max-pool (kernel 1, stride 2) of P5, used by the RPN only
======  ======  ==========================

Parameter names follow torchvision (``body.conv1``, ``body.layer1.0.conv1``,
``fpn.inner_blocks.0.0``, ``fpn.layer_blocks.0.0``) so its checkpoints load directly.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .layers import FrozenBatchNorm2d

__all__ = ["ResNetBody", "FPN", "BackboneWithFPN", "RESNET_LAYERS"]

#: blocks per stage and block type of each depth
RESNET_LAYERS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNetBody(nn.Module):
    """ResNet stem and stages 1-4 built from torchvision's ``BasicBlock``/``Bottleneck``.

    Same structure and names as ``torchvision.models.resnet*`` without the classifier, plus a
    ``width`` (stem channels; 64 is standard) for lean models trained from scratch.

    Input ``[B, in_channels, H, W]``; output the list of stage outputs C2..C5 with strides 4..32.
    """

    def __init__(self, depth: str, norm_layer: Callable[[int], nn.Module], in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        block, layers = RESNET_LAYERS[depth]
        self._norm_layer = norm_layer
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.out_channels = [width * m * block.expansion for m in (1, 2, 4, 8)]
        self.gradient_checkpointing = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        expansion = block.expansion  # type: ignore[attr-defined]
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * expansion, stride), norm_layer(planes * expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self.dilation, norm_layer)]
        self.inplanes = planes * expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.gradient_checkpointing and self.training and x.requires_grad:
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest top-down upsampling to each lateral's exact size,
    3x3 output convs, and P6 = ``max_pool2d(P5, 1, 2)``.

    ``norm=True`` is torchvision's v2 layout (conv without bias + BatchNorm at index ``.1``).
    """

    def __init__(self, in_channels: list[int], out_channels: int, norm: bool = False) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for cin in in_channels:
            inner: list[nn.Module] = [nn.Conv2d(cin, out_channels, 1, bias=not norm)]
            layer: list[nn.Module] = [nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not norm)]
            if norm:
                inner.append(nn.BatchNorm2d(out_channels))
                layer.append(nn.BatchNorm2d(out_channels))
            self.inner_blocks.append(nn.Sequential(*inner))
            self.layer_blocks.append(nn.Sequential(*layer))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        self.out_channels = out_channels

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](feats[idx])
            top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
            last_inner = inner_lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results


class BackboneWithFPN(nn.Module):
    """``body`` (ResNet) + ``fpn``; ``forward(x [B,C,H,W]) -> [P2, P3, P4, P5, P6]``."""

    def __init__(self, depth: str, fpn_channels: int, v2: bool, in_channels: int = 3, width: int = 64,
                 frozen_bn_eps: float = 1e-5, trainable_bn: bool = False) -> None:
        super().__init__()
        if v2 or trainable_bn:
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d
        else:
            def norm_layer(c: int) -> nn.Module:
                return FrozenBatchNorm2d(c, eps=frozen_bn_eps)
        self.body = ResNetBody(depth, norm_layer, in_channels=in_channels, width=width)
        self.fpn = FPN(self.body.out_channels, fpn_channels, norm=v2)
        self.out_channels = fpn_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x))

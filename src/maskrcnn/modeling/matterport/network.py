"""Matterport's layers under their Keras names: ResNet body, FPN, RPN, box and mask heads.

Every layer with weights is an entry of :attr:`MatterportLayers.layers` (an ``nn.ModuleDict``)
named as in Matterport's Keras model, so a ``.h5`` file maps onto it name by name
(:mod:`maskrcnn.weights.h5`) and our state-dict keys are ``layers.<keras name>.<tensor>``.
Convolutions have biases, BatchNorm is frozen (inference statistics) with Keras' eps 1e-3.
Tensors are NCHW; the forward functions state their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from .ops import max_pool_same

__all__ = ["NetShape", "MatterportLayers", "STAGE_BLOCKS", "BN_EPS", "RPN_CHANNELS"]

#: Keras' BatchNormalization default epsilon.
BN_EPS = 1e-3
#: blocks per ResNet stage (2..5) of each depth; Matterport names them a, b, c, ...
STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
#: width of the shared RPN conv (fixed in Matterport's ``build_rpn_model``)
RPN_CHANNELS = 512


@dataclass(frozen=True)
class NetShape:
    """The sizes that fix the tensors' shapes (Matterport's defaults first).

    ``width`` is the stem's channels (64; the stage widths are 1, 2, 4, 8 times it, times 4 at the
    bottleneck outputs), ``fpn`` ``TOP_DOWN_PYRAMID_SIZE``, ``fc`` ``FPN_CLASSIF_FC_LAYERS_SIZE``,
    ``mask`` the mask head's channels (256), ``anchors`` anchors per cell (ratios).
    """

    num_classes: int
    backbone: str = "resnet101"
    width: int = 64
    fpn: int = 256
    fc: int = 1024
    mask: int = 256
    anchors: int = 3
    in_channels: int = 3
    rpn: int = RPN_CHANNELS


def _bn(n: int) -> FrozenBatchNorm2d:
    return FrozenBatchNorm2d(n, eps=BN_EPS)


class MatterportLayers(nn.Module):
    """The weights of Matterport's network and the forward passes of its parts (inference)."""

    def __init__(self, shape: NetShape) -> None:
        super().__init__()
        if shape.backbone not in STAGE_BLOCKS:
            raise ValueError(f"backbone {shape.backbone!r}: Matterport's network is resnet50 or resnet101")
        self.shape = shape
        s = shape
        L = nn.ModuleDict()
        L["conv1"] = nn.Conv2d(s.in_channels, s.width, 7, stride=2)
        L["bn_conv1"] = _bn(s.width)
        self.blocks: list[tuple[int, str, int]] = []  # (stage, letter, stride of a conv block else 0)
        in_ch = s.width
        for stage, count in zip((2, 3, 4, 5), STAGE_BLOCKS[s.backbone]):
            mid = s.width * 2 ** (stage - 2)
            out = mid * 4
            for i in range(count):
                letter = chr(97 + i)
                base = f"{stage}{letter}_branch"
                L[f"res{base}2a"] = nn.Conv2d(in_ch, mid, 1, stride=1 if i or stage == 2 else 2)
                L[f"bn{base}2a"] = _bn(mid)
                L[f"res{base}2b"] = nn.Conv2d(mid, mid, 3, padding=1)
                L[f"bn{base}2b"] = _bn(mid)
                L[f"res{base}2c"] = nn.Conv2d(mid, out, 1)
                L[f"bn{base}2c"] = _bn(out)
                if i == 0:
                    L[f"res{base}1"] = nn.Conv2d(in_ch, out, 1, stride=1 if stage == 2 else 2)
                    L[f"bn{base}1"] = _bn(out)
                self.blocks.append((stage, letter, i == 0))
                in_ch = out
        for level in (2, 3, 4, 5):
            L[f"fpn_c{level}p{level}"] = nn.Conv2d(s.width * 2 ** (level - 2) * 4, s.fpn, 1)
            L[f"fpn_p{level}"] = nn.Conv2d(s.fpn, s.fpn, 3, padding=1)
        L["rpn_conv_shared"] = nn.Conv2d(s.fpn, s.rpn, 3, padding=1)
        L["rpn_class_raw"] = nn.Conv2d(s.rpn, 2 * s.anchors, 1)
        L["rpn_bbox_pred"] = nn.Conv2d(s.rpn, 4 * s.anchors, 1)
        L["mrcnn_class_conv1"] = nn.Conv2d(s.fpn, s.fc, 7)  # "valid" 7x7 over the 7x7 pool: an FC layer
        L["mrcnn_class_bn1"] = _bn(s.fc)
        L["mrcnn_class_conv2"] = nn.Conv2d(s.fc, s.fc, 1)
        L["mrcnn_class_bn2"] = _bn(s.fc)
        L["mrcnn_class_logits"] = nn.Linear(s.fc, s.num_classes)
        L["mrcnn_bbox_fc"] = nn.Linear(s.fc, 4 * s.num_classes)
        ch = s.fpn
        for i in (1, 2, 3, 4):
            L[f"mrcnn_mask_conv{i}"] = nn.Conv2d(ch, s.mask, 3, padding=1)
            L[f"mrcnn_mask_bn{i}"] = _bn(s.mask)
            ch = s.mask
        L["mrcnn_mask_deconv"] = nn.ConvTranspose2d(s.mask, s.mask, 2, stride=2)
        L["mrcnn_mask"] = nn.Conv2d(s.mask, s.num_classes, 1)
        self.layers = L

    def _cbr(self, x: Tensor, conv: str, bn: str, relu: bool = True) -> Tensor:
        x = self.layers[bn](self.layers[conv](x))
        return F.relu(x) if relu else x

    def backbone(self, x: Tensor) -> list[Tensor]:
        """Normalised ``[B, C, H, W]`` (H, W multiples of 64) -> ``[P2, P3, P4, P5, P6]`` (strides 4..64)."""
        x = self._cbr(F.pad(x, (3, 3, 3, 3)), "conv1", "bn_conv1")  # ZeroPadding2D(3) + "valid" 7x7/2
        x = max_pool_same(x, 3, 2)
        c: dict[int, Tensor] = {}
        for stage, letter, first in self.blocks:
            base = f"{stage}{letter}_branch"
            y = self._cbr(x, f"res{base}2a", f"bn{base}2a")
            y = self._cbr(y, f"res{base}2b", f"bn{base}2b")
            y = self._cbr(y, f"res{base}2c", f"bn{base}2c", relu=False)
            shortcut = self._cbr(x, f"res{base}1", f"bn{base}1", relu=False) if first else x
            x = F.relu(y + shortcut)
            c[stage] = x
        L = self.layers
        p5 = L["fpn_c5p5"](c[5])
        p4 = F.interpolate(p5, scale_factor=2.0, mode="nearest") + L["fpn_c4p4"](c[4])
        p3 = F.interpolate(p4, scale_factor=2.0, mode="nearest") + L["fpn_c3p3"](c[3])
        p2 = F.interpolate(p3, scale_factor=2.0, mode="nearest") + L["fpn_c2p2"](c[2])
        ps = [L[f"fpn_p{lvl}"](p) for lvl, p in zip((2, 3, 4, 5), (p2, p3, p4, p5))]
        return ps + [F.max_pool2d(ps[3], 1, 2)]

    def rpn(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The shared RPN over every level -> ``(probs [B, A, 2], deltas [B, A, 4])``, anchors ordered
        level, row, column, ratio (channels-last reshape, as Keras')."""
        L = self.layers
        probs, deltas = [], []
        for p in features:
            shared = F.relu(L["rpn_conv_shared"](p))
            logits = L["rpn_class_raw"](shared).permute(0, 2, 3, 1).reshape(p.shape[0], -1, 2)
            probs.append(torch.softmax(logits, dim=2))
            deltas.append(L["rpn_bbox_pred"](shared).permute(0, 2, 3, 1).reshape(p.shape[0], -1, 4))
        return torch.cat(probs, 1), torch.cat(deltas, 1)

    def classifier(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled ``[R, C, 7, 7]`` -> ``(class probabilities [R, K], deltas [R, K, 4] (dy, dx, log dh, log dw))``."""
        x = self._cbr(pooled, "mrcnn_class_conv1", "mrcnn_class_bn1")
        x = self._cbr(x, "mrcnn_class_conv2", "mrcnn_class_bn2").flatten(1)
        probs = torch.softmax(self.layers["mrcnn_class_logits"](x), dim=1)
        deltas = self.layers["mrcnn_bbox_fc"](x).reshape(x.shape[0], -1, 4)
        return probs, deltas

    def mask(self, pooled: Tensor) -> Tensor:
        """Pooled ``[R, C, 14, 14]`` -> per-class mask probabilities ``[R, K, 28, 28]``."""
        x = pooled
        for i in (1, 2, 3, 4):
            x = self._cbr(x, f"mrcnn_mask_conv{i}", f"mrcnn_mask_bn{i}")
        x = F.relu(self.layers["mrcnn_mask_deconv"](x))
        return torch.sigmoid(self.layers["mrcnn_mask"](x))

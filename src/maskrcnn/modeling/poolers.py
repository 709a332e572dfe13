"""Multi-level RoIAlign over P2..P5.

The level of a box is ``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` clamped to [2, 5] (FPN eq. 1,
torchvision's rounding); scales are exactly ``1 / stride`` (torchvision infers them from the first
batch it sees, which goes wrong for images under ~64 px; for normal sizes the two agree).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .threaded_ops import roi_align

__all__ = ["MultiLevelRoIAlign", "roi_levels"]


def roi_levels(boxes: Tensor, k_min: int = 2, k_max: int = 5) -> Tensor:
    """FPN level index (0 = P2) of each box ``[N, 4]``."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    lv = torch.floor(4 + torch.log2(s / 224) + torch.tensor(1e-6, dtype=s.dtype))
    return (torch.clamp(lv, min=k_min, max=k_max).to(torch.int64) - k_min)


class MultiLevelRoIAlign:
    """``__call__(features [P2..P5] each [B, C, h, w], boxes list[[N_i, 4]]) -> [sum N_i, C, S, S]``.

    ``aligned=False`` and ``sampling_ratio`` as torchvision's Mask R-CNN.
    """

    def __init__(self, output_size: int, sampling_ratio: int, strides: tuple[int, ...] = (4, 8, 16, 32)) -> None:
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.scales = [1.0 / s for s in strides]

    def __call__(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        concat = torch.cat(boxes, 0)
        ids = torch.cat([torch.full((b.shape[0], 1), i, dtype=concat.dtype, device=concat.device)
                         for i, b in enumerate(boxes)], 0)
        return self.pool(features, torch.cat([ids, concat], 1))

    def pool(self, features: list[Tensor], rois: Tensor) -> Tensor:
        """Pooled ``[R, C, S, S]`` of ``rois [R, 5]`` (batch index, x1, y1, x2, y2). While tracing
        (ONNX export) every level runs, empty or not (the traced graph must not depend on the
        example's counts)."""
        feats = features[: len(self.scales)]
        tracing = torch.jit.is_tracing()
        levels = roi_levels(rois[:, 1:])
        c = feats[0].shape[1]
        result = torch.zeros((rois.shape[0], c) + self.output_size, dtype=feats[0].dtype, device=feats[0].device)
        if rois.shape[0] == 0 and not tracing:
            return result
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel() == 0 and not tracing:
                continue
            out = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, False)  # CPU: threaded
            result.index_copy_(0, idx, out.to(result.dtype))  # not result[idx] = out: traced, it fixed a level's count
        return result

"""Anchor generation, cached per feature-map shape.

Anchors are ``(x1, y1, x2, y2)`` pixels of the padded batch image. For a level with stride ``s``,
size ``S`` and ratio ``r`` (height / width): ``h = sqrt(r)``, ``w = 1 / h``, the base anchor is
``round([-w*S, -h*S, w*S, h*S] / 2)``, shifted by ``(x*s, y*s)`` for each cell (the anchor centre is
the cell's top-left corner, as in torchvision). Order within a level: (y, x, anchor).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "grid_anchors"]


def grid_anchors(base: Tensor, fh: int | Tensor, fw: int | Tensor, stride_h: Tensor, stride_w: Tensor) -> Tensor:
    """Anchors ``[fh*fw*A, 4]`` of one level: ``base [A, 4]`` shifted to every cell's top-left corner
    ``(x * stride_w, y * stride_h)``, in (y, x, anchor) order. Sizes may be traced values (export)."""
    device = base.device
    shifts_x = torch.arange(0, fw, dtype=torch.int32, device=device) * stride_w
    shifts_y = torch.arange(0, fh, dtype=torch.int32, device=device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """One anchor size per FPN level, several aspect ratios.

    ``forward(image_size (H, W) of the padded batch, feature sizes [(h, w), ...]) -> list[Tensor [h*w*A, 4]]``,
    cached: a repeated shape costs a dictionary lookup.
    """

    def __init__(self, sizes: list[float], ratios: list[float], max_cache: int = 32) -> None:
        super().__init__()
        self.sizes = [float(s) for s in sizes]
        self.ratios = [float(r) for r in ratios]
        self.cell_anchors = [self._base(s) for s in self.sizes]
        self._cache: dict[tuple, list[Tensor]] = {}
        self._max_cache = max_cache

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios)

    def _base(self, size: float) -> Tensor:
        scales = torch.as_tensor([size], dtype=torch.float32)
        ratios = torch.as_tensor(self.ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def forward(self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]],
                device: torch.device, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        key = (tuple(image_size), tuple(tuple(f) for f in feature_sizes), str(device), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        anchors = []
        for (fh, fw), base in zip(feature_sizes, self.cell_anchors):
            sh = torch.tensor(image_size[0] // fh, dtype=torch.int64, device=device)
            sw = torch.tensor(image_size[1] // fw, dtype=torch.int64, device=device)
            anchors.append(grid_anchors(base.to(dtype=dtype, device=device), fh, fw, sh, sw))
        if len(self._cache) >= self._max_cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = anchors
        return anchors

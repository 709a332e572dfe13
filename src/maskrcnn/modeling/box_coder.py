"""Box coding: boxes <-> regression deltas ``(dx, dy, dw, dh)``.

``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``, ``dw = ww * log(gw / pw)``,
``dh = wh * log(gh / ph)`` with centres ``(x1 + w/2, y1 + h/2)`` and ``w = x2 - x1`` (no "+1").
Weights are ``1 / std_dev`` (RPN ``(1,1,1,1)``, box head ``(10,10,5,5)``). Decoding clamps
``dw, dh`` at ``log(1000/16)`` before ``exp``. Operation order follows torchvision exactly.
:func:`clip_boxes` clips boxes to an image (used by the RPN and the box head).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder", "clip_boxes"]


class BoxCoder:
    """Encode GT boxes as deltas relative to reference boxes and decode deltas back (module doc).

    Boxes are ``(x1, y1, x2, y2)`` pixels; deltas ``(dx, dy, dw, dh)``, one group of 4 per class.
    """

    def __init__(self, weights: tuple[float, float, float, float], clip: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.clip = clip

    def encode(self, gt: Tensor, proposals: Tensor) -> Tensor:
        """Deltas ``[N, 4]`` that move ``proposals [N, 4]`` onto ``gt [N, 4]``."""
        wx, wy, ww, wh = (torch.tensor(w, dtype=gt.dtype, device=gt.device) for w in self.weights)
        ex_w = proposals[:, 2:3] - proposals[:, 0:1]
        ex_h = proposals[:, 3:4] - proposals[:, 1:2]
        ex_x = proposals[:, 0:1] + 0.5 * ex_w
        ex_y = proposals[:, 1:2] + 0.5 * ex_h
        gt_w = gt[:, 2:3] - gt[:, 0:1]
        gt_h = gt[:, 3:4] - gt[:, 1:2]
        gt_x = gt[:, 0:1] + 0.5 * gt_w
        gt_y = gt[:, 1:2] + 0.5 * gt_h
        return torch.cat((wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h,
                          ww * torch.log(gt_w / ex_w), wh * torch.log(gt_h / ex_h)), dim=1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply ``deltas [N, 4*K]`` to ``boxes [N, 4]``; returns ``[N, K, 4]``."""
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.clip)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        half = torch.tensor(0.5, dtype=pred_ctr_y.dtype, device=deltas.device)
        c_h = half * pred_h
        c_w = half * pred_w
        return torch.stack((pred_ctr_x - c_w, pred_ctr_y - c_h, pred_ctr_x + c_w, pred_ctr_y + c_h), dim=2)


def clip_boxes(boxes: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Clip ``boxes [N, 4]`` (x1, y1, x2, y2) to an image of ``size (H, W)``: x to ``[0, W]``, y to ``[0, H]``.

    ``size`` may also be a ``[N, 2]`` tensor: each box's own image ``(H, W)`` (the exported graph
    clips the boxes of a whole batch at once)."""
    if isinstance(size, Tensor):
        h, w = size[:, 0:1].to(boxes.dtype), size[:, 1:2].to(boxes.dtype)
        xs = torch.minimum(boxes[:, 0::2].clamp(min=0), w)
        ys = torch.minimum(boxes[:, 1::2].clamp(min=0), h)
        return torch.stack((xs, ys), dim=2).reshape(-1, 4)
    h, w = size
    return torch.stack((boxes[:, 0::2].clamp(0, w), boxes[:, 1::2].clamp(0, h)), dim=2).reshape(-1, 4)

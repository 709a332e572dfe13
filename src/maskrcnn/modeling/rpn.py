"""Region proposal network: a shared conv head over P2..P6, proposal selection and its losses.

Proposals are ``(x1, y1, x2, y2)`` in the resized (unpadded) image of each batch element.
Selection follows torchvision exactly, except that only the top-k anchors of each level are
decoded (torchvision decodes all ~217k anchors of an 800x1088 batch first; the values are the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from .anchors import AnchorGenerator
from .box_coder import BoxCoder
from .matching import BELOW_LOW, BETWEEN, Matcher, sample_balanced
from .regions import box_ignore_fraction

__all__ = ["RPNHead", "RegionProposalNetwork"]


class RPNHead(nn.Module):
    """``conv_depth`` 3x3 conv + ReLU layers, then 1x1 convs to ``A`` logits and ``4A`` deltas per cell.

    Names follow torchvision: ``conv.{i}.0``, ``cls_logits``, ``bbox_pred``.
    """

    def __init__(self, channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(*[nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                                    for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: logits ``[B, A, h, w]`` and deltas ``[B, 4A, h, w]``."""
        logits, deltas = [], []
        for f in feats:
            t = self.conv(f)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def _flatten(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor, list[int]]:
    """``[B, A*h*w...]`` objectness and ``[B, sum, 4]`` deltas in (y, x, anchor) order, fp32."""
    obj, reg, counts = [], [], []
    for lg, dl in zip(logits, deltas):
        b, a, h, w = lg.shape
        obj.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
        reg.append(dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        counts.append(h * w * a)
    return torch.cat(obj, 1).float(), torch.cat(reg, 1).float(), counts


class RegionProposalNetwork(nn.Module):
    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, *, fg_iou: float, bg_iou: float,
                 batch_size_per_image: int, positive_fraction: float, pre_nms_top_n: dict[str, int],
                 post_nms_top_n: dict[str, int], nms_thresh: float, weights: tuple[float, float, float, float],
                 score_thresh: float = 0.0, min_size: float = 1e-3) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = BoxCoder(weights)
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality=True)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(self, feats: list[Tensor], padded_size: tuple[int, int], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image ``[P_i, 4]`` and, in training, ``{"rpn_class", "rpn_bbox"}`` losses."""
        logits, deltas = self.head(feats)
        anchors_per_level = self.anchor_generator(padded_size, [tuple(f.shape[-2:]) for f in feats],
                                                  feats[0].device)
        objectness, reg, counts = _flatten(logits, deltas)
        anchors = torch.cat(anchors_per_level, 0)
        proposals = self.select_proposals(objectness.detach(), reg.detach(), anchors, counts, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            assert targets is not None
            losses = self.losses(objectness, reg, anchors, targets)
        return proposals, losses

    # ------------------------------------------------------------------ inference
    def select_proposals(self, objectness: Tensor, reg: Tensor, anchors: Tensor, counts: list[int],
                         image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        b = objectness.shape[0]
        k_pre = self.pre_nms_top_n[self._mode()]
        idx, lvl = [], []
        offset = 0
        for level, ob in enumerate(objectness.split(counts, 1)):
            k = min(k_pre, ob.shape[1])
            _, top = ob.topk(k, dim=1)
            idx.append(top + offset)
            lvl.append(torch.full((k,), level, dtype=torch.int64, device=ob.device))
            offset += ob.shape[1]
        top_idx = torch.cat(idx, 1)  # [B, K]
        levels = torch.cat(lvl, 0)
        batch_idx = torch.arange(b, device=objectness.device)[:, None]
        scores = torch.sigmoid(objectness[batch_idx, top_idx])
        sel_deltas = reg[batch_idx, top_idx].reshape(-1, 4)
        boxes = self.box_coder.decode(sel_deltas, anchors[top_idx.reshape(-1)]).view(b, -1, 4)
        k_post = self.post_nms_top_n[self._mode()]
        out = []
        for bx, sc, (h, w) in zip(boxes, scores, image_sizes):
            bx = torch.stack((bx[:, 0::2].clamp(0, w), bx[:, 1::2].clamp(0, h)), dim=2).reshape(-1, 4)
            ws, hs = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
            keep = torch.where((ws >= self.min_size) & (hs >= self.min_size))[0]
            bx, s, lv = bx[keep], sc[keep], levels[keep]
            keep = torch.where(s >= self.score_thresh)[0]
            bx, s, lv = bx[keep], s[keep], lv[keep]
            keep = batched_nms(bx, s, lv, self.nms_thresh)[:k_post]
            out.append(bx[keep])
        return out

    # ------------------------------------------------------------------ training
    def losses(self, objectness: Tensor, reg: Tensor, anchors: Tensor,
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Objectness BCE over sampled anchors; smooth-L1 (beta 1/9) over positives / number sampled."""
        labels, matched_boxes = [], []
        for t in targets:
            gt = t["boxes"].to(anchors.dtype)
            if gt.numel() == 0:
                lab = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
                mb = torch.zeros_like(anchors)
            else:
                matches = self.matcher(box_iou(gt, anchors))
                mb = gt[matches.clamp(min=0)]
                lab = (matches >= 0).to(torch.float32)
                lab[matches == BELOW_LOW] = 0.0
                lab[matches == BETWEEN] = -1.0
            ignore = t.get("ignore")
            if ignore is not None:
                frac = box_ignore_fraction(anchors, ignore)
                lab[(lab == 0) & (frac > 0.5)] = -1.0
            labels.append(lab)
            matched_boxes.append(mb)
        pos_all, neg_all = [], []
        n = anchors.shape[0]
        for i, lab in enumerate(labels):
            pos, neg = sample_balanced(lab, self.batch_size_per_image, self.positive_fraction)
            pos_all.append(pos.sort().values + i * n)
            neg_all.append(neg.sort().values + i * n)
        pos = torch.cat(pos_all)
        sampled = torch.cat([pos, torch.cat(neg_all)])
        labels_cat = torch.cat(labels)
        reg_flat = reg.reshape(-1, 4)
        anchors_rep = anchors.repeat(len(targets), 1)
        targets_pos = self.box_coder.encode(torch.cat(matched_boxes)[pos], anchors_rep[pos])
        box_loss = F.smooth_l1_loss(reg_flat[pos], targets_pos, beta=1 / 9, reduction="sum") / max(sampled.numel(), 1)
        obj_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_cat[sampled])
        return {"rpn_class": obj_loss, "rpn_bbox": box_loss}

"""Region proposal network: a shared conv head over P2..P6, proposal selection and its own losses.

Proposals are ``(x1, y1, x2, y2)`` in the resized (unpadded) image of each batch element.
Selection follows torchvision exactly, except that only the top-k anchors of each level are
decoded (torchvision decodes all ~217k anchors of an 800x1088 batch first; the values are the same).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from .anchors import AnchorGenerator
from .box_coder import BoxCoder, clip_boxes
from .losses import box_regression_loss, weighted_losses
from .matching import BELOW_LOW, BETWEEN, Matcher, sample_balanced
from .regions import box_ignore_fraction
from .threaded_ops import map_images

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
    """Proposals from anchors, and the RPN's own weighted losses.

    Args:
        head, anchor_generator: the conv head and the anchors (one size per level, several ratios).
        fg_iou, bg_iou: an anchor is positive at IoU >= ``fg_iou`` with a GT box (and each GT's best
            anchors are positive whatever their IoU), negative below ``bg_iou``, ignored between.
        batch_size_per_image, positive_fraction: anchors sampled per image for the losses.
        pre_nms_top_n, post_nms_top_n: ``{"training": k, "testing": k}``: top-k anchors per level
            before NMS, proposals kept per image after it.
        nms_thresh: IoU of the per-level NMS. weights: the box coder's ``(wx, wy, ww, wh)``.
        score_thresh, min_size: proposals below this objectness (sigmoid) or this side (px) are dropped.
        loss_weights: ``Config.loss_weights``; the RPN reads ``rpn_class`` and ``rpn_bbox``.
    """

    def __init__(self, head: RPNHead, anchor_generator: AnchorGenerator, *, fg_iou: float, bg_iou: float,
                 batch_size_per_image: int, positive_fraction: float, pre_nms_top_n: dict[str, int],
                 post_nms_top_n: dict[str, int], nms_thresh: float, weights: tuple[float, float, float, float],
                 score_thresh: float = 0.0, min_size: float = 1e-3, loss_weights: Mapping[str, float] | None = None) -> None:
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
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(self, feats: list[Tensor], padded_size: tuple[int, int], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image ``[P_i, 4]`` and, in training, the weighted ``loss_rpn_class`` and
        ``loss_rpn_bbox`` (an empty dict at inference).

        ``feats``: P2..P6 ``[B, C, h, w]``; ``padded_size`` ``(H, W)`` of the batch tensor (anchors
        live in its pixels); ``image_sizes`` ``(H, W)`` of each image inside it (proposals are clipped
        to it); ``targets`` per image ``boxes [G, 4]`` and optionally ``ignore [H, W]``.
        """
        logits, deltas = self.head(feats)
        anchors_per_level = self.anchor_generator(padded_size, [tuple(f.shape[-2:]) for f in feats],
                                                  feats[0].device)
        objectness, reg, counts = _flatten(logits, deltas)
        anchors = torch.cat(anchors_per_level, 0)
        proposals = self.select_proposals(objectness.detach(), reg.detach(), anchors, counts, image_sizes)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN in training mode needs targets")
            losses = self.losses(objectness, reg, anchors, targets)
        return proposals, losses

    # ------------------------------------------------------------------ inference
    def select_proposals(self, objectness: Tensor, reg: Tensor, anchors: Tensor, counts: list[int],
                         image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Proposals ``[P_i, 4]`` per image, by objectness: the top ``pre_nms_top_n`` anchors of each
        level are decoded, clipped to the image, filtered by ``min_size`` and ``score_thresh``, then
        NMS per level keeps the best ``post_nms_top_n`` over all levels.

        ``objectness [B, A_total]`` logits and ``reg [B, A_total, 4]`` deltas in anchor order;
        ``anchors [A_total, 4]``; ``counts`` anchors per level.
        """
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

        def one_image(args: tuple[Tensor, Tensor, tuple[int, int]]) -> Tensor:
            bx, sc, size = args
            bx = clip_boxes(bx, size)
            ws, hs = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
            keep = torch.where((ws >= self.min_size) & (hs >= self.min_size))[0]
            bx, s, lv = bx[keep], sc[keep], levels[keep]
            keep = torch.where(s >= self.score_thresh)[0]
            bx, s, lv = bx[keep], s[keep], lv[keep]
            keep = batched_nms(bx, s, lv, self.nms_thresh)[:k_post]
            return bx[keep]

        # the images side by side on CPU threads: torchvision's NMS kernel runs on one core
        return map_images(one_image, list(zip(boxes, scores, image_sizes)), boxes.device)

    # ------------------------------------------------------------------ training
    def label_anchors(self, anchors: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Labels ``[A]`` (1 positive, 0 negative, -1 ignored) and matched GT boxes ``[A, 4]`` of
        ``anchors [A, 4]`` for one image's ``target`` (``boxes``, optional ``ignore`` mask: negatives
        covered more than half by it are ignored). No GT: every anchor is negative."""
        gt = target["boxes"].to(anchors.dtype)
        if gt.numel() == 0:
            labels = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
            matched = torch.zeros_like(anchors)
        else:
            matches = self.matcher(box_iou(gt, anchors))
            matched = gt[matches.clamp(min=0)]
            labels = (matches >= 0).to(torch.float32)
            labels[matches == BELOW_LOW] = 0.0
            labels[matches == BETWEEN] = -1.0
        ignore = target.get("ignore")
        if ignore is not None:
            frac = box_ignore_fraction(anchors, ignore)
            labels[(labels == 0) & (frac > 0.5)] = -1.0
        return labels, matched

    def losses(self, objectness: Tensor, reg: Tensor, anchors: Tensor,
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted ``loss_rpn_class`` (objectness BCE over the sampled anchors) and ``loss_rpn_bbox``
        (:func:`~.losses.box_regression_loss` over the sampled positives, divided by the number
        sampled). ``objectness [B, A]``, ``reg [B, A, 4]``, ``anchors [A, 4]``; sampling uses torch's
        global RNG (:func:`~.matching.sample_balanced`)."""
        labels, matched_boxes = zip(*(self.label_anchors(anchors, t) for t in targets))
        pos_all, neg_all = [], []
        n = anchors.shape[0]
        for i, lab in enumerate(labels):
            pos, neg = sample_balanced(lab, self.batch_size_per_image, self.positive_fraction)
            pos_all.append(pos.sort().values + i * n)
            neg_all.append(neg.sort().values + i * n)
        pos = torch.cat(pos_all)
        sampled = torch.cat([pos, torch.cat(neg_all)])
        labels_cat = torch.cat(labels)
        anchors_rep = anchors.repeat(len(targets), 1)
        targets_pos = self.box_coder.encode(torch.cat(matched_boxes)[pos], anchors_rep[pos])
        box_loss = box_regression_loss(reg.reshape(-1, 4)[pos], targets_pos, sampled.numel())
        obj_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels_cat[sampled])
        return weighted_losses({"rpn_class": obj_loss, "rpn_bbox": box_loss}, self.loss_weights)

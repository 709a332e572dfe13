"""RoI heads: box head (features + predictor) and mask head (features + predictor).

Each head is split as in Detectron2: a feature part (``box_head``, ``mask_head``) and an output
part (``box_predictor``, ``mask_predictor``); :class:`RoIHeads` owns sampling, losses and inference.
Boxes are ``(x1, y1, x2, y2)`` in the resized image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, roi_align

from .box_coder import BoxCoder
from .layers import conv_norm_relu
from .matching import BELOW_LOW, Matcher, sample_balanced
from .poolers import MultiLevelRoIAlign
from .regions import box_ignore_fraction

__all__ = ["TwoMLPHead", "ConvFCHead", "BoxPredictor", "MaskHead", "MaskPredictor", "RoIHeads"]


class TwoMLPHead(nn.Module):
    """v1 box head: flatten ``[R, C, 7, 7]`` -> fc6 -> ReLU -> fc7 -> ReLU -> ``[R, dim]``."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, dim)
        self.fc7 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Sequential):
    """v2 box head ("4conv1fc"): four 3x3 conv+BN+ReLU, flatten, one FC + ReLU.

    Indices follow torchvision (``0..3`` convs, ``4`` flatten, ``5`` linear).
    """

    def __init__(self, channels: int, pool: int, dim: int, convs: int = 4) -> None:
        layers: list[nn.Module] = [conv_norm_relu(channels, channels, 3, norm=True) for _ in range(convs)]
        layers += [nn.Flatten(), nn.Linear(channels * pool * pool, dim), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BoxPredictor(nn.Module):
    """``cls_score`` (K classes incl. background) and class-specific ``bbox_pred`` (K*4)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """``convs`` 3x3 conv(+BN)+ReLU layers over ``[R, C, 14, 14]`` (names ``{i}.0``, BN at ``{i}.1``)."""

    def __init__(self, cin: int, channels: int, convs: int, norm: bool) -> None:
        layers = []
        for _ in range(convs):
            layers.append(conv_norm_relu(cin, channels, 3, norm=norm))
            cin = channels
        super().__init__(*layers)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class MaskPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU, then 1x1 conv to per-class logits ``[R, K, 28, 28]``."""

    def __init__(self, cin: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(cin, channels, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes, 1)
        for m in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.upsample(x)))

    def upsample(self, x: Tensor) -> Tensor:
        """The 2x2 stride-2 transposed conv. Its output cells do not overlap, so at inference it is one
        matmul ``[R*h*w, C] @ [C, C'*4]`` and a pixel shuffle (mkldnn's transposed conv is slow on CPU)."""
        if self.training or torch.is_grad_enabled():
            return self.conv5_mask(x)
        n, c, h, w = x.shape
        wt = self.conv5_mask.weight  # [C, C', 2, 2]
        y = x.permute(0, 2, 3, 1).reshape(-1, c) @ wt.reshape(c, -1)
        y = y.view(n, h, w, wt.shape[1], 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, wt.shape[1], 2 * h, 2 * w)
        return y + self.conv5_mask.bias[:, None, None]

    def forward_selected(self, x: Tensor, labels: Tensor) -> Tensor:
        """Logits ``[R, 2S, 2S]`` of one class per RoI (``labels [R]``): the 1x1 conv for that class only."""
        y = F.relu(self.upsample(x))
        wl = self.mask_fcn_logits.weight[labels, :, 0, 0]  # [R, C']
        return torch.einsum("rchw,rc->rhw", y, wl) + self.mask_fcn_logits.bias[labels][:, None, None]


class RoIHeads(nn.Module):
    def __init__(self, box_head: nn.Module, box_predictor: BoxPredictor, mask_head: MaskHead,
                 mask_predictor: MaskPredictor, *, pool_size: int, mask_pool_size: int, sampling_ratio: int,
                 fg_iou: float, batch_size_per_image: int, positive_fraction: float,
                 bbox_weights: tuple[float, float, float, float], score_thresh: float, nms_thresh: float,
                 detections_per_img: int, class_weights: list[float] | None = None, mini_masks: bool = False) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.box_pool = MultiLevelRoIAlign(pool_size, sampling_ratio)
        self.mask_pool = MultiLevelRoIAlign(mask_pool_size, sampling_ratio)
        self.box_coder = BoxCoder(bbox_weights)
        self.matcher = Matcher(fg_iou, fg_iou, allow_low_quality=False)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mini_masks = mini_masks  # targets' "masks" are mini-masks cropped to their boxes (use_mini_mask)
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32),
                             persistent=False)

    # ------------------------------------------------------------------ training
    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: sampled RoIs ``[S, 4]``, their matched GT index ``[S]``, labels ``[S]`` (0 =
        background) and regression targets ``[S, 4]``. GT boxes are added to the proposals."""
        rois, matched, labels, reg_targets = [], [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            props = torch.cat([props, gt])
            if gt.numel() == 0:
                m = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                lab = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                gt = torch.zeros((1, 4), dtype=props.dtype, device=props.device)
            else:
                mi = self.matcher(box_iou(gt, props))
                m = mi.clamp(min=0)
                lab = t["labels"][m].to(torch.int64)
                lab[mi == BELOW_LOW] = 0
            ignore = t.get("ignore")
            if ignore is not None:
                frac = box_ignore_fraction(props, ignore)
                lab[(lab == 0) & (frac > 0.5)] = -1
            pos, neg = sample_balanced(lab, self.batch_size_per_image, self.positive_fraction)
            keep = torch.cat([pos, neg]).sort().values
            rois.append(props[keep])
            matched.append(m[keep])
            labels.append(lab[keep])
            reg_targets.append(self.box_coder.encode(gt[m[keep]], props[keep]))
        return rois, matched, labels, reg_targets

    def box_losses(self, class_logits: Tensor, box_deltas: Tensor, labels: list[Tensor],
                   reg_targets: list[Tensor]) -> dict[str, Tensor]:
        labels_cat = torch.cat(labels)
        targets_cat = torch.cat(reg_targets)
        class_logits = class_logits.float()
        cls_loss = F.cross_entropy(class_logits, labels_cat, weight=self.class_weights)
        pos = torch.where(labels_cat > 0)[0]
        deltas = box_deltas.float().reshape(box_deltas.shape[0], -1, 4)
        box_loss = F.smooth_l1_loss(deltas[pos, labels_cat[pos]], targets_cat[pos], beta=1 / 9,
                                    reduction="sum") / max(labels_cat.numel(), 1)
        return {"mrcnn_class": cls_loss, "mrcnn_bbox": box_loss}

    def mask_targets(self, rois: Tensor, matched: Tensor, target: dict[str, Tensor], size: int) -> Tensor:
        """Targets ``[P, size, size]`` in [0, 1]: RoIAlign of each positive's GT mask onto its RoI.

        Full-size masks are cropped to the union of their RoIs (plus a margin) before the float cast,
        so memory grows with the object sizes, not ``G x H x W``. Mini-masks (``target["mini_masks"]``
        ``[G, mh, mw]`` cropped to the GT boxes, see :mod:`maskrcnn.data.minimask`) are sampled in
        box-relative coordinates at the points torchvision's full-mask targets use.
        """
        if rois.shape[0] == 0:
            return rois.new_zeros((0, size, size))
        if self.mini_masks or "mini_masks" in target:
            from ..data.minimask import mini_mask_rois, pad_mini_masks

            mini = target["mini_masks"] if "mini_masks" in target else target["masks"]
            local = mini_mask_rois(rois, target["boxes"][matched], tuple(mini.shape[-2:]), half_pixel_shift=True, border=1)
            r = torch.cat([matched[:, None].to(rois.dtype), local.to(rois.dtype)], 1)
            return roi_align(pad_mini_masks(mini, 1)[:, None].to(rois.dtype), r, (size, size), 1.0, aligned=True)[:, 0]
        masks = target["masks"]
        h, w = masks.shape[-2:]
        uniq, inv = torch.unique(matched, return_inverse=True)
        lo = torch.full((uniq.numel(), 2), float("inf"), dtype=rois.dtype, device=rois.device)
        hi = torch.full((uniq.numel(), 2), float("-inf"), dtype=rois.dtype, device=rois.device)
        lo = lo.scatter_reduce(0, inv[:, None].expand(-1, 2), rois[:, :2], "amin")
        hi = hi.scatter_reduce(0, inv[:, None].expand(-1, 2), torch.maximum(rois[:, 2:], rois[:, :2] + 1), "amax")
        x0 = (lo[:, 0].floor() - 2).clamp(0, w).long().tolist()
        y0 = (lo[:, 1].floor() - 2).clamp(0, h).long().tolist()
        x1 = (hi[:, 0].ceil() + 3).clamp(0, w).long().tolist()
        y1 = (hi[:, 1].ceil() + 3).clamp(0, h).long().tolist()
        ch = max(b - a for a, b in zip(y0, y1))
        cw = max(b - a for a, b in zip(x0, x1))
        crops = rois.new_zeros((uniq.numel(), 1, ch, cw))
        for j, g in enumerate(uniq.tolist()):
            crops[j, 0, : y1[j] - y0[j], : x1[j] - x0[j]] = masks[g, y0[j]:y1[j], x0[j]:x1[j]]
        off = torch.tensor([x0, y0], dtype=rois.dtype, device=rois.device).T[inv]
        local = torch.cat([rois[:, :2] - off, rois[:, 2:] - off], 1)
        r = torch.cat([inv[:, None].to(rois.dtype), local], 1)
        return roi_align(crops, r, (size, size), 1.0, aligned=False)[:, 0]

    def mask_loss(self, mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
        if targets.shape[0] == 0:
            return mask_logits.sum() * 0
        logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels].float()
        if self.class_weights is None:
            return F.binary_cross_entropy_with_logits(logits, targets)
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2))
        w = self.class_weights[labels]
        return (per * w).sum() / w.sum().clamp(min=1e-12)

    # ------------------------------------------------------------------ forward
    def forward(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            assert targets is not None
            rois, matched, labels, reg_targets = self.sample(proposals, targets)
            box_feats = self.box_head(self.box_pool(features, rois))
            class_logits, box_deltas = self.box_predictor(box_feats)
            losses = self.box_losses(class_logits, box_deltas, labels, reg_targets)
            pos_rois, pos_labels, mtargets = [], [], []
            size = 2 * self.mask_pool.output_size[0]
            for r, m, lab, t in zip(rois, matched, labels, targets):
                pos = torch.where(lab > 0)[0]
                pos_rois.append(r[pos])
                pos_labels.append(lab[pos])
                mtargets.append(self.mask_targets(r[pos], m[pos], t, size))
            mask_logits = self.mask_predictor(self.mask_head(self.mask_pool(features, pos_rois)))
            losses["mrcnn_mask"] = self.mask_loss(mask_logits, torch.cat(pos_labels), torch.cat(mtargets))
            return [], losses
        return self.detect(features, proposals, image_sizes), {}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
               score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Per image ``boxes [N, 4]`` (resized-image pixels), ``labels [N]``, ``scores [N]``,
        ``mask_probs [N, M, M]`` (the predicted class's sigmoid)."""
        box_feats = self.box_head(self.box_pool(features, proposals))
        class_logits, box_deltas = self.box_predictor(box_feats)
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        probs = F.softmax(class_logits, -1)
        results = []
        start = 0
        for props, (h, w) in zip(proposals, image_sizes):
            n = props.shape[0]
            sc = probs[start:start + n, 1:]
            dl = box_deltas[start:start + n]
            start += n
            r_idx, c_idx = torch.where(sc > self.score_thresh)
            c_idx = c_idx + 1
            scores = sc[r_idx, c_idx - 1]
            d = dl.view(n, -1, 4)[r_idx, c_idx]
            boxes = self.box_coder.decode(d, props[r_idx])[:, 0]
            boxes = torch.stack((boxes[:, 0::2].clamp(0, w), boxes[:, 1::2].clamp(0, h)), dim=2).reshape(-1, 4)
            keep = torch.where(((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2))[0]
            boxes, scores, labels = boxes[keep], scores[keep], c_idx[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            if score_threshold is not None:
                keep = keep[scores[keep] >= score_threshold]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        labels = torch.cat([r["labels"] for r in results])
        mask_feats = self.mask_head(self.mask_pool(features, [r["boxes"] for r in results]))
        sel = self.mask_predictor.forward_selected(mask_feats, labels).float().sigmoid()
        for r, mp in zip(results, sel.split([len(r["labels"]) for r in results])):
            r["mask_probs"] = mp
        return results

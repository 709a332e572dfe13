"""RoI heads: sampling and orchestration of the box head and the mask head.

:class:`RoIHeads` matches proposals to the ground truth and samples them (training), pools features
with multi-level RoIAlign, and calls the heads, which own their losses and inference
(:mod:`.box_head`, :mod:`.mask_head`). The four head modules keep torchvision's attribute names
(``box_head``, ``box_predictor``, ``mask_head``, ``mask_predictor``) so state dicts load unchanged.
Boxes are ``(x1, y1, x2, y2)`` pixels of the resized (unpadded) image.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from .box_head import BoxPredictor
from .mask_head import MaskHead, MaskPredictor
from .matching import BELOW_LOW, Matcher, sample_balanced
from .poolers import MultiLevelRoIAlign
from .regions import box_ignore_fraction

__all__ = ["RoIHeads", "SampledRoIs"]


class SampledRoIs(NamedTuple):
    """Per image, the RoIs sampled for training (all lists have one entry per image).

    ``rois [S, 4]``; ``matched [S]`` index of the matched GT (0 for background RoIs); ``labels [S]``
    class (0 = background); ``gt_boxes [S, 4]`` the matched GT box (meaningful for positives only).
    """

    rois: list[Tensor]
    matched: list[Tensor]
    labels: list[Tensor]
    gt_boxes: list[Tensor]


class RoIHeads(nn.Module):
    """Box and mask heads over FPN features.

    Args:
        box_head, box_predictor, mask_head, mask_predictor: the heads (see :mod:`.box_head`, :mod:`.mask_head`).
        pool_size, mask_pool_size, sampling_ratio: RoIAlign output sides (7, 14) and sampling ratio.
        fg_iou: a proposal is positive at IoU >= ``fg_iou`` with a GT box, background below.
        batch_size_per_image, positive_fraction: RoIs sampled per image and the positive share.
        mask_frame_shift: at inference the mask head runs on each box moved by ``-mask_frame_shift``
            pixels (both axes), so that the predicted map covers the box itself
            (:data:`.mask_head.TARGET_FRAME_SHIFT` with ``Config.mask_paste: subpixel``; 0 reproduces
            torchvision, whose map covers the box moved by +0.5 px).
    """

    def __init__(self, box_head: nn.Module, box_predictor: BoxPredictor, mask_head: MaskHead,
                 mask_predictor: MaskPredictor, *, pool_size: int, mask_pool_size: int, sampling_ratio: int,
                 fg_iou: float, batch_size_per_image: int, positive_fraction: float,
                 mask_frame_shift: float = 0.0) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.box_pool = MultiLevelRoIAlign(pool_size, sampling_ratio)
        self.mask_pool = MultiLevelRoIAlign(mask_pool_size, sampling_ratio)
        self.matcher = Matcher(fg_iou, fg_iou, allow_low_quality=False)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.mask_frame_shift = float(mask_frame_shift)

    # ------------------------------------------------------------------ training
    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> SampledRoIs:
        """Match ``proposals`` (``[P_i, 4]`` per image) plus the GT boxes themselves to the GT and
        sample up to ``batch_size_per_image`` of them per image (positives up to
        ``positive_fraction``), in index order. Background proposals covered more than half by the
        target's ``ignore`` mask (crowd regions) are never sampled. Uses torch's global RNG."""
        out = SampledRoIs([], [], [], [])
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
            out.rois.append(props[keep])
            out.matched.append(m[keep])
            out.labels.append(lab[keep])
            out.gt_boxes.append(gt[m[keep]])
        return out

    def forward(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training (with ``targets``): ``([], {loss_mrcnn_class, loss_mrcnn_bbox, loss_mrcnn_mask})``,
        already weighted. Inference: ``(detections, {})``, see :meth:`detect`.

        ``features``: P2..P5 (P6 ignored) ``[B, C, h, w]``; ``proposals`` ``[P_i, 4]`` per image;
        ``image_sizes`` ``(H, W)`` of each image inside the padded batch.
        """
        if not self.training:
            return self.detect(features, proposals, image_sizes), {}
        if targets is None:
            raise ValueError("RoIHeads in training mode needs targets")
        s = self.sample(proposals, targets)
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pool(features, s.rois)))
        losses = self.box_predictor.losses(class_logits, box_deltas, s.rois, s.labels, s.gt_boxes)
        pos = [torch.where(lab > 0)[0] for lab in s.labels]
        pos_rois = [r[p] for r, p in zip(s.rois, pos)]
        mask_feats = self.mask_head(self.mask_pool(features, pos_rois))
        losses.update(self.mask_predictor.losses(mask_feats, pos_rois, [lab[p] for lab, p in zip(s.labels, pos)],
                                                 [m[p] for m, p in zip(s.matched, pos)], targets))
        return [], losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
               score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Per image ``boxes [N, 4]`` (resized-image pixels), ``labels [N]``, ``scores [N]``,
        ``mask_probs [N, M, M]`` (the predicted class's sigmoid inside its box). ``score_threshold``
        drops detections before the mask head runs (see :meth:`.BoxPredictor.inference`)."""
        results = self.detect_boxes(features, proposals, image_sizes, score_threshold)
        probs = self.mask_probs(features, [r["boxes"] for r in results], torch.cat([r["labels"] for r in results]))
        for r, mp in zip(results, probs.split([len(r["labels"]) for r in results])):
            r["mask_probs"] = mp
        return results

    def detect_boxes(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                     score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """The box head's detections per image: ``boxes``, ``scores``, ``labels`` (no masks)."""
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pool(features, proposals)))
        return self.box_predictor.inference(class_logits, box_deltas, proposals, image_sizes, score_threshold)

    def mask_probs(self, features: list[Tensor], boxes: list[Tensor], labels: Tensor) -> Tensor:
        """Mask probabilities ``[R, M, M]`` of the ``labels [R]`` class inside ``boxes`` (per image, in order).

        The map covers each box moved by ``+0.5 - mask_frame_shift`` pixels: the box itself with
        ``mask_paste: subpixel``, torchvision's half-pixel offset frame with ``mask_frame_shift = 0``."""
        boxes = [self.mask_boxes(b) for b in boxes]
        return self.mask_predictor.inference(self.mask_head(self.mask_pool(features, boxes)), labels)

    def mask_boxes(self, boxes: Tensor) -> Tensor:
        """The RoIs ``[..., 4]`` (xyxy in the last 4 columns) the mask head runs on for detections at
        ``boxes``: moved by ``-mask_frame_shift`` (unchanged when it is 0)."""
        return boxes - self.mask_frame_shift if self.mask_frame_shift else boxes

"""Mask head: RoI features -> per-class mask logits, their training targets and loss, and mask probabilities.

The feature part is :class:`MaskHead` (3x3 convs over pooled ``[R, C, 14, 14]`` RoIs);
:class:`MaskPredictor` holds the output layers (2x upsampling, 1x1 conv to ``[R, K, 28, 28]``
logits) and owns the loss (``loss_mrcnn_mask``: binary cross-entropy, dice or both, ``Config.mask_loss``;
multiplied by ``Config.loss_weights["mrcnn_mask"]``)
and inference (the predicted class's sigmoid). Targets come from :func:`mask_targets`.

RoIs are ``(x1, y1, x2, y2)`` pixels of the resized image. A target mask is the GT mask resampled
onto its RoI with RoIAlign (as torchvision's ``project_masks_on_boxes``), values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import MaskLoss
from .layers import conv_norm_relu
from .losses import weighted_losses

__all__ = ["MaskHead", "MaskPredictor", "TARGET_FRAME_SHIFT", "mask_targets", "mask_loss", "dice_loss", "MASK_LOSSES", "DICE_SMOOTH"]


class MaskHead(nn.Sequential):
    """``convs`` 3x3 conv(+BN)+ReLU layers: ``[R, cin, S, S]`` -> ``[R, channels, S, S]``.

    Names ``{i}.0`` (conv), BN at ``{i}.1`` (torchvision's v1/v2 key layout).
    """

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


def mask_targets(rois: Tensor, matched: Tensor, masks: Tensor, gt_boxes: Tensor, size: int,
                 mini_masks: bool = False) -> Tensor:
    """Targets ``[P, size, size]`` in [0, 1]: RoIAlign of each RoI's matched GT mask onto the RoI.

    ``rois [P, 4]``, ``matched [P]`` (index into the GT), ``gt_boxes [G, 4]``. ``masks`` is either
    ``[G, H, W]`` full-image masks (``mini_masks=False``; sampled exactly as torchvision's
    ``project_masks_on_boxes``, ``aligned=False``) or ``[G, mh, mw]`` mini-masks cropped to
    ``gt_boxes`` (``Config.use_mini_mask``, see :mod:`maskrcnn.data.minimask`), sampled in
    box-relative coordinates at the same points.
    """
    if rois.shape[0] == 0:
        return rois.new_zeros((0, size, size))
    if mini_masks:
        return _mini_mask_targets(rois, matched, masks, gt_boxes, size)
    return _full_mask_targets(rois, matched, masks, size)


def _mini_mask_targets(rois: Tensor, matched: Tensor, minis: Tensor, gt_boxes: Tensor, size: int) -> Tensor:
    from ..data.minimask import mini_mask_rois, pad_mini_masks  # lazy: keeps maskrcnn.data out of model imports

    local = mini_mask_rois(rois, gt_boxes[matched], tuple(minis.shape[-2:]), half_pixel_shift=True, border=1)
    r = torch.cat([matched[:, None].to(rois.dtype), local.to(rois.dtype)], 1)
    return roi_align(pad_mini_masks(minis, 1)[:, None].to(rois.dtype), r, (size, size), 1.0, aligned=True)[:, 0]


def _full_mask_targets(rois: Tensor, matched: Tensor, masks: Tensor, size: int) -> Tensor:
    """Each GT mask is cropped to the union of its RoIs (plus a margin) before the float cast, so
    memory grows with the object sizes, not ``G x H x W``; the values equal full-image RoIAlign."""
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


#: Offset, in input pixels, of the frame that :func:`mask_targets` fills for a RoI: RoIAlign with
#: ``aligned=False`` (torchvision's ``project_masks_on_boxes``, kept for its weights) samples the GT
#: mask of RoI ``(x1, y1, x2, y2)`` over ``(x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5)`` in continuous
#: pixel coordinates (pixel ``k`` spans ``[k, k + 1)``), so the head learns to predict that frame.
#: ``Config.mask_paste: subpixel`` asks the head for the box moved back by it (``RoIHeads.mask_frame_shift``).
TARGET_FRAME_SHIFT = 0.5

#: Mask loss kinds (``Config.mask_loss``).
MASK_LOSSES: tuple[str, ...] = get_args(MaskLoss)

#: Smoothing term of the dice loss, added to numerator and denominator (Laplace smoothing): a RoI
#: whose target and prediction are both empty scores 0 instead of 0/0, and the gradient stays finite.
DICE_SMOOTH = 1.0


def dice_loss(probs: Tensor, targets: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """Per-RoI dice loss ``[P]``: ``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``.

    ``probs [P, M, M]`` in [0, 1] (the predicted class's sigmoid), ``targets [P, M, M]`` in [0, 1]
    (soft targets are used as they are). A perfect prediction gives ~0, a disjoint one
    ``1 - smooth / (sum(p) + sum(t) + smooth)`` (~1 for masks of more than a few pixels).
    """
    inter = (probs * targets).flatten(1).sum(1)
    total = probs.flatten(1).sum(1) + targets.flatten(1).sum(1)
    return 1 - (2 * inter + smooth) / (total + smooth)


def _roi_mean(per_roi: Tensor, labels: Tensor, class_weights: Tensor | None) -> Tensor:
    """Mean of ``per_roi [P]``; with ``class_weights [K]`` weighted by ``class_weights[label]``."""
    if class_weights is None:
        return per_roi.mean()
    w = class_weights[labels]
    return (per_roi * w).sum() / w.sum().clamp(min=1e-12)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor, class_weights: Tensor | None = None,
              kind: str = "bce", dice_weight: float = 1.0) -> Tensor:
    """The mask loss of each RoI's labelled-class logits against its target (``Config.mask_loss``).

    ``mask_logits [P, K, M, M]``, ``labels [P]`` (1..K-1), ``targets [P, M, M]`` in [0, 1]; computed
    in fp32. ``kind``:

    * ``"bce"``: binary cross-entropy, the mean over all pixels of all RoIs (Matterport's and
      torchvision's loss); with ``class_weights [K]``, per-RoI means averaged with weight
      ``class_weights[label]``;
    * ``"dice"``: ``dice_weight *`` the mean over RoIs of :func:`dice_loss` of the sigmoid (the same
      class weighting);
    * ``"bce+dice"``: the sum of both (``bce + dice_weight * dice``).

    No positives: 0 (still connected to the graph).
    """
    if targets.shape[0] == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels].float()
    if kind not in MASK_LOSSES:
        raise ValueError(f"mask loss {kind!r}: use one of {', '.join(MASK_LOSSES)}")
    loss = None
    if kind != "dice":
        if class_weights is None:
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        else:
            per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2))
            loss = _roi_mean(per, labels, class_weights)
    if kind != "bce":
        dice = dice_weight * _roi_mean(dice_loss(logits.sigmoid(), targets.float()), labels, class_weights)
        loss = dice if loss is None else loss + dice
    return loss


class MaskPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU, then 1x1 conv to per-class logits ``[R, K, 2S, 2S]``;
    with the mask loss and inference.

    Args:
        cin, channels, num_classes: input channels, upsampled channels, K (background included).
        mini_masks: targets' ``"masks"`` are mini-masks cropped to their boxes (``Config.use_mini_mask``).
        class_weights: optional ``[K]`` per-class loss weights (``Config.class_loss_weights``).
        loss_weights: ``Config.loss_weights``; this head reads ``mrcnn_mask``.
        loss, dice_weight: ``Config.mask_loss`` (``bce``, ``dice`` or ``bce+dice``) and
            ``Config.mask_dice_weight`` (see :func:`mask_loss`).
    """

    def __init__(self, cin: int, channels: int, num_classes: int, *, mini_masks: bool = False,
                 class_weights: list[float] | None = None, loss_weights: Mapping[str, float] | None = None,
                 loss: str = "bce", dice_weight: float = 1.0) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(cin, channels, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes, 1)
        for m in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        if loss not in MASK_LOSSES:
            raise ValueError(f"mask loss {loss!r}: use one of {', '.join(MASK_LOSSES)}")
        self.mini_masks = mini_masks
        self.loss_kind, self.dice_weight = loss, float(dice_weight)
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x [R, cin, S, S]`` -> logits ``[R, K, 2S, 2S]``."""
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

    # ------------------------------------------------------------------ training
    def losses(self, x: Tensor, rois: list[Tensor], labels: list[Tensor], matched: list[Tensor],
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted ``loss_mrcnn_mask`` of the positive RoIs.

        ``x [P, cin, S, S]``: mask-head features of the positives of all images in order; per image
        their ``rois [P_i, 4]``, ``labels [P_i]`` (>= 1), GT index ``matched [P_i]`` and the target
        dict (``masks``, ``boxes``). See :func:`mask_targets` and :func:`mask_loss`.
        """
        logits = self(x)
        size = logits.shape[-1]
        gt = torch.cat([mask_targets(r, m, t["masks"], t["boxes"], size, self.mini_masks)
                        for r, m, t in zip(rois, matched, targets)])
        loss = mask_loss(logits, torch.cat(labels), gt, self.class_weights, self.loss_kind, self.dice_weight)
        return weighted_losses({"mrcnn_mask": loss}, self.loss_weights)

    # ------------------------------------------------------------------ inference
    def inference(self, x: Tensor, labels: Tensor) -> Tensor:
        """Mask probabilities ``[R, 2S, 2S]`` (sigmoid of the ``labels [R]`` class's logits, fp32)."""
        return self.forward_selected(x, labels).float().sigmoid()

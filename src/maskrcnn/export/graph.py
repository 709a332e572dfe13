"""The exportable inference graph: a whole batch of images of any count and sizes, flat outputs.

:class:`ExportGraph` wraps a :class:`~maskrcnn.modeling.MaskRCNN` (its modules and weights, no
copy) and runs detection with tensor operations only, so that a traced graph (ONNX) works for any
batch size and image size:

* input ``images [B, C, H, W]`` float32 in [0, 1], each image at the top-left of a zero-padded
  batch, and ``sizes [B, 2]`` int64, each image's real ``(H_i, W_i)``;
* the model's input transform inside (``minmax``: normalise with ``Config.pixel_mean/pixel_std``,
  bilinear resize to ``max(1, int(side * scale))``, zero-pad to ``size_divisibility``), computed
  for all images at once (each image's rows and columns are gathered and interpolated with the
  weights of ``F.interpolate(..., mode="bilinear", align_corners=False)``);
* per-image loops of the eager model (proposal selection, detection NMS, top-k per image) become
  operations over flat lists carrying a batch index: NMS groups are ``(image, level)`` and
  ``(image, class)``, and "the best k of each image" is a rank within the image;
* outputs, over all images, grouped by image and by descending score within an image:
  ``boxes [N, 4]`` float32 ``(x1, y1, x2, y2)`` in original pixels, ``scores [N]`` float32,
  ``labels [N]`` int64, ``mask_probs [N, M, M]`` float32 (the label's sigmoid inside the box;
  paste with :func:`maskrcnn.inference.paste.paste_masks`), ``batch_index [N]`` int64.

The result equals the eager model's ``model.detect`` on the same batch up to float rounding
(the modules are the eager ones; the reorganised steps do the same arithmetic). Only what
:func:`check_exportable` accepts is exported: the ``minmax`` resize mode with ``fixed``
normalisation and without ``invert_bright_images`` (the other modes have window-dependent
steps not written for batches yet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from ..config import Config, ConfigError
from ..modeling import MaskRCNN
from ..modeling.anchors import grid_anchors
from ..modeling.box_coder import clip_boxes
from ..data.resize import unscale_boxes

__all__ = ["ExportGraph", "check_exportable", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ["images", "sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "mask_probs", "batch_index"]


def check_exportable(config: Config) -> None:
    """Raise :class:`ConfigError` (one line, naming the field) when ``config`` cannot be exported."""
    if config.detect_resize_mode != "minmax":
        raise ConfigError(f"image_resize_mode/inference_resize_mode={config.detect_resize_mode}: export supports "
                          "minmax only; set inference_resize_mode: minmax (with image_min_dim/image_max_dim) to export")
    if config.image_normalization != "fixed":
        raise ConfigError(f"image_normalization={config.image_normalization}: export supports fixed only; "
                          "use a model trained with image_normalization: fixed")
    if config.invert_bright_images:
        raise ConfigError("invert_bright_images=true: export does not support it yet; "
                          "use a model trained with invert_bright_images: false")


def _rank_in_group(group: Tensor, groups: Tensor) -> Tensor:
    """Position of each element among the earlier elements of its group: ``group [N]`` int64 in
    ``[0, G)``, ``groups`` a 0-dim G. ``[N]`` int64 (0 for the first of each group)."""
    onehot = (group[:, None] == torch.arange(groups, device=group.device)[None, :]).to(torch.int64)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def _grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """NMS within each group (``torchvision.ops.batched_nms``'s coordinate trick: each group is
    shifted beyond the others), also when there are no boxes (the max is taken with a 0 appended,
    so the exported graph never reduces an empty tensor). Indices by descending score."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (groups.to(boxes.dtype) * (top + 1))[:, None]
    return nms(shifted, scores, iou)


def _best_per_image(keep: Tensor, image: Tensor, batch: Tensor, k: int) -> Tensor:
    """Of ``keep [N]`` (indices by descending score, as NMS returns them), the first ``k`` of each
    image (``image [*]`` the image of each index), grouped by image in ascending order."""
    img = image[keep]
    rank = _rank_in_group(img, batch)
    sel = torch.where(rank < k)[0]
    key = img[sel] * (keep.shape[0] + 1) + rank[sel]
    return keep[sel[torch.argsort(key)]]


class ExportGraph(nn.Module):
    """``forward(images [B, C, H, W], sizes [B, 2]) -> (boxes, scores, labels, mask_probs, batch_index)``
    (see the module doc). ``model`` must be in eval mode; its config must pass :func:`check_exportable`."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        check_exportable(model.config)
        self.model = model
        self.eval()  # a new module starts in training mode; the exporter restores the mode it found
        c = model.config
        self.min_dim, self.max_dim, self.divisibility = float(c.image_min_dim), float(c.image_max_dim), c.size_divisibility

    # ------------------------------------------------------------------ input transform
    def preprocess(self, images: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised, resized and padded ``[B, C, H', W']`` and the resized sizes ``[B, 2]`` int64."""
        t = self.model.transform
        x = (images - t.pixel_mean[None, :, None, None]) / t.pixel_std[None, :, None, None]
        hw = sizes.to(torch.float64)
        scale = torch.minimum(self.min_dim / hw.min(1).values, self.max_dim / hw.max(1).values)
        resized = torch.floor(hw * scale[:, None]).clamp(min=1).to(torch.int64)
        d = self.divisibility
        padded = (resized.max(0).values + (d - 1)) // d * d
        r0, r1, wr0, wr1 = _resize_axis(sizes[:, 0], resized[:, 0], padded[0])
        c0, c1, wc0, wc1 = _resize_axis(sizes[:, 1], resized[:, 1], padded[1])
        b, ch, w_in = x.shape[0], x.shape[1], x.shape[3]
        rows = (torch.gather(x, 2, r0[:, None, :, None].expand(b, ch, -1, w_in)) * wr0[:, None, :, None]
                + torch.gather(x, 2, r1[:, None, :, None].expand(b, ch, -1, w_in)) * wr1[:, None, :, None])
        h_out = rows.shape[2]
        out = (torch.gather(rows, 3, c0[:, None, None, :].expand(b, ch, h_out, -1)) * wc0[:, None, None, :]
               + torch.gather(rows, 3, c1[:, None, None, :].expand(b, ch, h_out, -1)) * wc1[:, None, None, :])
        return out, resized

    # ------------------------------------------------------------------ RPN
    def proposals(self, feats: list[Tensor], padded: Tensor, resized: Tensor) -> Tensor:
        """RoIs ``[R, 5]`` (batch index, x1, y1, x2, y2), as :meth:`RegionProposalNetwork.select_proposals`."""
        from torchvision.models.detection._utils import _topk_min

        rpn = self.model.rpn
        logits, deltas = rpn.head(feats)
        k_pre, k_post = rpn.pre_nms_top_n["testing"], rpn.post_nms_top_n["testing"]
        hp, wp = padded.shape[-2], padded.shape[-1]
        boxes_l, scores_l, levels_l = [], [], []
        for level, (lg, dl, base) in enumerate(zip(logits, deltas, rpn.anchor_generator.cell_anchors)):
            b, a, h, w = lg.shape
            ob = lg.permute(0, 2, 3, 1).reshape(b, -1).float()
            rg = dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4).float()
            anchors = grid_anchors(base.to(ob.device), h, w, hp // h, wp // w)
            k = _topk_min(ob, k_pre, 1)
            top_logits, top = ob.topk(k, dim=1)
            sel = torch.gather(rg, 1, top[:, :, None].expand(-1, -1, 4))
            boxes_l.append(rpn.box_coder.decode(sel.reshape(-1, 4), anchors[top.reshape(-1)]).reshape(b, -1, 4))
            scores_l.append(torch.sigmoid(top_logits))
            levels_l.append(torch.full_like(top, level))
        batch = torch.ones_like(resized[:, 0]).sum()
        boxes, scores, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(levels_l, 1)
        image = torch.arange(batch, device=boxes.device)[:, None].expand_as(levels).reshape(-1)
        boxes, scores, levels = clip_boxes(boxes.reshape(-1, 4), resized[image]), scores.reshape(-1), levels.reshape(-1)
        ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = torch.where((ws >= rpn.min_size) & (hs >= rpn.min_size) & (scores >= rpn.score_thresh))[0]
        boxes, scores, levels, image = boxes[ok], scores[ok], levels[ok], image[ok]
        keep = _grouped_nms(boxes, scores, image * len(logits) + levels, rpn.nms_thresh)
        keep = _best_per_image(keep, image, batch, k_post)
        return torch.cat([image[keep, None].to(boxes.dtype), boxes[keep]], 1)

    # ------------------------------------------------------------------ box and mask heads
    def detections(self, feats: list[Tensor], rois: Tensor, resized: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``boxes [N, 4]`` (resized pixels), ``scores``, ``labels``, ``mask_probs``, ``batch_index``,
        as :meth:`RoIHeads.detect` / :meth:`BoxPredictor.inference` per image."""
        heads = self.model.roi_heads
        pred = heads.box_predictor
        class_logits, box_deltas = pred(heads.box_head(heads.box_pool.pool(feats, rois)))
        probs = F.softmax(class_logits.float(), -1)
        num_classes = probs.shape[1]
        sc = probs[:, 1:]
        r_idx, c_idx = torch.where(sc > pred.score_thresh)
        scores = sc.reshape(-1)[r_idx * (num_classes - 1) + c_idx]
        labels = c_idx + 1
        d = box_deltas.float().reshape(-1, 4)[r_idx * num_classes + labels]
        image = rois[r_idx, 0].to(torch.int64)
        boxes = clip_boxes(pred.box_coder.decode(d, rois[r_idx, 1:])[:, 0], resized[image])
        ok = torch.where(((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2))[0]
        boxes, scores, labels, image = boxes[ok], scores[ok], labels[ok], image[ok]
        keep = _grouped_nms(boxes, scores, image * num_classes + labels, pred.nms_thresh)
        batch = torch.ones_like(resized[:, 0]).sum()
        keep = _best_per_image(keep, image, batch, pred.detections_per_img)
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        mask_rois = torch.cat([image[:, None].to(boxes.dtype), boxes], 1)
        mask_probs = heads.mask_predictor.inference(heads.mask_head(heads.mask_pool.pool(feats, mask_rois)), labels)
        return boxes, scores, labels, mask_probs, image

    def forward(self, images: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, resized = self.preprocess(images, sizes)
        feats = self.model.backbone(x)
        rois = self.proposals(feats, x, resized)
        boxes, scores, labels, mask_probs, image = self.detections(feats, rois, resized)
        boxes = unscale_boxes(boxes, sizes[image].to(torch.float32), resized[image].to(torch.float32))
        return boxes, scores, labels, mask_probs, image


def _resize_axis(size_in: Tensor, size_out: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear sampling of one axis, as ``F.interpolate(mode="bilinear", align_corners=False)``
    with an output size: for ``length`` output positions of each image (``size_in [B]`` ->
    ``size_out [B]`` int64), the source indices ``i0, i1 [B, L]`` and weights ``w0, w1 [B, L]``
    (zero past ``size_out``: the padding). Source position ``(j + 0.5) * in / out - 0.5`` (the
    ratio in float32), clamped at 0; ``i1 = min(i0 + 1, in - 1)``."""
    dst = torch.arange(length, device=size_in.device).to(torch.float32)
    ratio = size_in.to(torch.float32) / size_out.to(torch.float32)
    src = (ratio[:, None] * (dst[None, :] + 0.5) - 0.5).clamp(min=0)
    last = (size_in - 1)[:, None]
    i0 = torch.minimum(torch.floor(src).to(torch.int64), last)
    i1 = torch.minimum(i0 + 1, last)
    w1 = (src - i0.to(torch.float32)).clamp(0, 1)
    valid = (dst[None, :] < size_out[:, None].to(torch.float32)).to(torch.float32)
    return i0, i1, (1 - w1) * valid, w1 * valid

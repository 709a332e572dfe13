"""The exportable inference graph: a whole batch of images of any count and sizes, flat outputs.

:class:`ExportGraph` wraps a :class:`~maskrcnn.modeling.MaskRCNN` (its modules and weights, no
copy) and runs detection with tensor operations only, so that a traced graph (ONNX) works for any
batch size and image size:

* input ``images [B, C, H, W]`` float32 in [0, 1], each image at the top-left of a zero-padded
  batch, and ``sizes [B, 2]`` int64, each image's real ``(H_i, W_i)``;
* the model's input transform inside, in every inference resize mode and normalisation of
  :class:`~maskrcnn.modeling.transform.InputTransform`, computed for all images at once: each
  image's rows and columns are gathered and interpolated with the weights of
  ``F.interpolate(..., mode="bilinear", align_corners=False)``, at the place and size of
  :func:`~maskrcnn.data.resize.plan_resize` (``minmax`` normalises first, Matterport's
  ``none``/``square``/``pad64`` resize, pad and normalise with the statistics of the window of real
  pixels); then zero-padding to ``size_divisibility``;
* per-image loops of the eager model (proposal selection, detection NMS, top-k per image) become
  operations over flat lists carrying a batch index: NMS groups are ``(image, level)`` and
  ``(image, class)``, and "the best k of each image" is a rank within the image;
* outputs, over all images, grouped by image and by descending score within an image:
  ``boxes [N, 4]`` float32 ``(x1, y1, x2, y2)`` in original pixels, ``scores [N]`` float32,
  ``labels [N]`` int64, ``mask_probs [N, M, M]`` float32 (the label's sigmoid inside the box;
  paste with :func:`maskrcnn.inference.paste.paste_masks`), ``batch_index [N]`` int64.

The result equals the eager model's ``model.detect`` on the same batch up to float rounding
(the modules are the eager ones; the reorganised steps do the same arithmetic).

The three steps with weights are methods (:meth:`ExportGraph.features`, :meth:`~ExportGraph.box_outputs`,
:meth:`~ExportGraph.mask_probs`): the TFLite export runs them from its file and everything else
from this class (:class:`maskrcnn.export.tflite.SplitGraph`).
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
from ..modeling.transform import check_inference_mode
from ..data.resize import unscale_boxes

__all__ = ["ExportGraph", "check_exportable", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ["images", "sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "mask_probs", "batch_index"]


def check_exportable(config: Config) -> None:
    """Raise :class:`ConfigError` (one line, naming the field) when ``config`` cannot be exported.

    Every inference resize mode (``minmax``, ``none``, ``square``, ``pad64``) and every
    normalisation (``fixed``, ``per_image``, ``invert_bright_images``) exports; ``crop`` is
    training-only and refused as detection is (:func:`~maskrcnn.modeling.transform.check_inference_mode`);
    Matterport's network (``architecture: matterport``) is not exportable.
    """
    if config.architecture == "matterport":
        raise ConfigError("architecture=matterport (Matterport .h5 weights): not exportable here; detect and evaluate "
                          "with the .h5 (or its checkpoint) in PyTorch, or export a model trained with architecture v1/v2")
    check_inference_mode(config.detect_resize_mode)


def _floor_div(a: Tensor, b: int | Tensor) -> Tensor:
    """``a // b`` of non-negative int64 values, computed in float64 (exact below 2**53). Integer
    division exported as ONNX ``Div`` was miscomputed by OpenVINO's CPU plugin (2026.4) inside
    this graph; ``Floor`` of a float quotient runs alike everywhere."""
    return torch.floor(a.to(torch.float64) / torch.as_tensor(b).to(torch.float64)).to(torch.int64)


def _ceil_div(a: Tensor, b: int) -> Tensor:
    """``ceil(a / b)`` of non-negative int64 values (see :func:`_floor_div`)."""
    return torch.ceil(a.to(torch.float64) / b).to(torch.int64)


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
        self.mode = c.detect_resize_mode
        self.min_dim, self.max_dim, self.min_scale = float(c.image_min_dim), float(c.image_max_dim), float(c.image_min_scale)
        self.divisibility = c.size_divisibility

    # ------------------------------------------------------------------ input transform
    def geometry(self, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per image ``(scaled, frame, offset)``, each ``[B, 2]`` int64 ``(h, w)``: the size after
        scaling, the size of the image given to the network (Matterport's padding included) and the
        top/left padding, as :func:`maskrcnn.data.resize.plan_resize` (float64, Python's rounding)."""
        hw = sizes.to(torch.float64)
        short, long = hw.min(1).values, hw.max(1).values
        if self.mode == "minmax":
            scale = torch.minimum(self.min_dim / short, self.max_dim / long)
            scaled = torch.floor(hw * scale[:, None]).clamp(min=1).to(torch.int64)
            return scaled, scaled, torch.zeros_like(scaled)
        if self.mode == "none":
            return sizes, sizes, torch.zeros_like(sizes)
        scale = torch.clamp(self.min_dim / short, min=1.0) if self.min_dim else torch.ones_like(short)
        if self.min_scale:
            scale = torch.clamp(scale, min=self.min_scale)
        if self.mode == "square":
            scale = torch.where(torch.round(long * scale) > self.max_dim, self.max_dim / long, scale)
        scaled = torch.round(hw * scale[:, None]).clamp(min=1).to(torch.int64)  # half to even, as round()
        if self.mode == "square":
            frame = torch.full_like(scaled, int(self.max_dim))
        elif self.mode == "pad64":
            frame = _ceil_div(scaled, 64) * 64
        else:
            frame = scaled
        return scaled, frame, _floor_div(frame - scaled, 2)

    def preprocess(self, images: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The network input ``[B, C, H', W']`` (normalised, resized, padded as ``InputTransform``)
        and each image's ``scaled``, ``frame`` and ``offset`` (:meth:`geometry`)."""
        scaled, frame, offset = self.geometry(sizes)
        d = self.divisibility
        padded = _ceil_div(frame.max(0).values, d) * d
        rows = _resize_axis(sizes[:, 0], scaled[:, 0], offset[:, 0], padded[0])
        cols = _resize_axis(sizes[:, 1], scaled[:, 1], offset[:, 1], padded[1])
        if self.mode == "minmax":  # torchvision's order: normalise the original image, then resize
            return _resample(self.normalize(images, _region(sizes, images)), rows, cols), scaled, frame, offset
        x = _resample(images, rows, cols)  # Matterport's: resize and pad with zeros, then normalise the window
        window = (rows[4][:, None, :, None] * cols[4][:, None, None, :]) > 0
        top = torch.arange(x.shape[2], device=x.device)[None, :] < frame[:, 0:1]
        left = torch.arange(x.shape[3], device=x.device)[None, :] < frame[:, 1:2]
        in_frame = top[:, None, :, None] & left[:, None, None, :]
        t = self.model.transform
        pad = torch.zeros_like(t.pixel_mean) if t.normalization == "per_image" else -t.pixel_mean / t.pixel_std
        out = torch.where(window, self.normalize(x, window), pad[None, :, None, None].expand_as(x))
        return torch.where(in_frame, out, torch.zeros_like(out)), scaled, frame, offset

    def normalize(self, x: Tensor, region: Tensor) -> Tensor:
        """:func:`maskrcnn.modeling.transform.normalize_input` of each image with its statistics over
        ``region [B, 1, H, W]`` bool (the image's real pixels); values outside it are undefined."""
        from ..modeling.transform import MIN_IMAGE_STD

        t = self.model.transform
        m = region.to(x.dtype)
        count = m.sum((2, 3), keepdim=True)  # [B, 1, 1, 1]
        if t.invert_bright:
            mean_all = (x * m).sum((1, 2, 3), keepdim=True) / (count * x.shape[1])
            x = torch.where(mean_all > 0.5, 1.0 - x, x)
        if t.normalization == "per_image":
            mean = (x * m).sum((2, 3), keepdim=True) / count
            std = torch.sqrt((((x - mean) * m) ** 2).sum((2, 3), keepdim=True) / count).clamp(min=MIN_IMAGE_STD)
            return (x - mean) / std
        return (x - t.pixel_mean[None, :, None, None]) / t.pixel_std[None, :, None, None]

    # ------------------------------------------------------------------ dense parts
    # The three steps with weights. TFLite's split export (:mod:`maskrcnn.export.tflite`) runs them
    # from its file and everything else (the glue) from this class.
    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Backbone+FPN and RPN head of the network input ``x [B, C, H, W]``: per level the FPN
        features ``[B, F, h, w]``, objectness logits ``[B, A, h, w]`` and deltas ``[B, 4A, h, w]``."""
        feats = self.model.backbone(x)
        logits, deltas = self.model.rpn.head(feats)
        return feats, logits, deltas

    def box_outputs(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Box head and predictor of RoI features ``[R, F, S, S]``: class logits ``[R, K]``, deltas ``[R, 4K]``."""
        heads = self.model.roi_heads
        return heads.box_predictor(heads.box_head(pooled))

    def mask_probs(self, pooled: Tensor, labels: Tensor) -> Tensor:
        """Mask head of RoI features ``[D, F, S, S]``: the ``labels [D]`` class's probabilities ``[D, 2S, 2S]``."""
        heads = self.model.roi_heads
        return heads.mask_predictor.inference(heads.mask_head(pooled), labels)

    # ------------------------------------------------------------------ RPN
    def proposals(self, logits: list[Tensor], deltas: list[Tensor], padded: Tensor, frame: Tensor) -> Tensor:
        """RoIs ``[R, 5]`` (batch index, x1, y1, x2, y2) of the RPN head's per-level ``logits [B, A, h, w]``
        and ``deltas [B, 4A, h, w]``, as :meth:`RegionProposalNetwork.select_proposals`."""
        from torchvision.models.detection._utils import _topk_min

        rpn = self.model.rpn
        k_pre, k_post = rpn.pre_nms_top_n["testing"], rpn.post_nms_top_n["testing"]
        hp, wp = padded.shape[-2], padded.shape[-1]
        boxes_l, scores_l, levels_l = [], [], []
        for level, (lg, dl, base) in enumerate(zip(logits, deltas, rpn.anchor_generator.cell_anchors)):
            b, a, h, w = lg.shape
            ob = lg.permute(0, 2, 3, 1).reshape(b, -1).float()
            rg = dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4).float()
            stride_h, stride_w = _floor_div(torch.as_tensor(hp), h), _floor_div(torch.as_tensor(wp), w)
            anchors = grid_anchors(base.to(ob.device), h, w, stride_h, stride_w)
            k = _topk_min(ob, k_pre, 1)
            top_logits, top = ob.topk(k, dim=1)
            sel = torch.gather(rg, 1, top[:, :, None].expand(-1, -1, 4))
            boxes_l.append(rpn.box_coder.decode(sel.reshape(-1, 4), anchors[top.reshape(-1)]).reshape(b, -1, 4))
            scores_l.append(torch.sigmoid(top_logits))
            levels_l.append(torch.full_like(top, level))
        batch = torch.ones_like(frame[:, 0]).sum()
        boxes, scores, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(levels_l, 1)
        image = torch.arange(batch, device=boxes.device)[:, None].expand_as(levels).reshape(-1)
        boxes, scores, levels = clip_boxes(boxes.reshape(-1, 4), frame[image]), scores.reshape(-1), levels.reshape(-1)
        ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = torch.where((ws >= rpn.min_size) & (hs >= rpn.min_size) & (scores >= rpn.score_thresh))[0]
        boxes, scores, levels, image = boxes[ok], scores[ok], levels[ok], image[ok]
        keep = _grouped_nms(boxes, scores, image * len(logits) + levels, rpn.nms_thresh)
        keep = _best_per_image(keep, image, batch, k_post)
        return torch.cat([image[keep, None].to(boxes.dtype), boxes[keep]], 1)

    # ------------------------------------------------------------------ box and mask heads
    def detections(self, feats: list[Tensor], rois: Tensor, frame: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``boxes [N, 4]`` (pixels of the network's input), ``scores``, ``labels``, ``mask_probs``, ``batch_index``,
        as :meth:`RoIHeads.detect` / :meth:`BoxPredictor.inference` per image."""
        heads = self.model.roi_heads
        pred = heads.box_predictor
        class_logits, box_deltas = self.box_outputs(heads.box_pool.pool(feats, rois))
        probs = F.softmax(class_logits.float(), -1)
        num_classes = probs.shape[1]
        sc = probs[:, 1:]
        r_idx, c_idx = torch.where(sc > pred.score_thresh)
        scores = sc.reshape(-1)[r_idx * (num_classes - 1) + c_idx]
        labels = c_idx + 1
        d = box_deltas.float().reshape(-1, 4)[r_idx * num_classes + labels]
        image = rois[r_idx, 0].to(torch.int64)
        boxes = clip_boxes(pred.box_coder.decode(d, rois[r_idx, 1:])[:, 0], frame[image])
        ok = torch.where(((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2))[0]
        boxes, scores, labels, image = boxes[ok], scores[ok], labels[ok], image[ok]
        keep = _grouped_nms(boxes, scores, image * num_classes + labels, pred.nms_thresh)
        batch = torch.ones_like(frame[:, 0]).sum()
        keep = _best_per_image(keep, image, batch, pred.detections_per_img)
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        mask_rois = torch.cat([image[:, None].to(boxes.dtype), heads.mask_boxes(boxes)], 1)
        mask_probs = self.mask_probs(heads.mask_pool.pool(feats, mask_rois), labels)
        return boxes, scores, labels, mask_probs, image

    def forward(self, images: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, scaled, frame, offset = self.preprocess(images, sizes)
        feats, logits, deltas = self.features(x)
        rois = self.proposals(logits, deltas, x, frame)
        boxes, scores, labels, mask_probs, image = self.detections(feats, rois, frame)
        shift = offset[image].flip(1).repeat(1, 2).to(boxes.dtype)  # (left, top, left, top)
        boxes = unscale_boxes(boxes - shift, sizes[image].to(torch.float32), scaled[image].to(torch.float32))
        return boxes, scores, labels, mask_probs, image


def _resize_axis(size_in: Tensor, scaled: Tensor, offset: Tensor, length: Tensor) -> tuple[Tensor, ...]:
    """Bilinear sampling of one axis, as ``F.interpolate(mode="bilinear", align_corners=False)`` with
    an output size, placed at ``offset``: for ``length`` output positions of each image
    (``size_in [B]`` -> ``scaled [B]`` int64, starting at ``offset [B]``), the source indices
    ``i0, i1 [B, L]``, weights ``w0, w1 [B, L]`` (zero outside the scaled image: the padding) and
    the 0/1 ``valid [B, L]``. Output ``j`` reads source ``(j - offset + 0.5) * in / scaled - 0.5``
    (the ratio in float32), clamped at 0; ``i1 = min(i0 + 1, in - 1)``."""
    dst = torch.arange(length, device=size_in.device)[None, :] - offset[:, None]  # [B, L] int64
    valid = ((dst >= 0) & (dst < scaled[:, None])).to(torch.float32)
    ratio = size_in.to(torch.float32) / scaled.to(torch.float32)
    src = (ratio[:, None] * (dst.to(torch.float32) + 0.5) - 0.5).clamp(min=0)
    last = (size_in - 1)[:, None]
    i0 = torch.minimum(torch.floor(src).to(torch.int64), last)
    i1 = torch.minimum(i0 + 1, last)
    w1 = (src - i0.to(torch.float32)).clamp(0, 1)
    return i0, i1, (1 - w1) * valid, w1 * valid, valid


def _resample(x: Tensor, rows: tuple[Tensor, ...], cols: tuple[Tensor, ...]) -> Tensor:
    """``x [B, C, H, W]`` resampled along rows then columns (:func:`_resize_axis`) -> ``[B, C, L_r, L_c]``."""
    r0, r1, wr0, wr1 = rows[:4]
    c0, c1, wc0, wc1 = cols[:4]
    b, ch, w_in = x.shape[0], x.shape[1], x.shape[3]
    y = (torch.gather(x, 2, r0[:, None, :, None].expand(b, ch, -1, w_in)) * wr0[:, None, :, None]
         + torch.gather(x, 2, r1[:, None, :, None].expand(b, ch, -1, w_in)) * wr1[:, None, :, None])
    h_out = y.shape[2]
    return (torch.gather(y, 3, c0[:, None, None, :].expand(b, ch, h_out, -1)) * wc0[:, None, None, :]
            + torch.gather(y, 3, c1[:, None, None, :].expand(b, ch, h_out, -1)) * wc1[:, None, None, :])


def _region(sizes: Tensor, x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` bool: the real pixels of each image (top-left ``sizes [B, 2]``) in the batch ``x``."""
    top = torch.arange(x.shape[2], device=x.device)[None, :] < sizes[:, 0:1]
    left = torch.arange(x.shape[3], device=x.device)[None, :] < sizes[:, 1:2]
    return top[:, None, :, None] & left[:, None, None, :]

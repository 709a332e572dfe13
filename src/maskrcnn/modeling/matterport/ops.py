"""The operations where Matterport's Keras/TensorFlow network computes differently from torchvision.

Coordinates: Matterport's boxes are ``(y1, x1, y2, x2)``, normalised by :func:`norm_boxes`
(``(y1, x1, y2 - 1, x2 - 1) / (H - 1, W - 1)``) for the image of shape ``(H, W)`` the network
sees (resized and padded). Every function here keeps that order and convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["max_pool_same", "crop_and_resize", "roi_levels", "pyramid_roi_align", "generate_pyramid_anchors",
           "norm_boxes", "apply_box_deltas", "clip_boxes", "resize_constant"]


def max_pool_same(x: Tensor, kernel: int = 3, stride: int = 2) -> Tensor:
    """TensorFlow's ``MaxPooling2D(padding="same")`` on ``[B, C, H, W]``.

    The output has ``ceil(n / stride)`` cells per side; the padding it needs is split with the
    smaller half on the top/left (so an even side of the 3x3/2 stem pool is padded on the
    bottom/right only, an odd one on both sides), and padded cells never win the maximum.
    """
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


def crop_and_resize(image: Tensor, boxes: Tensor, box_index: Tensor, crop_size: tuple[int, int]) -> Tensor:
    """``tf.image.crop_and_resize(image, boxes, box_index, crop_size, method="bilinear")``.

    Args:
        image: ``[B, C, H, W]`` feature maps.
        boxes: ``[R, 4]`` normalised ``(y1, x1, y2, x2)``: ``y1 * (H - 1)`` is a row of ``image``.
        box_index: ``[R]`` image of each box.
        crop_size: ``(ch, cw)``.

    Returns:
        ``[R, C, ch, cw]``: one bilinear sample per output cell, at ``y1 * (H - 1) + i * (y2 - y1) *
        (H - 1) / (ch - 1)`` (the box centre when ``ch == 1``); a sample outside ``[0, H - 1]`` (or
        ``[0, W - 1]``) is 0, TensorFlow's extrapolation value. Float32 arithmetic in TensorFlow's order.
    """
    _, c, h, w = image.shape
    ch, cw = crop_size
    r = boxes.shape[0]
    if r == 0:
        return image.new_zeros((0, c, ch, cw))
    b = boxes.float()
    y1, x1, y2, x2 = b.unbind(1)
    in_y = _sample_coords(y1, y2, h, ch)  # [R, ch]
    in_x = _sample_coords(x1, x2, w, cw)  # [R, cw]
    valid = ((in_y >= 0) & (in_y <= h - 1))[:, :, None] & ((in_x >= 0) & (in_x <= w - 1))[:, None, :]
    top, left = torch.floor(in_y), torch.floor(in_x)
    y_lerp, x_lerp = (in_y - top)[:, :, None, None], (in_x - left)[:, None, :, None]
    top_i = top.clamp(0, h - 1).long()
    bottom_i = torch.ceil(in_y).clamp(0, h - 1).long()
    left_i = left.clamp(0, w - 1).long()
    right_i = torch.ceil(in_x).clamp(0, w - 1).long()
    hwc = image.permute(0, 2, 3, 1)  # gather [R, ch, cw, C] without copying whole maps per box
    bi = box_index.long()[:, None, None]

    def at(rows: Tensor, cols: Tensor) -> Tensor:
        return hwc[bi, rows[:, :, None], cols[:, None, :]]

    top_left, top_right = at(top_i, left_i), at(top_i, right_i)
    bottom_left, bottom_right = at(bottom_i, left_i), at(bottom_i, right_i)
    top_v = top_left + (top_right - top_left) * x_lerp
    bottom_v = bottom_left + (bottom_right - bottom_left) * x_lerp
    out = top_v + (bottom_v - top_v) * y_lerp
    out = torch.where(valid[..., None], out, out.new_zeros(()))
    return out.permute(0, 3, 1, 2).contiguous()


def _sample_coords(lo: Tensor, hi: Tensor, size: int, crop: int) -> Tensor:
    """crop_and_resize's sample positions ``[R, crop]`` along one axis (float32, TensorFlow's order)."""
    if crop > 1:
        scale = (hi - lo) * float(size - 1) / float(crop - 1)
        steps = torch.arange(crop, dtype=torch.float32, device=lo.device)
        return (lo * float(size - 1))[:, None] + steps[None, :] * scale[:, None]
    return (0.5 * (lo + hi) * float(size - 1))[:, None]


def roi_levels(boxes: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """Matterport's FPN level of each normalised ``[R, 4]`` box: ``min(5, max(2, 4 + round(log2(
    sqrt(h * w) / (224 / sqrt(H * W))))))`` with ``h, w`` normalised and ``(H, W)`` the network's
    input size; rounding half to even (``tf.round``). A box of zero area goes to level 2."""
    y1, x1, y2, x2 = boxes.float().unbind(1)
    area = torch.tensor(float(image_shape[0] * image_shape[1]), dtype=torch.float32)
    ratio = torch.sqrt((y2 - y1) * (x2 - x1)) / (224.0 / torch.sqrt(area))
    level = torch.log(ratio) / torch.log(torch.tensor(2.0))
    level = (4 + torch.round(level)).clamp(2, 5)  # clamp in float: -inf (zero area) -> 2
    return level.long()


def pyramid_roi_align(boxes: Tensor, box_index: Tensor, features: Sequence[Tensor], pool_size: int,
                      image_shape: tuple[int, int]) -> Tensor:
    """Matterport's ``PyramidROIAlign``: each normalised box pooled by :func:`crop_and_resize` from
    ``features[level - 2]`` (P2..P5) at its :func:`roi_levels` level -> ``[R, C, pool, pool]`` in box order."""
    levels = roi_levels(boxes, image_shape)
    out = features[0].new_zeros((boxes.shape[0], features[0].shape[1], pool_size, pool_size))
    for i, feat in enumerate(features[:4]):
        idx = torch.nonzero(levels == i + 2).flatten()
        if idx.numel():
            out[idx] = crop_and_resize(feat, boxes[idx], box_index[idx], (pool_size, pool_size))
    return out


def norm_boxes(boxes: Tensor, shape: tuple[int, int]) -> Tensor:
    """Pixel ``(y1, x1, y2, x2)`` -> normalised: ``(b - (0, 0, 1, 1)) / (H - 1, W - 1, H - 1, W - 1)``
    (float64 arithmetic, then float32, as Matterport's numpy ``norm_boxes``)."""
    h, w = shape
    scale = torch.tensor([h - 1, w - 1, h - 1, w - 1], dtype=torch.float64, device=boxes.device)
    shift = torch.tensor([0, 0, 1, 1], dtype=torch.float64, device=boxes.device)
    return ((boxes.double() - shift) / scale).float()


def generate_pyramid_anchors(scales: Sequence[float], ratios: Sequence[float], feature_shapes: Sequence[tuple[int, int]],
                             feature_strides: Sequence[int], anchor_stride: int = 1) -> Tensor:
    """Matterport's anchors in pixels ``[A, (y1, x1, y2, x2)]``, float64, not rounded.

    One scale per level; per level the cells in row-major order, at each cell the ratios in order
    (``height = scale / sqrt(ratio)``, ``width = scale * sqrt(ratio)``: ratio is width/height),
    centred on ``(row * stride, col * stride)`` (the cell's top-left corner, no half-cell offset).
    """
    out = []
    r = torch.tensor([float(v) for v in ratios], dtype=torch.float64)
    for scale, (fh, fw), stride in zip(scales, feature_shapes, feature_strides):
        heights, widths = scale / torch.sqrt(r), scale * torch.sqrt(r)
        ys = torch.arange(0, fh, anchor_stride, dtype=torch.float64) * stride
        xs = torch.arange(0, fw, anchor_stride, dtype=torch.float64) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        cy, cx = cy.reshape(-1, 1), cx.reshape(-1, 1)
        hh, ww = heights[None, :], widths[None, :]
        boxes = torch.stack([cy - 0.5 * hh, cx - 0.5 * ww, cy + 0.5 * hh, cx + 0.5 * ww], dim=2)
        out.append(boxes.reshape(-1, 4))
    return torch.cat(out)


def apply_box_deltas(boxes: Tensor, deltas: Tensor) -> Tensor:
    """Matterport's ``apply_box_deltas_graph``: ``[N, (y1, x1, y2, x2)]`` refined by ``[N, (dy, dx,
    log(dh), log(dw))]`` (already multiplied by the std dev), float32, ``exp`` not clamped."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y = center_y + deltas[:, 0] * height
    center_x = center_x + deltas[:, 1] * width
    height = height * torch.exp(deltas[:, 2])
    width = width * torch.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return torch.stack([y1, x1, y1 + height, x1 + width], dim=1)


def clip_boxes(boxes: Tensor, window: Tensor) -> Tensor:
    """Clip ``[N, (y1, x1, y2, x2)]`` to ``window`` ``(wy1, wx1, wy2, wx2)`` (Matterport's ``clip_boxes_graph``)."""
    wy1, wx1, wy2, wx2 = window.unbind(0)
    y1, x1, y2, x2 = boxes.unbind(1)
    return torch.stack([torch.maximum(torch.minimum(y1, wy2), wy1), torch.maximum(torch.minimum(x1, wx2), wx1),
                        torch.maximum(torch.minimum(y2, wy2), wy1), torch.maximum(torch.minimum(x2, wx2), wx1)], dim=1)


def resize_constant(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Matterport's ``utils.resize`` of ``[..., H, W]`` to ``size``: scikit-image's ``resize(order=1,
    mode="constant", cval=0, clip=True, preserve_range=True, anti_aliasing=False)``.

    Output pixel ``i`` samples the input at ``(i + 0.5) * H / h - 0.5``, linearly, with 0 outside
    the image (borders fade when enlarging); the result is clipped to the input's range, except
    values exactly 0 (scikit-image keeps the constant when 0 is outside that range). Computed by
    scipy's ``ndimage.zoom`` as scikit-image does (bit-equal) when scipy is installed (the
    ``matterport`` extra), else by the same formula in torch (equal within float64 rounding, which
    can move a value across an integer when it is truncated to ``uint8``). Float64 for integer
    and float64 input, float32 for float32 input (scikit-image's types).
    """
    dtype = torch.float32 if image.dtype == torch.float32 else torch.float64
    x = image.detach().cpu().to(dtype)
    lead = x.shape[:-2]
    if tuple(x.shape[-2:]) == tuple(size):
        out = x.clone()
    else:
        try:
            from scipy import ndimage
        except ImportError:
            out = x
            for axis, n_out in ((-2, size[0]), (-1, size[1])):
                out = _resize_axis(out, axis, int(n_out))
        else:
            a = x.numpy()
            zoom = [1.0] * len(lead) + [1.0 / (x.shape[-2] / size[0]), 1.0 / (x.shape[-1] / size[1])]
            out = torch.from_numpy(ndimage.zoom(a, zoom, order=1, mode="grid-constant", cval=0.0, grid_mode=True))
    lo, hi = x.min(), x.max()
    keep_zero = not bool(lo <= 0 <= hi) and bool(out.min() <= 0 <= out.max())
    zero = out == 0 if keep_zero else None
    out = out.clamp(lo, hi)
    if zero is not None:
        out[zero] = 0.0
    return out.to(image.device)


def _resize_axis(x: Tensor, axis: int, n_out: int) -> Tensor:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    coords = (torch.arange(n_out, dtype=torch.float64, device=x.device) + 0.5) * (n_in / n_out) - 0.5
    lo = torch.floor(coords)
    t = coords - lo
    lo_i = lo.long()
    hi_i = lo_i + 1
    padded = F.pad(x.movedim(axis, -1), (1, 1))  # one zero cell each side: the constant 0 outside
    v_lo = padded[..., (lo_i + 1).clamp(0, n_in + 1)]
    v_hi = padded[..., (hi_i + 1).clamp(0, n_in + 1)]
    return (v_lo * (1.0 - t) + v_hi * t).movedim(-1, axis)

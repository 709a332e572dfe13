"""Test-time augmentation (``Config.tta_views``, ``tta_scales``): detect on flipped, rotated and
rescaled copies too, fuse.

A view is one of the dihedral transforms of an image's frame (``image_sizes``, where detections
live): ``hflip`` (left-right), ``vflip`` (top-bottom), ``rot180``, ``transpose`` (x <-> y),
``rot90`` (counterclockwise, as ``torch.rot90``), ``rot270`` and ``antitranspose``. Each is
"transpose or not, then flip left-right or not, then top-bottom or not" (:data:`TTA_VIEWS`). A
scale view (``tta_scales``, e.g. 1.25) resizes the frame bilinearly by that factor (of the
inference resize), padded again to ``size_divisibility``: small objects get larger. Per view:
backbone, RPN and box head give detections, whose boxes are mapped back. Then, per image
and class (Detectron2's ``GeneralizedRCNNWithTTA`` with weighted box fusion's scoring):

1. the views' detections are pooled and NMS at ``detection_nms_threshold`` keeps the best
   ``detection_max_instances`` as cluster heads;
2. every pooled detection joins the head of its class it overlaps most (IoU >= the same threshold);
3. a head's box becomes the score-weighted mean of its cluster's boxes, and its score the mean over
   the views of each view's best score in the cluster (0 for a view that missed it), so a
   detection found in one view only is ranked lower than one every view agrees on;
4. the mask head runs on the fused boxes in every view (boxes mapped into it, probabilities mapped
   back) and the probabilities are averaged.

Boxes are ``(x1, y1, x2, y2)`` pixels of the resized image (as :meth:`.RoIHeads.detect` returns
them); the result has the same keys. Cost: one more backbone/RPN/box pass and one more mask pass
per view, with every view's features held until the masks are computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..structures import ImageBatch

if TYPE_CHECKING:  # pragma: no cover
    from .mask_rcnn import MaskRCNN

__all__ = ["TTA_VIEWS", "TTA_PRESETS", "view_images", "scale_images", "boxes_to_view", "boxes_from_view",
           "probs_from_view", "fuse_detections", "detect_with_views"]

#: view name -> (transpose, then flip left-right, then flip top-bottom)
TTA_VIEWS: dict[str, tuple[bool, bool, bool]] = {
    "hflip": (False, True, False), "vflip": (False, False, True), "rot180": (False, True, True),
    "transpose": (True, False, False), "rot90": (True, False, True), "rot270": (True, True, False),
    "antitranspose": (True, True, True),
}
#: named sets of views (``--tta``): ``hflip`` for scenes with an up and a down (photos), all eight
#: for microscopy, remote sensing and other images without an orientation
TTA_PRESETS: dict[str, list[str]] = {"hflip": ["hflip"], "flips": ["hflip", "vflip", "rot180"],
                                     "dihedral": list(TTA_VIEWS)}


def _flip_dims(view: str) -> list[int]:
    _, h, v = TTA_VIEWS[view]
    return ([-1] if h else []) + ([-2] if v else [])


def view_images(tensor: Tensor, image_sizes: list[tuple[int, int]], view: str) -> tuple[Tensor, list[tuple[int, int]]]:
    """``tensor [B, C, H, W]`` with each image's frame ``[:h, :w]`` in ``view`` (padding bottom/right,
    ``[B, C, W, H]`` for views that transpose) and the frames' new sizes."""
    t = TTA_VIEWS[view][0]
    b, c, hp, wp = tensor.shape
    out = tensor.new_zeros((b, c, wp, hp) if t else (b, c, hp, wp))
    sizes = []
    for i, (h, w) in enumerate(image_sizes):
        frame = tensor[i, :, :h, :w]
        if t:
            frame, (h, w) = frame.transpose(-1, -2), (w, h)
        out[i, :, :h, :w] = torch.flip(frame, _flip_dims(view))
        sizes.append((h, w))
    return out, sizes


def scale_images(tensor: Tensor, image_sizes: list[tuple[int, int]], scale: float,
                 divisor: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """``tensor [B, C, H, W]`` with each frame ``[:h, :w]`` resized bilinearly to ``(round(h * scale),
    round(w * scale))``, padded bottom/right to multiples of ``divisor``, and the frames' new sizes."""
    sizes = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in image_sizes]
    hp = -(-max(h for h, _ in sizes) // divisor) * divisor
    wp = -(-max(w for _, w in sizes) // divisor) * divisor
    out = tensor.new_zeros((tensor.shape[0], tensor.shape[1], hp, wp))
    for i, ((h, w), (sh, sw)) in enumerate(zip(image_sizes, sizes)):
        out[i, :, :sh, :sw] = F.interpolate(tensor[i:i + 1, :, :h, :w], size=(sh, sw), mode="bilinear",
                                            align_corners=False)[0]
    return out, sizes


def _scale_boxes(boxes: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """``boxes [N, 4]`` of a frame of size ``src`` in the same frame resized to ``dst`` (``(h, w)`` each)."""
    f = boxes.new_tensor([dst[1] / src[1], dst[0] / src[0], dst[1] / src[1], dst[0] / src[0]])
    return boxes * f


def _flip_boxes(boxes: Tensor, size: tuple[int, int], view: str) -> Tensor:
    _, h_flip, v_flip = TTA_VIEWS[view]
    x1, y1, x2, y2 = boxes.unbind(-1)
    h, w = size
    if h_flip:
        x1, x2 = w - x2, w - x1
    if v_flip:
        y1, y2 = h - y2, h - y1
    return torch.stack([x1, y1, x2, y2], -1)


def boxes_to_view(boxes: Tensor, size: tuple[int, int], view: str) -> Tensor:
    """``boxes [N, 4]`` (x1, y1, x2, y2) of a frame of ``size`` ``(h, w)`` in ``view`` of it."""
    if TTA_VIEWS[view][0]:
        boxes, size = boxes[:, [1, 0, 3, 2]], (size[1], size[0])
    return _flip_boxes(boxes, size, view)


def boxes_from_view(boxes: Tensor, view_size: tuple[int, int], view: str) -> Tensor:
    """The inverse of :func:`boxes_to_view`: ``boxes [N, 4]`` of ``view`` (frame ``view_size``) in the original frame."""
    boxes = _flip_boxes(boxes, view_size, view)
    return boxes[:, [1, 0, 3, 2]] if TTA_VIEWS[view][0] else boxes


def probs_from_view(probs: Tensor, view: str) -> Tensor:
    """Mask probabilities ``[R, M, M]`` inside boxes of ``view``, as inside the same boxes of the original frame."""
    probs = torch.flip(probs, _flip_dims(view))
    return probs.transpose(-1, -2) if TTA_VIEWS[view][0] else probs


def fuse_detections(boxes: Tensor, scores: Tensor, labels: Tensor, views: Tensor, num_views: int,
                    iou_threshold: float, max_detections: int) -> dict[str, Tensor]:
    """Fuse the pooled detections of ``num_views`` views of one image (steps 1-3 of the module doc).

    Args:
        boxes ``[N, 4]``, scores ``[N]``, labels ``[N]``: every view's detections in the image's frame.
        views ``[N]``: the view (0..num_views-1) each came from.
    Returns:
        ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` by fused score, descending.
    """
    if boxes.numel() == 0:
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    heads = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
    iou = box_iou(boxes, boxes[heads])  # [N, K]
    iou = torch.where(labels[:, None] == labels[heads][None, :], iou, torch.full_like(iou, -1.0))
    best_iou, cluster = iou.max(1)
    member = best_iou >= iou_threshold
    member[heads] = True  # a head is in its own cluster (IoU 1 with itself)
    cluster[heads] = torch.arange(len(heads), device=boxes.device)
    b, s, c, v = boxes[member], scores[member], cluster[member], views[member]
    k = len(heads)
    weight = torch.zeros(k, dtype=s.dtype, device=s.device).index_add_(0, c, s)
    fused = torch.zeros(k, 4, dtype=b.dtype, device=b.device).index_add_(0, c, b * s[:, None]) / weight[:, None]
    per_view = torch.zeros(k * num_views, dtype=s.dtype, device=s.device)
    per_view = per_view.scatter_reduce_(0, c * num_views + v, s, reduce="amax", include_self=True)
    fused_scores = per_view.view(k, num_views).sum(1) / num_views
    order = torch.argsort(fused_scores, descending=True, stable=True)
    return {"boxes": fused[order], "scores": fused_scores[order], "labels": labels[heads][order]}


#: one view: an orientation of :data:`TTA_VIEWS`, a scale factor, or None for the image as it is
View = Union[str, float, None]


def _make_view(view: View, batch: ImageBatch, divisor: int) -> tuple[Tensor, list[tuple[int, int]]]:
    if view is None:
        return batch.tensor, batch.image_sizes
    if isinstance(view, str):
        return view_images(batch.tensor, batch.image_sizes, view)
    return scale_images(batch.tensor, batch.image_sizes, view, divisor)


def _to_view(view: View, boxes: Tensor, size: tuple[int, int], view_size: tuple[int, int]) -> Tensor:
    if view is None:
        return boxes
    return boxes_to_view(boxes, size, view) if isinstance(view, str) else _scale_boxes(boxes, size, view_size)


def _from_view(view: View, boxes: Tensor, size: tuple[int, int], view_size: tuple[int, int]) -> Tensor:
    if view is None:
        return boxes
    return boxes_from_view(boxes, view_size, view) if isinstance(view, str) else _scale_boxes(boxes, view_size, size)


def detect_with_views(model: "MaskRCNN", batch: ImageBatch, views: list[str], score_threshold: float | None = None,
                      scales: list[float] | None = None) -> list[dict[str, Tensor]]:
    """:meth:`.MaskRCNN.detect_batch` fused over the image as it is, the orientations ``views`` and
    the ``scales`` (module doc)."""
    heads = model.roi_heads
    names: list[View] = [None, *views, *(scales or [])]
    divisor = int(model.config.size_divisibility)
    passes: list[tuple[list[Tensor], list[tuple[int, int]]]] = []
    per_view: list[list[dict[str, Tensor]]] = []
    for view in names:
        tensor, sizes = _make_view(view, batch, divisor)
        feats, proposals = model.propose(tensor, sizes)
        dets = heads.detect_boxes(feats, proposals, sizes)
        for d, size, view_size in zip(dets, batch.image_sizes, sizes):
            d["boxes"] = _from_view(view, d["boxes"], size, view_size)
        passes.append((feats, sizes))
        per_view.append(dets)
    results = []
    for i in range(len(batch)):
        dets = [v[i] for v in per_view]
        view_ids = torch.cat([torch.full((len(d["scores"]),), n, dtype=torch.int64) for n, d in enumerate(dets)])
        fused = fuse_detections(torch.cat([d["boxes"] for d in dets]), torch.cat([d["scores"] for d in dets]),
                                torch.cat([d["labels"] for d in dets]), view_ids.to(batch.tensor.device), len(names),
                                heads.box_predictor.nms_thresh, heads.box_predictor.detections_per_img)
        if score_threshold is not None:
            keep = fused["scores"] >= score_threshold
            fused = {k: v[keep] for k, v in fused.items()}
        results.append(fused)
    _fused_masks(model, batch, names, passes, results)
    return results


def _fused_masks(model: "MaskRCNN", batch: ImageBatch, names: list[View],
                 passes: list[tuple[list[Tensor], list[tuple[int, int]]]], results: list[dict[str, Tensor]]) -> None:
    """``mask_probs`` of every result: the mean over the views of the mask head on its boxes (step 4)."""
    heads = model.roi_heads
    labels = torch.cat([r["labels"] for r in results])
    total = None
    for view, (feats, sizes) in zip(names, passes):
        boxes = [_to_view(view, r["boxes"], size, view_size) for r, size, view_size in zip(results, batch.image_sizes, sizes)]
        probs = heads.mask_probs(feats, boxes, labels)
        if isinstance(view, str):
            probs = probs_from_view(probs, view)
        total = probs if total is None else total + probs
    mean = total / len(names)
    for r, mp in zip(results, mean.split([len(r["labels"]) for r in results])):
        r["mask_probs"] = mp

"""Matterport's proposal and detection steps, and its mapping of detections back to the image.

Boxes are normalised ``(y1, x1, y2, x2)`` (see :mod:`.ops`) until :func:`boxes_to_original`.
NMS is torchvision's (the same greedy rule as ``tf.image.non_max_suppression``: IoU above the
threshold suppresses, a zero-area box overlaps nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from .ops import apply_box_deltas, clip_boxes, norm_boxes, resize_constant

__all__ = ["propose", "refine_detections", "boxes_to_original", "paste_masks_matterport"]


def propose(probs: Tensor, deltas: Tensor, anchors: Tensor, *, std_dev: Sequence[float], pre_nms_limit: int,
            nms_threshold: float, proposal_count: int) -> Tensor:
    """Matterport's ``ProposalLayer`` for one image -> ``[proposal_count, 4]`` normalised boxes.

    ``probs [A, 2]`` (background, foreground), ``deltas [A, 4]``, ``anchors [A, 4]`` normalised.
    The top ``pre_nms_limit`` anchors by foreground score over all levels together, refined by the
    deltas times ``std_dev`` (RPN_BBOX_STD_DEV), clipped to ``[0, 1]``, one NMS at
    ``nms_threshold``, the first ``proposal_count`` kept and zero boxes appended up to that count.
    """
    scores = probs[:, 1]
    k = min(int(pre_nms_limit), scores.shape[0])
    top = torch.topk(scores, k, sorted=True).indices
    d = deltas[top] * torch.tensor(list(std_dev), dtype=torch.float32, device=deltas.device)
    boxes = apply_box_deltas(anchors[top], d)
    boxes = clip_boxes(boxes, torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device))
    keep = nms(boxes, scores[top], float(nms_threshold))[:proposal_count]
    out = boxes.new_zeros((proposal_count, 4))
    out[:keep.numel()] = boxes[keep]
    return out


def refine_detections(rois: Tensor, probs: Tensor, deltas: Tensor, window: Tensor, *, std_dev: Sequence[float],
                      min_confidence: float, nms_threshold: float, max_instances: int) -> tuple[Tensor, Tensor, Tensor]:
    """Matterport's ``refine_detections_graph`` for one image.

    ``rois [R, 4]`` normalised, ``probs [R, K]``, ``deltas [R, K, 4]``, ``window`` the normalised
    window of real pixels. Each RoI takes its argmax class (background RoIs are dropped), its
    class's deltas times ``std_dev`` (BBOX_STD_DEV), clipped to the window; scores below
    ``min_confidence`` are dropped, NMS per class at ``nms_threshold``, then the best
    ``max_instances`` by score (ties: the earlier RoI).

    Returns ``(boxes [N, 4] normalised, class_ids [N] int64, scores [N])``, by descending score.
    """
    class_ids = probs.argmax(dim=1)
    idx = torch.arange(probs.shape[0], device=probs.device)
    scores = probs[idx, class_ids]
    d = deltas[idx, class_ids] * torch.tensor(list(std_dev), dtype=torch.float32, device=deltas.device)
    refined = clip_boxes(apply_box_deltas(rois, d), window)
    keep = torch.nonzero((class_ids > 0) & (scores >= min_confidence)).flatten()
    if keep.numel():
        kept = batched_nms(refined[keep], scores[keep], class_ids[keep], float(nms_threshold))
        keep = torch.sort(keep[kept]).values  # TF intersects index sets: ascending RoI order
        order = torch.sort(scores[keep], descending=True, stable=True).indices[:max_instances]
        keep = keep[order]
    return refined[keep], class_ids[keep], scores[keep]


def boxes_to_original(boxes: Tensor, window: tuple[int, int, int, int], image_shape: tuple[int, int],
                      original_shape: tuple[int, int]) -> Tensor:
    """Matterport's ``unmold_detections`` for boxes: normalised ``[N, (y1, x1, y2, x2)]`` in the
    network's image -> integer pixels of the original image (float64 rounding, half to even).
    The window's normalised coordinates are float32, as Matterport's."""
    w = norm_boxes(torch.tensor([window], dtype=torch.float64), image_shape)[0]
    wy1, wx1, wy2, wx2 = w.unbind(0)
    shift = torch.stack([wy1, wx1, wy1, wx1])
    scale = torch.stack([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    b = (boxes.float().cpu() - shift) / scale
    h, wd = original_shape
    px = b.double() * torch.tensor([h - 1, wd - 1, h - 1, wd - 1], dtype=torch.float64)
    px = px + torch.tensor([0, 0, 1, 1], dtype=torch.float64)
    return torch.round(px).to(torch.int64)


def paste_masks_matterport(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                           threshold: float | None = 0.5) -> Tensor:
    """Matterport's ``unmold_mask``: each ``[M, M]`` probability map resized to its integer box
    (:func:`~.ops.resize_constant`, float32 as scikit-image keeps it, clipped to the map's range) and
    thresholded ``>= threshold`` (0.5), written into ``[N, H, W]``. ``boxes [N, 4]`` are
    ``(x1, y1, x2, y2)`` integer pixels, ``x2``/``y2`` exclusive. ``threshold=None``: probabilities."""
    n = mask_probs.shape[0]
    h, w = image_size
    out = torch.zeros((n, h, w), dtype=torch.float32 if threshold is None else torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().to(torch.int64).tolist()):
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if y2 <= y1 or x2 <= x1:
            continue
        res = resize_constant(mask_probs[i].float().cpu(), (y2 - y1, x2 - x1))
        out[i, y1:y2, x1:x2] = res if threshold is None else res >= threshold
    return out

"""Box head: RoI features -> class scores and class-specific box deltas, their losses, and detections.

The feature part is :class:`TwoMLPHead` (v1) or :class:`ConvFCHead` (v2) over pooled ``[R, C, 7, 7]``
RoIs; :class:`BoxPredictor` holds the output layers and, as Detectron2's ``FastRCNNOutputLayers``,
owns the losses (``loss_mrcnn_class``, ``loss_mrcnn_bbox``, each multiplied by its
``Config.loss_weights`` entry) and inference (decode, clip, score filter, per-class NMS).
Boxes are ``(x1, y1, x2, y2)`` pixels of the resized (unpadded) image; class 0 is background.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .box_coder import BoxCoder, clip_boxes
from .layers import conv_norm_relu
from .losses import box_regression_loss, weighted_losses

__all__ = ["TwoMLPHead", "ConvFCHead", "BoxPredictor"]


class TwoMLPHead(nn.Module):
    """v1 box head: flatten ``[R, C, 7, 7]`` -> fc6 -> ReLU -> fc7 -> ReLU -> ``[R, dim]``."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, dim)
        self.fc7 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Sequential):
    """v2 box head ("4conv1fc"): four 3x3 conv+BN+ReLU, flatten, one FC + ReLU -> ``[R, dim]``.

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
    """``cls_score`` (K classes incl. background) and class-specific ``bbox_pred`` (K*4), with the
    box head's losses and inference.

    Args:
        dim: feature size of the box head's output.
        num_classes: K, background included.
        bbox_weights: the box coder's ``(wx, wy, ww, wh)`` (``Config.bbox_weights``).
        score_thresh, nms_thresh, detections_per_img: inference (``Config.detection_*``).
        class_weights: optional ``[K]`` weights of the classification loss (``Config.class_loss_weights``).
        loss_weights: ``Config.loss_weights``; this head reads ``mrcnn_class`` and ``mrcnn_bbox``.
    """

    def __init__(self, dim: int, num_classes: int, *, bbox_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 class_weights: list[float] | None = None, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.cls_score = nn.Linear(dim, num_classes)
        self.bbox_pred = nn.Linear(dim, num_classes * 4)
        self.box_coder = BoxCoder(bbox_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32),
                             persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [R, dim]`` -> class logits ``[R, K]`` and deltas ``[R, K*4]``."""
        return self.cls_score(x), self.bbox_pred(x)

    # ------------------------------------------------------------------ training
    def losses(self, class_logits: Tensor, box_deltas: Tensor, rois: list[Tensor], labels: list[Tensor],
               gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """Weighted ``loss_mrcnn_class`` and ``loss_mrcnn_bbox`` of the sampled RoIs.

        ``class_logits [R, K]`` and ``box_deltas [R, K*4]`` for the RoIs of all images in order;
        per image ``rois [S_i, 4]``, ``labels [S_i]`` (0 = background) and the matched GT boxes
        ``gt_boxes [S_i, 4]`` (only read for positives). Classification: cross-entropy (with
        ``class_weights``); regression: :func:`~.losses.box_regression_loss` of the labelled class's
        deltas against the encoded GT, over positives, divided by the number of sampled RoIs.
        """
        labels_cat = torch.cat(labels)
        cls_loss = F.cross_entropy(class_logits.float(), labels_cat, weight=self.class_weights)
        pos = torch.where(labels_cat > 0)[0]
        targets = self.box_coder.encode(torch.cat(gt_boxes)[pos], torch.cat(rois)[pos])
        deltas = box_deltas.float().reshape(box_deltas.shape[0], -1, 4)
        box_loss = box_regression_loss(deltas[pos, labels_cat[pos]], targets, labels_cat.numel())
        return weighted_losses({"mrcnn_class": cls_loss, "mrcnn_bbox": box_loss}, self.loss_weights)

    # ------------------------------------------------------------------ inference
    def inference(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                  image_sizes: list[tuple[int, int]], score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` (1..K-1), by score.

        ``class_logits [R, K]``, ``box_deltas [R, K*4]`` for the ``proposals`` of all images in order
        (``[P_i, 4]`` each); ``image_sizes`` ``(H, W)`` to clip to. Every (proposal, class) pair with
        softmax score above ``score_thresh`` is decoded, clipped, dropped when under 0.01 px wide or
        high, then per-class NMS keeps the best ``detections_per_img``; ``score_threshold`` (if given)
        then drops those below it.
        """
        probs = F.softmax(class_logits.float(), -1)
        deltas = box_deltas.float()
        counts = [p.shape[0] for p in proposals]
        return [self._inference_one(pr, dl, props, size, score_threshold)
                for pr, dl, props, size in zip(probs.split(counts), deltas.split(counts), proposals, image_sizes)]

    def _inference_one(self, probs: Tensor, deltas: Tensor, proposals: Tensor, size: tuple[int, int],
                       score_threshold: float | None) -> dict[str, Tensor]:
        sc = probs[:, 1:]
        r_idx, c_idx = torch.where(sc > self.score_thresh)
        scores = sc[r_idx, c_idx]
        c_idx = c_idx + 1
        d = deltas.view(deltas.shape[0], probs.shape[1], 4)[r_idx, c_idx]  # (K known: no proposals is [0, K, 4])
        boxes = clip_boxes(self.box_coder.decode(d, proposals[r_idx])[:, 0], size)
        keep = torch.where(((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2))[0]
        boxes, scores, labels = boxes[keep], scores[keep], c_idx[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        if score_threshold is not None:
            keep = keep[scores[keep] >= score_threshold]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

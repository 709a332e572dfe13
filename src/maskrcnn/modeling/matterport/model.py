"""``MatterportMaskRCNN``: Matterport's Keras Mask R-CNN, reproduced for inference.

Built by ``build_model`` for ``Config.architecture == "matterport"`` (the weights come from a
Matterport ``.h5`` file, :mod:`maskrcnn.weights.h5`, or from our checkpoint of one). It offers
what :class:`~maskrcnn.inference.predictor.Predictor` uses of a model (``config``,
``transform``, ``detect``, ``paste_masks``), so ``maskrcnn.load``, ``detect`` and ``evaluate``
run it. Per image (Matterport's ``mold_inputs`` -> network -> ``unmold_detections``):

1. pixels ``round(x * 255)``; resized (when the scale is not 1) as Matterport's
   ``utils.resize_image`` (scikit-image bilinear, 0 outside, truncated to integers as its
   ``astype(uint8)``) to the geometry of :func:`~maskrcnn.data.resize.plan_resize` (``square``:
   centred zero padding); minus ``MEAN_PIXEL`` (``pixel_mean / pixel_std``, no std);
2. ResNet-FPN, RPN over all anchors, proposals (:func:`.detection.propose`), crop-and-resize
   pooling, box head, :func:`.detection.refine_detections`, mask head on the detections;
3. boxes to integer pixels of the original image (:func:`.detection.boxes_to_original`; empty
   boxes dropped); masks pasted by :func:`.detection.paste_masks_matterport`.

Input images are taken as 8-bit (Matterport's ``uint8`` images). Training this variant is not
supported (a one-line error says to train from ``imagenet`` or ``coco`` instead).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...config import Config, ConfigError
from ...errors import DataError
from ..transform import InputTransform
from .detection import boxes_to_original, paste_masks_matterport, propose, refine_detections
from .network import MatterportLayers, NetShape
from .ops import generate_pyramid_anchors, norm_boxes, pyramid_roi_align, resize_constant

__all__ = ["MatterportMaskRCNN", "net_shape", "TRAINING_UNSUPPORTED"]

#: strides of P2..P6 (Matterport's BACKBONE_STRIDES)
STRIDES = (4, 8, 16, 32, 64)
TRAINING_UNSUPPORTED = ("architecture=matterport (Matterport .h5 weights) runs detection and evaluation only here; to "
                        "train, start from --weights imagenet or coco (architecture v1)")


def net_shape(config: Config) -> NetShape:
    """The network sizes a config gives (the ``.h5`` reader sets them from the file)."""
    return NetShape(num_classes=config.num_classes, backbone=config.backbone, width=config.backbone_width,
                    fpn=config.fpn_channels, fc=config.box_head_dim, mask=config.mask_head_channels,
                    anchors=len(config.rpn_anchor_ratios), in_channels=config.image_channel_count)


class MatterportMaskRCNN(nn.Module):
    """Matterport's network and inference (see the module doc). ``net`` holds the weights (``net.layers[<Keras name>]``)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.net = MatterportLayers(net_shape(config))
        self.transform = InputTransform(config)  # the geometry checks of the predictor (plan)
        self._anchors: dict[tuple[int, int], Tensor] = {}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):  # type: ignore[no-untyped-def]
        if self.training and targets is not None:
            raise ConfigError(TRAINING_UNSUPPORTED)
        return self.detect(images)

    # ------------------------------------------------------------------ input
    def mold(self, image: Tensor, transform: InputTransform | None = None) -> tuple[Tensor, object]:
        """A ``[C, H, W]`` image in [0, 1] -> (the network input ``[C, H', W']``, its ``ResizeInfo``)."""
        t = transform or self.transform
        info = t.plan(int(image.shape[-2]), int(image.shape[-1]))
        ph, pw = info.image_size
        if ph % 64 or pw % 64:
            raise DataError(f"image of {image.shape[-2]}x{image.shape[-1]}: Matterport's network needs sides that are "
                            f"multiples of 64 after resizing ({t.mode} gives {ph}x{pw}); use image_resize_mode square or pad64")
        pixels = torch.round(image.double() * 255.0)
        if info.scale != 1.0:
            pixels = torch.floor(resize_constant(pixels, info.scaled_size))  # astype(uint8) truncates
        (top, bottom), (left, right) = info.padding
        pixels = torch.nn.functional.pad(pixels, (left, right, top, bottom))
        mean = torch.tensor(self.config.pixel_mean, dtype=torch.float64, device=image.device)[:, None, None]
        std = torch.tensor(self.config.pixel_std, dtype=torch.float64, device=image.device)[:, None, None]
        return ((pixels - mean * 255.0) / (std * 255.0)).float(), info

    def anchors(self, shape: tuple[int, int], device: torch.device) -> Tensor:
        """Normalised anchors ``[A, 4]`` for a network input of ``shape`` (cached per shape)."""
        if shape not in self._anchors:
            c = self.config
            feats = [(math.ceil(shape[0] / s), math.ceil(shape[1] / s)) for s in STRIDES]
            px = generate_pyramid_anchors(c.rpn_anchor_scales, c.rpn_anchor_ratios, feats, STRIDES)
            self._anchors[shape] = norm_boxes(px, shape)
        return self._anchors[shape].to(device)

    # ------------------------------------------------------------------ detection
    @torch.no_grad()
    def detect(self, images: list[Tensor], score_threshold: float | None = None,
               transform: InputTransform | None = None) -> list[dict[str, Tensor]]:
        """Detect on ``[C, H, W]`` images in [0, 1]; per image ``boxes [N, 4]`` (x1, y1, x2, y2
        integer pixels of the original image, x2/y2 exclusive), ``labels``, ``scores`` and the
        detected class's ``mask_probs [N, 28, 28]`` (paste with :meth:`paste_masks`)."""
        return [self._detect_one(im, score_threshold, transform) for im in images]

    def _detect_one(self, image: Tensor, score_threshold: float | None,
                    transform: InputTransform | None) -> dict[str, Tensor]:
        c = self.config
        x, info = self.mold(image, transform)
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        feats = self.net.backbone(x[None])
        probs, deltas = self.net.rpn(feats)
        rois = propose(probs[0], deltas[0], self.anchors(shape, x.device), std_dev=c.rpn_bbox_std_dev,
                       pre_nms_limit=c.pre_nms_limit_inference, nms_threshold=c.rpn_nms_threshold,
                       proposal_count=c.post_nms_rois_inference)
        zeros = torch.zeros(rois.shape[0], dtype=torch.int64, device=x.device)
        pooled = pyramid_roi_align(rois, zeros, feats, c.pool_size, shape)
        class_probs, box_deltas = self.net.classifier(pooled)
        window = norm_boxes(torch.tensor([info.window], dtype=torch.float64), shape)[0].to(x.device)
        boxes, labels, scores = refine_detections(
            rois, class_probs, box_deltas, window, std_dev=c.bbox_std_dev, min_confidence=c.detection_min_confidence,
            nms_threshold=c.detection_nms_threshold, max_instances=c.detection_max_instances)
        px = boxes_to_original(boxes, info.window, shape, info.original_size)
        keep = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1]) > 0
        if score_threshold is not None:
            keep &= scores.cpu() >= score_threshold
        keep = keep.to(boxes.device)
        boxes, labels, scores, px = boxes[keep], labels[keep], scores[keep], px[keep.cpu()]
        mask_pool = c.mask_pool_size
        if boxes.shape[0]:
            pooled = pyramid_roi_align(boxes, zeros[:boxes.shape[0]], feats, mask_pool, shape)
            masks = self.net.mask(pooled)
            masks = masks[torch.arange(boxes.shape[0], device=x.device), labels]
        else:
            masks = x.new_zeros((0, 2 * mask_pool, 2 * mask_pool))
        return {"boxes": px[:, [1, 0, 3, 2]].float().to(x.device), "labels": labels, "scores": scores,
                "mask_probs": masks}

    @staticmethod
    def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                    threshold: float | None = 0.5) -> Tensor:
        """Matterport's mask pasting (:func:`.detection.paste_masks_matterport`)."""
        return paste_masks_matterport(mask_probs, boxes, image_size, threshold)

"""The Mask R-CNN meta-architecture and its constructor from a :class:`~maskrcnn.config.Config`.

``MaskRCNN`` composes: backbone (ResNet body + FPN) -> RPN -> RoI heads (box, mask). See
``docs/design.md`` for the train/eval contracts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import Config
from .anchors import AnchorGenerator
from .backbone import BackboneWithFPN
from .box_head import BoxPredictor, ConvFCHead, TwoMLPHead
from .mask_head import MaskHead, MaskPredictor
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from .transform import batch_images, normalize_input, rescale_boxes, resize_minmax

__all__ = ["MaskRCNN", "build_model"]


class MaskRCNN(nn.Module):
    """Mask R-CNN.

    ``forward(images, targets=None)``:

    * training (``model.train()`` and targets): ``images`` are float ``[C, H, W]`` in [0, 1],
      already resized by the data pipeline; returns the losses ``loss_rpn_class, loss_rpn_bbox,
      loss_mrcnn_class, loss_mrcnn_bbox, loss_mrcnn_mask``, each already multiplied by its
      ``Config.loss_weights`` entry by the head that owns it (the total loss is their sum).
    * inference (``model.eval()``): ``images`` are float ``[C, H, W]`` in [0, 1] at their original
      size; returns per image ``boxes [N, 4]`` (x1, y1, x2, y2 in original pixels), ``labels [N]``,
      ``scores [N]`` and ``mask_probs [N, M, M]`` (probabilities inside each box; paste them with
      :func:`maskrcnn.inference.paste.paste_masks`).
    """

    def __init__(self, config: Config, backbone: BackboneWithFPN, rpn: RegionProposalNetwork, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ input
    def preprocess(self, images: list[Tensor], resize: bool,
                   windows: list[tuple[int, int, int, int] | None] | None = None) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise (and, for inference, resize) each image and pad them into one batch.

        ``windows``: per image the ``(y1, x1, y2, x2)`` of its real pixels when the data pipeline
        zero-padded it (``square`` / ``pad64``), or None; see :func:`normalize_input`.
        Returns the batch ``[B, C, H, W]`` and each image's size inside it.
        """
        c = self.config
        out = []
        for k, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != c.image_channel_count:
                raise ValueError(f"expected images [C={c.image_channel_count}, H, W], got {tuple(img.shape)}")
            img = normalize_input(img, self.pixel_mean.to(img.dtype), self.pixel_std.to(img.dtype),
                                  c.image_normalization, c.invert_bright_images, None if windows is None else windows[k])
            if resize:
                if c.image_resize_mode != "minmax":
                    raise NotImplementedError("model-side resizing supports minmax; use maskrcnn.data.resize for other modes")
                img = resize_minmax(img, c.image_min_dim, c.image_max_dim)
            out.append(img)
        return batch_images(out, c.size_divisibility), [(int(i.shape[1]), int(i.shape[2])) for i in out]

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):  # type: ignore[no-untyped-def]
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            batch, sizes = self.preprocess(images, resize=False, windows=[t.get("window") for t in targets])
            feats = self.backbone(batch)
            proposals, rpn_losses = self.rpn(feats, tuple(batch.shape[-2:]), sizes, targets)
            _, head_losses = self.roi_heads(feats, proposals, sizes, targets)
            return {**rpn_losses, **head_losses}
        original = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        return self.detect_tensors(images, original)

    @torch.no_grad()
    def detect_tensors(self, images: list[Tensor], original_sizes: list[tuple[int, int]],
                       resize: bool = True, score_threshold: float | None = None,
                       windows: list[tuple[int, int, int, int] | None] | None = None) -> list[dict[str, Tensor]]:
        """Detect on ``[C, H, W]`` images in [0, 1]. With ``resize`` the model applies the minmax resize
        and maps boxes back to ``original_sizes``; without, images are used as given (already resized
        by :func:`maskrcnn.data.pipeline.prepare_for_inference`) and boxes stay in their coordinates.
        ``score_threshold`` drops detections below it before the mask head runs (masks are only
        computed for what is returned; the rest is unchanged). ``windows``: the real pixels of
        zero-padded images (:meth:`preprocess`)."""
        batch, sizes = self.preprocess(images, resize=resize, windows=windows)
        feats = self.backbone(batch)
        proposals, _ = self.rpn(feats, tuple(batch.shape[-2:]), sizes)
        results = self.roi_heads.detect(feats, proposals, sizes, score_threshold=score_threshold)
        if resize:
            for r, s, o in zip(results, sizes, original_sizes):
                r["boxes"] = rescale_boxes(r["boxes"], s, o)
        return results


def build_model(config: Config) -> MaskRCNN:
    """Construct an untrained model for ``config`` (weights are loaded separately, see :mod:`maskrcnn.weights`)."""
    c = config
    v2 = c.architecture == "v2"
    eps = 1e-5 if c.frozen_bn_eps is None else c.frozen_bn_eps
    backbone = BackboneWithFPN(c.backbone, c.fpn_channels, v2=v2, in_channels=c.image_channel_count,
                               width=c.backbone_width, frozen_bn_eps=eps, trainable_bn=c.train_bn)
    backbone.body.gradient_checkpointing = c.gradient_checkpointing
    anchors = AnchorGenerator(c.rpn_anchor_scales, c.rpn_anchor_ratios)
    rpn = RegionProposalNetwork(
        RPNHead(c.fpn_channels, anchors.num_anchors_per_location, conv_depth=2 if v2 else 1), anchors,
        fg_iou=c.rpn_fg_iou_threshold, bg_iou=c.rpn_bg_iou_threshold,
        batch_size_per_image=c.rpn_train_anchors_per_image, positive_fraction=c.rpn_positive_fraction,
        pre_nms_top_n={"training": c.pre_nms_limit_training, "testing": c.pre_nms_limit_inference},
        post_nms_top_n={"training": c.post_nms_rois_training, "testing": c.post_nms_rois_inference},
        nms_thresh=c.rpn_nms_threshold, weights=c.rpn_bbox_weights, loss_weights=c.loss_weights)
    if v2:
        box_head: nn.Module = ConvFCHead(c.fpn_channels, c.pool_size, c.box_head_dim)
    else:
        box_head = TwoMLPHead(c.fpn_channels * c.pool_size ** 2, c.box_head_dim)
    mask_head = MaskHead(c.fpn_channels, c.mask_head_channels, c.mask_head_convs, norm=v2)
    # built after the mask head: parameter initialisation draws from the RNG in this order
    box_predictor = BoxPredictor(
        c.box_head_dim, c.num_classes, bbox_weights=c.bbox_weights, score_thresh=c.detection_min_confidence,
        nms_thresh=c.detection_nms_threshold, detections_per_img=c.detection_max_instances,
        class_weights=c.class_loss_weights, loss_weights=c.loss_weights)
    mask_predictor = MaskPredictor(mask_head.out_channels, c.mask_head_channels, c.num_classes, mini_masks=c.use_mini_mask,
                                   class_weights=c.class_loss_weights, loss_weights=c.loss_weights)
    roi_heads = RoIHeads(
        box_head, box_predictor, mask_head, mask_predictor,
        pool_size=c.pool_size, mask_pool_size=c.mask_pool_size, sampling_ratio=c.roi_sampling_ratio,
        fg_iou=c.roi_fg_iou_threshold, batch_size_per_image=c.train_rois_per_image,
        positive_fraction=c.roi_positive_ratio)
    return MaskRCNN(c, backbone, rpn, roi_heads)

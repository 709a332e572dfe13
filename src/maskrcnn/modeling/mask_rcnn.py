"""The Mask R-CNN meta-architecture and its constructor from a :class:`~maskrcnn.config.Config`.

``MaskRCNN`` composes: backbone (ResNet or timm body + FPN) -> RPN -> RoI heads (box, mask). See
``docs/design.md`` for the train/eval contracts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import Config
from .anchors import AnchorGenerator
from .backbone import BackboneWithFPN
from .box_head import BoxPredictor, ConvFCHead, TwoMLPHead
from .mask_head import TARGET_FRAME_SHIFT, MaskHead, MaskPredictor
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork, RPNHead
from ..structures import ImageBatch
from .transform import InputTransform

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

    ``self.transform`` (:class:`~maskrcnn.modeling.transform.InputTransform`) prepares the images
    in both modes (normalise; resize at inference; pad into one batch) and maps boxes back.
    """

    def __init__(self, config: Config, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = InputTransform(config)

    # ------------------------------------------------------------------ input
    def preprocess(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> ImageBatch:
        """The network's :class:`~maskrcnn.structures.ImageBatch` of ``images`` (see :attr:`transform`).

        With ``targets`` (training) the images come resized by the data pipeline and are only
        normalised (with each target's ``window``) and padded; without, they are resized per
        ``Config.image_resize_mode``.
        """
        if targets is None:
            return self.transform(images, resize=True)
        return self.transform(images, resize=False, windows=[t.get("window") for t in targets],
                              original_sizes=[tuple(t["orig_size"]) if "orig_size" in t else tuple(i.shape[-2:])
                                              for t, i in zip(targets, images)])

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):  # type: ignore[no-untyped-def]
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            batch = self.preprocess(images, targets)
            feats = self.backbone(batch.tensor)
            proposals, rpn_losses = self.rpn(feats, batch.padded_size, batch.image_sizes, targets)
            _, head_losses = self.roi_heads(feats, proposals, batch.image_sizes, targets)
            return {**rpn_losses, **head_losses}
        return self.detect(images)

    @torch.no_grad()
    def detect(self, images: list[Tensor], score_threshold: float | None = None,
               transform: InputTransform | None = None) -> list[dict[str, Tensor]]:
        """Detect on ``[C, H, W]`` images in [0, 1] at their original size; boxes in original pixels.

        ``score_threshold`` drops detections below it before the mask head runs (masks are only
        computed for what is returned; the rest is unchanged). ``transform``: another input
        transform than :attr:`transform` (e.g. ``pad64`` for a ``crop``-trained model, see
        :func:`~maskrcnn.modeling.transform.check_inference_mode`).
        """
        transform = self.transform if transform is None else transform
        batch = transform(images, resize=True)
        return transform.postprocess(self.detect_batch(batch, score_threshold), batch)

    @torch.no_grad()
    def detect_batch(self, batch: ImageBatch, score_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Detect on a prepared :class:`~maskrcnn.structures.ImageBatch`; boxes in the batch's pixels
        (map them back with ``transform.postprocess``). With ``Config.tta_views`` / ``tta_scales``,
        fused over the flipped, rotated and rescaled views too (:mod:`.tta`)."""
        if self.config.tta_views or self.config.tta_scales:
            from .tta import detect_with_views

            return detect_with_views(self, batch, list(self.config.tta_views), score_threshold, list(self.config.tta_scales))
        feats, proposals = self.propose(batch.tensor, batch.image_sizes)
        return self.roi_heads.detect(feats, proposals, batch.image_sizes, score_threshold=score_threshold)

    def propose(self, tensor: Tensor, image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features ``[P2..P6]`` of a padded batch ``tensor [B, C, H, W]`` and the RPN's proposals
        per image (``[P_i, 4]`` xyxy pixels, clipped to ``image_sizes``)."""
        feats = self.backbone(tensor)
        proposals, _ = self.rpn(feats, (int(tensor.shape[-2]), int(tensor.shape[-1])), image_sizes)
        return feats, proposals


def build_model(config: Config, *, pretrained_backbone: bool = False) -> MaskRCNN:
    """Construct an untrained model for ``config`` (weights are loaded separately, see :mod:`maskrcnn.weights`).

    ``pretrained_backbone``: load ``Config.timm_pretrained`` (ImageNet weights of a timm body) when
    set; the trainer asks for it when a run starts from scratch.
    """
    c = config
    if c.architecture == "matterport":  # Matterport's Keras network, for its .h5 weights (inference only)
        from .matterport import MatterportMaskRCNN

        return MatterportMaskRCNN(c)  # type: ignore[return-value]
    v2 = c.architecture == "v2"
    backbone: nn.Module
    if c.backbone.startswith("timm:"):
        from .timm_backbone import TimmBackboneWithFPN

        backbone = TimmBackboneWithFPN(c.backbone[len("timm:"):], c.fpn_channels, v2=v2, in_channels=c.image_channel_count,
                                       gradient_checkpointing=c.gradient_checkpointing)
        if pretrained_backbone and c.timm_pretrained:
            backbone.load_pretrained(c.timm_pretrained)
    else:
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
                                   class_weights=c.class_loss_weights, loss_weights=c.loss_weights,
                                   loss=c.mask_loss, dice_weight=c.mask_dice_weight)
    roi_heads = RoIHeads(
        box_head, box_predictor, mask_head, mask_predictor,
        pool_size=c.pool_size, mask_pool_size=c.mask_pool_size, sampling_ratio=c.roi_sampling_ratio,
        fg_iou=c.roi_fg_iou_threshold, batch_size_per_image=c.train_rois_per_image,
        positive_fraction=c.roi_positive_ratio,
        mask_frame_shift=TARGET_FRAME_SHIFT if c.mask_paste == "subpixel" else 0.0)
    return MaskRCNN(c, backbone, rpn, roi_heads)

"""The network: backbone, RPN, RoI heads and the Mask R-CNN meta-architecture."""

from .mask_rcnn import MaskRCNN, build_model

__all__ = ["MaskRCNN", "build_model"]

"""Matterport's Keras Mask R-CNN reproduced for inference (``Config.architecture: matterport``).

Modules: ``ops`` (TF "same" max-pool, ``tf.image.crop_and_resize``, the level rule, anchors,
box deltas and clipping, scikit-image's resize), ``network`` (the layers under their Keras
names), ``detection`` (proposals, detection step, boxes and masks back to the image), ``model``
(:class:`MatterportMaskRCNN`, the predictor's model). The ``.h5`` reader is
:mod:`maskrcnn.weights.h5`.
"""

from .model import TRAINING_UNSUPPORTED, MatterportMaskRCNN, net_shape
from .network import MatterportLayers, NetShape

__all__ = ["MatterportMaskRCNN", "MatterportLayers", "NetShape", "net_shape", "TRAINING_UNSUPPORTED"]

"""Synthetic datasets, generated deterministically from a seed (nothing is downloaded).

* :class:`ShapesDataset` (:mod:`.shapes`): Matterport's squares, circles and triangles, the data of
  ``maskrcnn demo`` and of ``maskrcnn train --data shapes:N``.
* :class:`SyntheticInstances` (:mod:`.instances`): many instances of COCO-like sizes per image, what
  ``maskrcnn plan`` trains on when it measures memory.
* :func:`synthetic_coco` (:mod:`.coco`): a COCO ground-truth dict with noisy predictions for it,
  for the metrics' tests and ``benchmarks/eval_speed.py``.
"""

from .coco import synthetic_coco
from .instances import SyntheticInstances
from .shapes import SHAPE_CLASSES, ShapesDataset, draw_shape, random_shapes

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "SyntheticInstances", "draw_shape", "random_shapes", "synthetic_coco"]

"""Synthetic instance data for measurements and tests: many instances of many sizes per image.

:class:`SyntheticInstances` is what ``maskrcnn plan`` trains on when it measures memory
(:mod:`maskrcnn.planning.measure`): images of a chosen size with a chosen number of instance
masks, COCO-like in their sizes. The other synthetic data are beside it in
:mod:`maskrcnn.data.synthetic`.
"""

from __future__ import annotations

import math

import numpy as np

from ..dataset import Dataset

__all__ = ["SyntheticInstances", "filled_ellipse"]


def filled_ellipse(rows: np.ndarray, cols: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Whether each pixel (``rows``, ``cols``: integer grids, pixel centres at +0.5) lies in the
    axis-aligned ellipse of centre ``(cy, cx)`` and radii ``(ry, rx)`` in pixel-edge coordinates."""
    return ((rows + 0.5 - cy) / ry) ** 2 + ((cols + 0.5 - cx) / rx) ** 2 <= 1.0


class SyntheticInstances(Dataset):
    """``count`` images of ``height x width`` with ``instances`` random instance masks each.

    Instances are filled ellipses and rectangles with sides log-uniform between 8 px and 40 % of
    the short side (COCO-like: many small objects, a few large ones), placed anywhere (they may
    overlap and be cut by the border), with classes ``1..num_classes-1``. The image is noise plus
    the instances in random colours. Image ``i`` is a function of ``(seed, i)``.
    """

    def __init__(self, count: int, height: int, width: int, instances: int, num_classes: int,
                 channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.height, self.width, self.instances = int(height), int(width), int(instances)
        self.channels, self.seed = int(channels), int(seed)
        for i in range(1, num_classes):
            self.add_class("synthetic", i, f"class{i}")
        for i in range(int(count)):
            self.add_image("synthetic", image_id=i, path=None, height=self.height, width=self.width)
        self.prepare()

    def image_reference(self, image_id: int) -> str:
        return f"synthetic:{image_id}"

    def _spec(self, image_id: int) -> tuple[np.random.Generator, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(image_id)])
        h, w, n = self.height, self.width, self.instances
        lo, hi = math.log(8), math.log(max(9.0, 0.4 * min(h, w)))
        sides = np.exp(rng.uniform(lo, hi, size=(n, 2)))
        cy = rng.uniform(0, h, size=n)
        cx = rng.uniform(0, w, size=n)
        kind = rng.integers(0, 2, size=n)
        cls = rng.integers(1, max(2, self.num_classes), size=n)
        spec = np.stack([cy, cx, sides[:, 0], sides[:, 1], kind, cls], 1)
        return rng, spec

    def load_image(self, image_id: int) -> np.ndarray:
        rng, spec = self._spec(image_id)
        image = rng.integers(0, 256, size=(self.height, self.width, self.channels), dtype=np.uint8)
        masks, _ = self.load_mask(image_id)
        colours = rng.integers(0, 256, size=(len(spec), self.channels), dtype=np.uint8)
        for i in range(masks.shape[2]):
            image[masks[:, :, i]] = colours[i]
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        _, spec = self._spec(image_id)
        h, w = self.height, self.width
        masks = np.zeros((h, w, len(spec)), dtype=bool)
        for i, (cy, cx, sh, sw, kind, _) in enumerate(spec):
            y0, y1 = max(0, int(cy - sh / 2)), min(h, int(math.ceil(cy + sh / 2)))
            x0, x1 = max(0, int(cx - sw / 2)), min(w, int(math.ceil(cx + sw / 2)))
            if y1 <= y0 or x1 <= x0:
                continue
            if kind == 0:
                masks[y0:y1, x0:x1, i] = True
            else:
                r, c = np.mgrid[y0:y1, x0:x1]
                masks[y0:y1, x0:x1, i] = filled_ellipse(r, c, cy, cx, sh / 2, sw / 2)
        return masks, spec[:, 5].astype(np.int32)


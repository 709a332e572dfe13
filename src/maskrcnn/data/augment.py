"""Training augmentation applied to an image, its instance masks and boxes together.

A :class:`Sample` holds the image ``[H, W, C]`` (uint8, uint16 or float in ``[0, 1]``), the
instance masks ``[N, H, W]`` uint8 (0/1), their labels ``[N]``, an optional ignore mask
``[H, W]`` bool and the window of real (non-padding) pixels. Boxes are never stored: the
:attr:`Sample.boxes` property is always :func:`boxes_from_masks` of the current masks, so after
every geometric transform the boxes are the masks' boxes by construction.

Every transform returns a new :class:`Sample` and leaves its input untouched (it may share
memory with it). Geometric transforms (flips, 90-degree rotations, rescale, crop) move image,
masks, ignore mask and window together; photometric ones (brightness/contrast, blur) change only
the image inside the window, so zero padding stays zero.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample is reproduced
exactly from the generator's seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .resize import resample_image, resample_masks

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config

__all__ = [
    "Sample",
    "Augmentation",
    "boxes_from_masks",
    "hflip",
    "vflip",
    "rot90",
    "rescale",
    "crop",
    "random_crop",
    "adjust_brightness_contrast",
    "gaussian_blur",
    "build_augmentation",
    "BLUR_SIGMA_RANGE",
]

#: Range of the Gaussian blur's sigma (pixels), drawn uniformly when a blur is applied.
BLUR_SIGMA_RANGE = (0.5, 2.0)

Window = tuple[int, int, int, int]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``[N, 4]`` float32 xyxy of masks ``[N, H, W]``; ``x2`` = last column + 1.

    An empty mask gets ``(0, 0, 0, 0)``.
    """
    masks = np.asarray(masks)
    n = masks.shape[0]
    out = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return out
    rows = masks.any(axis=2)  # [N, H]
    cols = masks.any(axis=1)  # [N, W]
    h, w = rows.shape[1], cols.shape[1]
    nonempty = rows.any(axis=1)
    out[:, 0] = cols.argmax(axis=1)
    out[:, 1] = rows.argmax(axis=1)
    out[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    out[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    out[~nonempty] = 0
    return out


@dataclass(frozen=True)
class Sample:
    """One training sample in image coordinates.

    Attributes:
        image: ``[H, W, C]`` uint8 / uint16, or float in ``[0, 1]``.
        masks: ``[N, H, W]`` uint8, 0/1.
        labels: ``[N]`` int64 class ids.
        ignore: optional ``[H, W]`` bool (crowd regions).
        window: ``(y1, x1, y2, x2)`` of real pixels; ``None`` means the whole image.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray | None = None
    window: Window | None = None

    @property
    def boxes(self) -> np.ndarray:
        """``[N, 4]`` float32 xyxy, recomputed from :attr:`masks`."""
        return boxes_from_masks(self.masks)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def full_window(self) -> Window:
        """The window, or the whole image when it is ``None``."""
        h, w = self.size
        return self.window if self.window is not None else (0, 0, h, w)


# ---------------------------------------------------------------------------- geometric


def hflip(s: Sample) -> Sample:
    """Mirror left-right."""
    w = s.size[1]
    y1, x1, y2, x2 = s.full_window()
    return Sample(
        s.image[:, ::-1],
        s.masks[:, :, ::-1],
        s.labels,
        None if s.ignore is None else s.ignore[:, ::-1],
        None if s.window is None else (y1, w - x2, y2, w - x1),
    )


def vflip(s: Sample) -> Sample:
    """Mirror top-bottom."""
    h = s.size[0]
    y1, x1, y2, x2 = s.full_window()
    return Sample(
        s.image[::-1],
        s.masks[:, ::-1],
        s.labels,
        None if s.ignore is None else s.ignore[::-1],
        None if s.window is None else (h - y2, x1, h - y1, x2),
    )


def rot90(s: Sample, k: int) -> Sample:
    """Rotate by ``k * 90`` degrees counter-clockwise (``np.rot90``); ``[H, W]`` becomes ``[W, H]`` for odd k."""
    k %= 4
    if k == 0:
        return s
    window = s.window
    if window is not None:
        h, w = s.size
        for _ in range(k):  # one CCW turn: old (r, c) -> (w - 1 - c, r)
            y1, x1, y2, x2 = window
            window = (w - x2, y1, w - x1, y2)
            h, w = w, h
    return Sample(
        np.rot90(s.image, k, axes=(0, 1)),
        np.rot90(s.masks, k, axes=(1, 2)),
        s.labels,
        None if s.ignore is None else np.rot90(s.ignore, k, axes=(0, 1)),
        window,
    )


def _to_float(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Image as float32 in [0, 1] and the factor that maps it back to its dtype's range."""
    if np.issubdtype(image.dtype, np.integer):
        top = float(np.iinfo(image.dtype).max)
        return image.astype(np.float32) / top, top
    return image.astype(np.float32, copy=False), 1.0


def _from_float(image: np.ndarray, dtype: np.dtype, top: float) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return np.clip(np.rint(image * top), 0, top).astype(dtype)
    return image.astype(dtype, copy=False)


def rescale(s: Sample, factor: float) -> Sample:
    """Resize by ``factor`` to ``round(side * factor)``: image bilinear, masks by ``resample_masks``.

    Instances that vanish (empty after resampling) are dropped with their labels.
    """
    h, w = s.size
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return s
    img, top = _to_float(s.image)
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    out = resample_image(t, size).permute(1, 2, 0).numpy()
    masks = resample_masks(s.masks, size)
    ignore = None if s.ignore is None else resample_masks(s.ignore[None].astype(np.uint8), size)[0].astype(bool)
    window = s.window
    if window is not None:
        fy, fx = size[0] / h, size[1] / w
        y1, x1, y2, x2 = window
        window = (round(y1 * fy), round(x1 * fx), round(y2 * fy), round(x2 * fx))
    keep = masks.any(axis=(1, 2))
    return Sample(_from_float(out, s.image.dtype, top), masks[keep], s.labels[keep], ignore, window)


def crop(s: Sample, y: int, x: int, h: int, w: int, min_area: int = 1) -> Sample:
    """Keep rows ``y:y+h`` and columns ``x:x+w``.

    Instances cut by the crop keep their visible part; instances with fewer than ``min_area``
    visible pixels are dropped together with their labels.
    """
    masks = s.masks[:, y:y + h, x:x + w]
    area = masks.sum(axis=(1, 2), dtype=np.int64)
    keep = area >= max(1, int(min_area))
    window = s.window
    if window is not None:
        hh, ww = min(h, s.size[0] - y), min(w, s.size[1] - x)
        wy1, wx1, wy2, wx2 = window
        ny1, nx1 = min(max(wy1 - y, 0), hh), min(max(wx1 - x, 0), ww)
        ny2, nx2 = max(min(wy2 - y, hh), ny1), max(min(wx2 - x, ww), nx1)
        window = (ny1, nx1, ny2, nx2)
    return Sample(
        s.image[y:y + h, x:x + w],
        masks[keep],
        s.labels[keep],
        None if s.ignore is None else s.ignore[y:y + h, x:x + w],
        window,
    )


def random_crop(s: Sample, size: tuple[int, int] | list[int], rng: np.random.Generator, min_area: int = 1) -> Sample:
    """A uniformly placed crop of ``size = (h, w)`` (clamped to the image size); see :func:`crop`."""
    H, W = s.size
    ch, cw = min(int(size[0]), H), min(int(size[1]), W)
    y = int(rng.integers(0, H - ch + 1))
    x = int(rng.integers(0, W - cw + 1))
    return crop(s, y, x, ch, cw, min_area)


# ---------------------------------------------------------------------------- photometric


def _map_window(s: Sample, fn) -> Sample:
    """Apply ``fn(float [h, w, C] in [0, 1]) -> same`` to the window's pixels only."""
    y1, x1, y2, x2 = s.full_window()
    if y2 <= y1 or x2 <= x1:
        return s
    img, top = _to_float(s.image)
    out = np.array(img, dtype=np.float32, copy=True)
    out[y1:y2, x1:x2] = np.clip(fn(out[y1:y2, x1:x2]), 0.0, 1.0)
    return replace(s, image=_from_float(out, s.image.dtype, top))


def adjust_brightness_contrast(s: Sample, brightness: float = 1.0, contrast: float = 1.0) -> Sample:
    """``x * brightness``, then ``mean + contrast * (x - mean)`` (mean over the window and all
    channels), clipped to ``[0, 1]`` (integer images are scaled by their dtype's maximum)."""

    def fn(x: np.ndarray) -> np.ndarray:
        x = x * np.float32(brightness)
        if contrast != 1.0:
            m = np.float32(np.clip(x, 0, 1).mean())
            x = m + np.float32(contrast) * (np.clip(x, 0, 1) - m)
        return x

    return _map_window(s, fn)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(s: Sample, sigma: float) -> Sample:
    """Separable Gaussian blur of the window (edge pixels replicated; kernel radius ceil(3 sigma)).

    ``sigma < 0.01`` px leaves the image unchanged.
    """
    if sigma < 0.01:
        return s
    k = _gaussian_kernel(float(sigma))
    r = (len(k) - 1) // 2

    def fn(x: np.ndarray) -> np.ndarray:
        c = x.shape[2]
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]  # [1, C, h, w]
        t = F.pad(t, (r, r, r, r), mode="replicate")
        t = F.conv2d(t, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        t = F.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return t[0].permute(1, 2, 0).numpy()

    return _map_window(s, fn)


# ---------------------------------------------------------------------------- from the config


@dataclass(frozen=True)
class Augmentation:
    """The augmentations selected by the ``aug_*`` fields of :class:`~maskrcnn.config.Config`.

    The training pipeline applies it in three stages around the resize:

    1. :meth:`geometric` before resizing: horizontal flip (``hflip`` probability), vertical flip
       (``vflip``), a random 90/180/270 degree rotation (``rot90`` probability).
    2. :meth:`scale_factor`: the scale jitter, ``U(lo, hi)``, which the pipeline multiplies into
       the resize scale (one resampling instead of two; a plain rescale before ``minmax`` or
       ``square`` would be undone by the resize).
    3. :meth:`after_resize`: random crop of ``crop = (h, w)`` (instances with fewer than
       ``min_area`` visible pixels dropped), brightness ``U(1 - b, 1 + b)`` and contrast
       ``U(1 - c, 1 + c)`` factors, Gaussian blur (``blur`` probability, sigma
       ``U(*BLUR_SIGMA_RANGE)``).

    Calling the object applies all three in order, the jitter as :func:`rescale`.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rot90: float = 0.0
    scale_jitter: tuple[float, float] | None = None
    crop: tuple[int, int] | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    blur: float = 0.0
    min_area: int = 1

    def geometric(self, s: Sample, rng: np.random.Generator) -> Sample:
        """Flips and 90-degree rotations."""
        if self.hflip > 0 and rng.random() < self.hflip:
            s = hflip(s)
        if self.vflip > 0 and rng.random() < self.vflip:
            s = vflip(s)
        if self.rot90 > 0 and rng.random() < self.rot90:
            s = rot90(s, int(rng.integers(1, 4)))
        return s

    def scale_factor(self, rng: np.random.Generator) -> float:
        """The scale jitter factor (1.0 when disabled)."""
        if self.scale_jitter is None:
            return 1.0
        lo, hi = self.scale_jitter
        return float(rng.uniform(lo, hi)) if hi > lo else float(lo)

    def after_resize(self, s: Sample, rng: np.random.Generator) -> Sample:
        """Random crop, then brightness/contrast and blur (inside the window)."""
        if self.crop is not None:
            s = random_crop(s, self.crop, rng, self.min_area)
        if self.brightness > 0 or self.contrast > 0:
            b = float(rng.uniform(1 - self.brightness, 1 + self.brightness)) if self.brightness > 0 else 1.0
            c = float(rng.uniform(1 - self.contrast, 1 + self.contrast)) if self.contrast > 0 else 1.0
            s = adjust_brightness_contrast(s, max(b, 0.0), max(c, 0.0))
        if self.blur > 0 and rng.random() < self.blur:
            s = gaussian_blur(s, float(rng.uniform(*BLUR_SIGMA_RANGE)))
        return s

    def __call__(self, s: Sample, rng: np.random.Generator) -> Sample:
        """All stages on one sample, without a resize (the jitter applied by :func:`rescale`)."""
        s = self.geometric(s, rng)
        f = self.scale_factor(rng)
        if f != 1.0:
            s = rescale(s, f)
        return self.after_resize(s, rng)

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.rot90 or self.scale_jitter or self.crop
                    or self.brightness or self.contrast or self.blur)


def build_augmentation(config: "Config") -> Augmentation:
    """The :class:`Augmentation` described by ``config.aug_*``."""
    return Augmentation(
        hflip=float(config.aug_hflip),
        vflip=float(config.aug_vflip),
        rot90=float(config.aug_rot90),
        scale_jitter=None if config.aug_scale_jitter is None else (float(config.aug_scale_jitter[0]), float(config.aug_scale_jitter[1])),
        crop=None if config.aug_crop is None else (int(config.aug_crop[0]), int(config.aug_crop[1])),
        brightness=float(config.aug_brightness),
        contrast=float(config.aug_contrast),
        blur=float(config.aug_blur),
        min_area=int(config.aug_min_area),
    )

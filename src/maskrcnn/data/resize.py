"""Resize geometry (the one rule of every resize mode) and image/mask resampling.

:func:`plan_resize` computes a :class:`ResizeInfo` from an image size alone (original size, scale,
window of real pixels, padding, crop); it is the only place where the modes' rules are written.
The model's input transform (:class:`maskrcnn.modeling.transform.InputTransform`) uses it at
inference and the training pipeline uses it (through :func:`resize_image`) for images and masks
together, so both resize alike. The geometry is applied to images with
:meth:`ResizeInfo.apply_image` (torch ops only), to masks with :meth:`ResizeInfo.resize_masks`,
and boxes / masks in the output are mapped back to the original image with
:meth:`ResizeInfo.boxes_to_original` (tensor or numpy) / :meth:`ResizeInfo.masks_to_original`.

Every side of a resized image is at least 1 pixel (an image of 1 x 2000 pixels stays 1 pixel
high under ``minmax``). A mode that would enlarge a side past :data:`MAX_RESIZED_SIDE` (Matterport's
``pad64`` / ``crop`` scale the short side up to ``image_min_dim`` without a cap, so a 1 x 2000
image would become 800 x 1,600,000) is a :class:`~maskrcnn.errors.DataError` naming the image.

Modes (``Config.image_resize_mode``):

* ``minmax`` (torchvision): ``scale = min(min_dim / short, max_dim / long)``; output sides are
  ``max(1, int(side * scale))`` (truncation), bilinear with ``align_corners=False`` and torch's
  ``recompute_scale_factor=True`` semantics (the kernel uses ``in / out`` per axis). Bit-identical
  to ``GeneralizedRCNNTransform``'s resize. No padding here: batches are padded to
  ``size_divisibility`` later.
* ``none``: untouched.
* ``square``: ``scale = max(1, min_dim / short)``, raised to ``min_scale``; if
  ``round(long * scale) > max_dim`` then ``scale = max_dim / long``. Resized to
  ``round(side * scale)`` and zero-padded, centred, to ``max_dim x max_dim``.
* ``pad64``: scale as above (up only, no max_dim cap), then zero-padded, centred, to the next
  multiple of 64 per side.
* ``crop``: scale as above, then a random ``min_dim x min_dim`` crop (training only). Only the
  crop is computed: its pixels are interpolated from the source region they sample (the same
  bilinear sample points as resizing the whole image and cropping; equal up to float rounding),
  and masks that do not reach that region are not resampled at all. A 256 px crop of an
  upscaled 696x520 microscopy image with 375 nuclei costs ~10 ms instead of ~0.25 s.

Image interpolation is bilinear (``align_corners=False``, no antialias) on float images. **Masks**
are resized by :func:`resample_masks`: the same bilinear interpolation on 0/1 floats, then
``>= 0.5``. A resized mask pixel is therefore on exactly when the resized image of the mask's
indicator is ``>= 0.5`` at that pixel: masks stay on the image content. It is used everywhere in
the data pipeline (resize, scale jitter, mini-masks, the latter antialiased when shrinking).

Coordinates: boxes are ``(x1, y1, x2, y2)`` float pixels with exclusive-edge x2/y2 (pixel ``c``
covers ``[c, c + 1)``); windows and crops are Matterport's ``(y1, x1, y2, x2)`` /
``(y, x, h, w)`` integer pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

__all__ = [
    "RESIZE_MODES",
    "MAX_RESIZED_SIDE",
    "ResizeInfo",
    "padded_size",
    "plan_resize",
    "resize_image",
    "resample_masks",
    "resample_image",
    "compute_scale",
    "unscale_boxes",
]

RESIZE_MODES = ("minmax", "none", "square", "pad64", "crop")

#: Largest side (pixels) a resize may enlarge an image to (see the module doc).
MAX_RESIZED_SIDE = 16384

MaskT = TypeVar("MaskT", np.ndarray, torch.Tensor)
BoxT = TypeVar("BoxT", np.ndarray, torch.Tensor)

#: Largest float buffer (bytes) used at once when resampling a stack of masks.
_MASK_CHUNK_BYTES = 64 * 2**20


def resample_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, no antialias) of a float ``[C, H, W]`` image.

    Identical to ``F.interpolate(scale_factor=s, recompute_scale_factor=True)`` when
    ``size = (int(H * s), int(W * s))``. Returns the input itself when the size is unchanged.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resample_masks(masks: MaskT, size: tuple[int, int], antialias: bool = False) -> MaskT:
    """Resize binary masks ``[N, H, W]`` to ``[N, *size]`` uint8 (0/1); numpy in, numpy out.

    Bilinear (``align_corners=False``, as :func:`resample_image`) on 0/1 floats, then ``>= 0.5``.
    ``antialias=True`` averages over the covered area when shrinking (used for mini-masks).
    Processed in chunks so that no more than ~64 MB of floats exist at once.
    """
    is_numpy = isinstance(masks, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(masks)) if is_numpy else masks
    n, h, w = t.shape
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        out = (t != 0).to(torch.uint8)
    elif n == 0:
        out = torch.zeros((0, oh, ow), dtype=torch.uint8)
    else:
        antialias = antialias and (oh < h or ow < w)
        chunk = max(1, _MASK_CHUNK_BYTES // (4 * max(h * w, oh * ow)))
        parts = []
        for i in range(0, n, chunk):
            part = (t[i:i + chunk] != 0).to(torch.float32)[:, None]
            part = F.interpolate(part, size=(oh, ow), mode="bilinear", align_corners=False, antialias=antialias)
            parts.append((part[:, 0] >= 0.5).to(torch.uint8))
        out = torch.cat(parts)
    return out.numpy() if is_numpy else out


def compute_scale(
    height: int,
    width: int,
    mode: str,
    min_dim: int,
    max_dim: int,
    min_scale: float = 0.0,
    jitter: float = 1.0,
) -> tuple[float, tuple[int, int]]:
    """The scale factor and the scaled size ``(h, w)`` (before padding or cropping) of a mode.

    ``jitter`` multiplies the mode's scale (training scale augmentation); the mode's limits
    still hold afterwards (square: the long side fits ``max_dim``; crop: the short side is at
    least ``min_dim`` so that the crop fits).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    short, long = min(height, width), max(height, width)
    if mode == "minmax":
        scale = min(min_dim / short, max_dim / long) * jitter
        return scale, (max(1, int(height * scale)), max(1, int(width * scale)))
    if mode == "none":
        scale = float(jitter)
    else:
        scale = max(1.0, min_dim / short) if min_dim else 1.0
        if min_scale and scale < min_scale:
            scale = float(min_scale)
        scale *= jitter
        if mode == "square" and max_dim and round(long * scale) > max_dim:
            scale = max_dim / long
        if mode == "crop" and round(short * scale) < min_dim:
            scale = min_dim / short
    if scale == 1.0:
        return 1.0, (height, width)
    return scale, (max(1, round(height * scale)), max(1, round(width * scale)))


@dataclass(frozen=True)
class ResizeInfo:
    """Geometry of one resize: original ``(H, W)`` -> scaled ``(h, w)`` -> padded/cropped output.

    Attributes:
        mode: the resize mode.
        original_size: ``(H, W)`` of the input image.
        scale: the nominal scale factor (Matterport's ``scale``); the exact per-axis factors are
            :attr:`scale_yx` (sizes are rounded or truncated).
        scaled_size: ``(h, w)`` after scaling, before padding or cropping.
        image_size: ``(H', W')`` of the output image.
        window: ``(y1, x1, y2, x2)`` of the real (non-padding) pixels in the output.
        padding: ``((top, bottom), (left, right))`` zero padding added after scaling.
        crop: ``(y, x, h, w)`` taken from the scaled image (``crop`` mode), else ``None``.
    """

    mode: str
    original_size: tuple[int, int]
    scale: float
    scaled_size: tuple[int, int]
    image_size: tuple[int, int]
    window: tuple[int, int, int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    crop: tuple[int, int, int, int] | None = None

    # ------------------------------------------------------------------ derived geometry
    @property
    def scale_yx(self) -> tuple[float, float]:
        """Exact per-axis factors ``(scaled_h / H, scaled_w / W)``."""
        return (self.scaled_size[0] / self.original_size[0], self.scaled_size[1] / self.original_size[1])

    @property
    def offset_yx(self) -> tuple[int, int]:
        """Output pixel = scaled pixel + offset (``padding`` minus ``crop`` origin)."""
        cy, cx = (self.crop[0], self.crop[1]) if self.crop else (0, 0)
        return self.padding[0][0] - cy, self.padding[1][0] - cx

    # ------------------------------------------------------------------ boxes
    def boxes_to_resized(self, boxes_xyxy: BoxT) -> BoxT:
        """Map ``[N, 4]`` xyxy boxes from the original image into the output image (float32).

        ``x = x_orig * scaled_w / W + offset_x`` (float64 arithmetic); numpy in, numpy out.
        """
        b = _as_tensor(boxes_xyxy).reshape(-1, 4).double()
        sy, sx = self.scale_yx
        oy, ox = self.offset_yx
        out = (b * b.new_tensor([sx, sy, sx, sy]) + b.new_tensor([ox, oy, ox, oy])).float()
        return out if isinstance(boxes_xyxy, torch.Tensor) else out.numpy()

    def boxes_to_original(self, boxes_xyxy: BoxT, clip: bool = True) -> BoxT:
        """Map ``[N, 4]`` xyxy boxes from the output image back to the original (float32).

        ``x_orig = (x - offset_x) * (W / scaled_w)``, the ratio computed in float32 as
        torchvision's ``resize_boxes`` (the same arithmetic for ``minmax``, where the offset is 0);
        with ``clip`` the result is clamped to ``[0, W] x [0, H]`` (boxes reaching into padding
        map outside the image). Torch ops only (the model's postprocess exports); numpy in,
        numpy out.
        """
        b = _as_tensor(boxes_xyxy).reshape(-1, 4).float()
        oy, ox = self.offset_yx
        if oy or ox:
            b = b - b.new_tensor([ox, oy, ox, oy])
        f32 = dict(dtype=torch.float32, device=b.device)
        out = unscale_boxes(b, torch.tensor(self.original_size, **f32), torch.tensor(self.scaled_size, **f32), clip)
        return out if isinstance(boxes_xyxy, torch.Tensor) else out.numpy()

    # ------------------------------------------------------------------ images and masks
    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        """Apply this geometry to another float ``[C, H, W]`` image of the original size."""
        if tuple(image.shape[-2:]) != self.original_size:
            raise ValueError(f"image is {tuple(image.shape[-2:])}, this resize is for {self.original_size}")
        if self.crop is not None and self.scaled_size != self.original_size:
            return _resample_crop(image, self.original_size, self.scaled_size, self.crop)
        return self._place(resample_image(image, self.scaled_size))

    def resize_masks(self, masks: MaskT) -> MaskT:
        """Apply this geometry to masks ``[N, H, W]`` of the original size -> ``[N, H', W']`` uint8.

        numpy in, numpy out; tensor in, tensor out. Resampling by :func:`resample_masks`.
        """
        if tuple(masks.shape[-2:]) != self.original_size:
            raise ValueError(f"masks are {tuple(masks.shape[-2:])}, this resize is for {self.original_size}")
        is_numpy = isinstance(masks, np.ndarray)
        if self.crop is not None and self.scaled_size != self.original_size:
            out = _crop_masks(masks, self.original_size, self.scaled_size, self.crop)
        else:
            t = torch.from_numpy(np.ascontiguousarray(masks)) if is_numpy else masks
            out = self._place(resample_masks(t, self.scaled_size))
        return out.numpy() if is_numpy else out

    def masks_to_original(self, masks: MaskT) -> MaskT:
        """Map masks ``[N, H', W']`` in the output image back to ``[N, H, W]`` uint8.

        The window is cut out (or, for ``crop``, the output is put back at its place in a zero
        scaled image) and resampled to the original size by :func:`resample_masks`.
        """
        is_numpy = isinstance(masks, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(masks)) if is_numpy else masks
        n = t.shape[0]
        sh, sw = self.scaled_size
        oy, ox = self.offset_yx
        scaled = torch.zeros((n, sh, sw), dtype=torch.uint8)
        # scaled pixel (r, c) is output pixel (r + oy, c + ox); copy the overlap.
        r0, c0 = max(0, -oy), max(0, -ox)
        r1, c1 = min(sh, self.image_size[0] - oy), min(sw, self.image_size[1] - ox)
        if r1 > r0 and c1 > c0:
            scaled[:, r0:r1, c0:c1] = (t[:, r0 + oy:r1 + oy, c0 + ox:c1 + ox] != 0).to(torch.uint8)
        out = resample_masks(scaled, self.original_size)
        return out.numpy() if is_numpy else out

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        """Pad or crop a scaled ``[..., h, w]`` tensor into the output frame."""
        if self.crop is not None:
            y, x, h, w = self.crop
            return t[..., y:y + h, x:x + w].contiguous()
        (top, bottom), (left, right) = self.padding
        if top or bottom or left or right:
            return F.pad(t, (left, right, top, bottom))
        return t


def unscale_boxes(boxes: torch.Tensor, original: torch.Tensor, scaled: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Boxes ``[N, 4]`` xyxy of a scaled image back to the original: ``x * (W / scaled_w)`` (the ratio in
    float32, as torchvision's ``resize_boxes``), clamped to ``[0, W] x [0, H]`` with ``clip``.

    ``original`` / ``scaled`` are float32 ``(H, W)`` sizes: ``[2]`` for every box, or ``[N, 2]``
    per box (the exported graph maps a whole batch at once)."""
    ratio = original / scaled
    ratio_h, ratio_w = ratio[..., 0], ratio[..., 1]
    x1, y1, x2, y2 = boxes.unbind(1)
    xs, ys = torch.stack((x1 * ratio_w, x2 * ratio_w), 1), torch.stack((y1 * ratio_h, y2 * ratio_h), 1)
    if clip:
        h = original[..., 0].reshape(-1, 1) if original.dim() > 1 else original[0]
        w = original[..., 1].reshape(-1, 1) if original.dim() > 1 else original[1]
        xs, ys = torch.minimum(xs.clamp(min=0), w), torch.minimum(ys.clamp(min=0), h)
    return torch.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), dim=1)


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor as is; anything else (numpy, lists) as a float64 tensor."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float64))


def _crop_source(original: tuple[int, int], scaled: tuple[int, int], crop: tuple[int, int, int, int]
                 ) -> tuple[tuple[int, int, int, int], tuple[float, float, float, float]]:
    """Source rows/columns ``(r0, r1, c0, c1)`` that the bilinear samples of ``crop`` read, and the
    crop's box ``(x1, y1, x2, y2)`` in that region's coordinates for ``roi_align(aligned=True)``.

    Resizing ``H -> h`` samples output row ``i`` at source row ``(i + 0.5) * H / h - 0.5``
    (``align_corners=False``, clamped at the edges), so crop row ``i`` (scaled row ``y + i``) of
    a crop starting at ``y`` is the RoIAlign sample of bin ``i`` of a box from ``y * H / h`` with
    bins ``H / h`` high, one sample per bin.
    """
    (H, W), (sh, sw), (y, x, h, w) = original, scaled, crop
    ky, kx = H / sh, W / sw
    r0 = max(0, math.floor((y + 0.5) * ky - 0.5))
    r1 = min(H, math.floor((y + h - 0.5) * ky - 0.5) + 2)
    c0 = max(0, math.floor((x + 0.5) * kx - 0.5))
    c1 = min(W, math.floor((x + w - 0.5) * kx - 0.5) + 2)
    box = (x * kx - c0, y * ky - r0, (x + w) * kx - c0, (y + h) * ky - r0)
    return (r0, r1, c0, c1), box


def _resample_crop(t: torch.Tensor, original: tuple[int, int], scaled: tuple[int, int],
                   crop: tuple[int, int, int, int]) -> torch.Tensor:
    """Bilinear resize of float ``[C, H, W]`` to ``scaled``, computed for the ``crop`` window only."""
    (r0, r1, c0, c1), box = _crop_source(original, scaled, crop)
    return _resample_region(t[:, r0:r1, c0:c1].float(), box, crop)


def _resample_region(region: torch.Tensor, box: tuple[float, float, float, float],
                     crop: tuple[int, int, int, int]) -> torch.Tensor:
    """The crop of the bilinear resize, from float ``[C, r1 - r0, c1 - c0]``: the source region
    and ``box`` of :func:`_crop_source` (one RoIAlign sample per output pixel)."""
    from torchvision.ops import roi_align

    boxes = torch.tensor([[0.0, *box]], dtype=region.dtype)
    return roi_align(region[None], boxes, output_size=(crop[2], crop[3]), spatial_scale=1.0, sampling_ratio=1, aligned=True)[0]


def _crop_masks(masks: np.ndarray | torch.Tensor, original: tuple[int, int], scaled: tuple[int, int],
                crop: tuple[int, int, int, int]) -> torch.Tensor:
    """:func:`resample_masks` then crop, computed only for masks that reach the crop's source region.

    ``masks`` ``[N, H, W]`` (numpy, any strides, or a tensor); only the source region is copied."""
    (r0, r1, c0, c1), box = _crop_source(original, scaled, crop)
    region = masks[:, r0:r1, c0:c1]
    region = torch.from_numpy(np.ascontiguousarray(region)) if isinstance(region, np.ndarray) else region
    n = region.shape[0]
    out = torch.zeros((n, crop[2], crop[3]), dtype=torch.uint8)
    if n == 0:
        return out
    region = region != 0
    hit = region.flatten(1).any(1).nonzero().flatten()
    chunk = max(1, _MASK_CHUNK_BYTES // (4 * max((r1 - r0) * (c1 - c0), crop[2] * crop[3])))
    for i in range(0, len(hit), chunk):
        idx = hit[i:i + chunk]
        part = region[idx].to(torch.float32)
        out[idx] = (_resample_region(part, box, crop) >= 0.5).to(torch.uint8)
    return out


def padded_size(mode: str, scaled: tuple[int, int], max_dim: int) -> tuple[int, int]:
    """The ``(H, W)`` a mode pads a scaled image of size ``scaled`` ``(h, w)`` to: ``max_dim`` square
    (``square``), each side rounded up to a multiple of 64 (``pad64``), else ``scaled`` (``crop``'s
    output is its crop, see :func:`plan_resize`)."""
    sh, sw = scaled
    if mode == "square":
        return max_dim, max_dim
    if mode == "pad64":
        return math.ceil(sh / 64) * 64, math.ceil(sw / 64) * 64
    return sh, sw


def plan_resize(
    height: int,
    width: int,
    mode: str,
    min_dim: int,
    max_dim: int,
    min_scale: float = 0.0,
    *,
    jitter: float = 1.0,
    rng: np.random.Generator | None = None,
    name: str = "image",
) -> ResizeInfo:
    """The geometry of resizing an ``height x width`` image per ``mode`` (no pixels touched).

    Args:
        mode: one of :data:`RESIZE_MODES` (see the module docstring for their exact semantics).
        min_dim, max_dim, min_scale: ``Config.image_min_dim``, ``image_max_dim``, ``image_min_scale``.
        jitter: training scale augmentation, multiplies the mode's scale (1.0 = none).
        rng: source of the random crop position; required for ``crop``.
        name: the image's name in the :class:`~maskrcnn.errors.DataError` of a size that cannot
            work (a side enlarged past :data:`MAX_RESIZED_SIDE`).
    """
    h, w = int(height), int(width)
    if h < 1 or w < 1:
        raise DataError(f"{name}: image of {h}x{w} pixels has no pixels; pass an image at least 1x1")
    scale, (sh, sw) = compute_scale(h, w, mode, min_dim, max_dim, min_scale, jitter)
    if max(sh, sw) > MAX_RESIZED_SIDE and max(sh, sw) > max(h, w):
        raise DataError(f"{name}: image_resize_mode={mode} would resize this {h}x{w} image to {sh}x{sw} "
                        f"(scale {scale:.4g}, over the {MAX_RESIZED_SIDE}-pixel side limit); use image_resize_mode "
                        "minmax or square for images of this aspect ratio, or crop the image")
    padding = ((0, 0), (0, 0))
    crop = None
    out_size = padded_size(mode, (sh, sw), max_dim)
    if mode in ("square", "pad64"):
        ph, pw = out_size
        top, left = (ph - sh) // 2, (pw - sw) // 2
        padding = ((top, ph - sh - top), (left, pw - sw - left))
    elif mode == "crop":
        if rng is None:
            raise ValueError("resize mode 'crop' needs rng (a numpy Generator) for the crop position")
        y = int(rng.integers(0, sh - min_dim + 1))
        x = int(rng.integers(0, sw - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        out_size = (min_dim, min_dim)
    if crop is not None:
        window = (0, 0, min_dim, min_dim)
    else:
        window = (padding[0][0], padding[1][0], padding[0][0] + sh, padding[1][0] + sw)
    return ResizeInfo(mode, (h, w), float(scale), (sh, sw), out_size, window, padding, crop)


def resize_image(
    image: torch.Tensor,
    mode: str,
    min_dim: int,
    max_dim: int,
    min_scale: float = 0.0,
    *,
    jitter: float = 1.0,
    rng: np.random.Generator | None = None,
    name: str = "image",
) -> tuple[torch.Tensor, ResizeInfo]:
    """Resize a float ``[C, H, W]`` image per ``mode``; returns ``(image [C, H', W'], ResizeInfo)``.

    :func:`plan_resize` (same arguments) then :meth:`ResizeInfo.apply_image`; values are
    interpolated as they are (e.g. ``[0, 1]``), padding is 0.
    """
    if not torch.is_floating_point(image) or image.dim() != 3:
        raise ValueError(f"resize_image expects a float [C, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
    info = plan_resize(int(image.shape[1]), int(image.shape[2]), mode, min_dim, max_dim, min_scale,
                       jitter=jitter, rng=rng, name=name)
    return info.apply_image(image), info

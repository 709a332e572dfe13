"""Input preparation: normalise, resize (inference), pad into a batch; map boxes back.

Inference with ``image_resize_mode="minmax"`` reproduces torchvision exactly: normalise first,
then ``F.interpolate(scale_factor=min(min_dim/short, max_dim/long), bilinear,
align_corners=False, recompute_scale_factor=True)`` (output side ``int(side * scale)``), then
zero-pad bottom/right to a multiple of ``size_divisibility``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize", "normalize_input", "resize_minmax", "batch_images", "rescale_boxes"]


def normalize(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(image - mean) / std`` per channel; ``image [C, H, W]``, ``mean``/``std`` ``[C]``."""
    return (image - mean[:, None, None]) / std[:, None, None]


#: Smallest per-image standard deviation used by :func:`normalize_input` (a flat channel is not blown up).
MIN_IMAGE_STD = 1e-2


def normalize_input(image: Tensor, mean: Tensor, std: Tensor, mode: str = "fixed", invert_bright: bool = False,
                    window: tuple[int, int, int, int] | None = None) -> Tensor:
    """The network input of one image ``[C, H, W]`` in [0, 1] (``Config.image_normalization``).

    ``invert_bright``: an image whose mean over all pixels and channels is above 0.5 becomes
    ``1 - image`` first (objects bright on a dark background in every image). ``mode="fixed"``:
    ``(x - mean) / std`` with the config's ``[C]`` values; ``"per_image"``: ``(x - m) / max(s, 0.01)``
    with the image's own per-channel mean ``m`` and standard deviation ``s``. "Image" is what the
    network is given: the training crop in ``crop`` mode, the whole image at inference, each tile
    in tiled inference (crop-trained models see the same kind of statistics). Written with tensor
    ops only (no Python branch on values), so tracing and ONNX export keep the rule.

    ``window`` ``(y1, x1, y2, x2)``: the real pixels of an image zero-padded by the ``square`` /
    ``pad64`` resize modes. Statistics and the inversion then use the window only, and padding
    stays what it is without them: 0 after ``per_image`` (the image mean), ``(0 - mean) / std``
    after ``fixed`` (Matterport's convention), so padding never changes the result.
    """
    if window is not None and (mode == "per_image" or invert_bright):
        y1, x1, y2, x2 = (int(v) for v in window)
        if (y1, x1, y2, x2) != (0, 0, image.shape[-2], image.shape[-1]):
            out = torch.zeros_like(image) if mode == "per_image" else normalize(torch.zeros_like(image), mean, std)
            out[:, y1:y2, x1:x2] = normalize_input(image[:, y1:y2, x1:x2], mean, std, mode, invert_bright)
            return out
    if invert_bright:
        image = torch.where(image.mean() > 0.5, 1.0 - image, image)
    if mode == "per_image":
        m = image.mean(dim=(1, 2), keepdim=True)
        s = image.std(dim=(1, 2), keepdim=True, correction=0).clamp_min(MIN_IMAGE_STD)
        return (image - m) / s
    return normalize(image, mean, std)


def resize_minmax(image: Tensor, min_dim: int, max_dim: int) -> Tensor:
    """torchvision's resize of ``[C, H, W]``: short side to ``min_dim`` unless the long side would pass ``max_dim``."""
    h, w = image.shape[-2:]
    scale = min(min_dim / min(h, w), max_dim / max(h, w))
    return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                         align_corners=False)[0]


def batch_images(images: list[Tensor], divisibility: int) -> Tensor:
    """Zero-pad ``[C, H_i, W_i]`` images bottom/right into ``[B, C, H, W]`` with H, W multiples of ``divisibility``."""
    c = images[0].shape[0]
    h = int(math.ceil(max(i.shape[1] for i in images) / divisibility) * divisibility)
    w = int(math.ceil(max(i.shape[2] for i in images) / divisibility) * divisibility)
    batch = images[0].new_zeros((len(images), c, h, w))
    for b, img in zip(batch, images):
        b[:, : img.shape[1], : img.shape[2]].copy_(img)
    return batch


def rescale_boxes(boxes: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """Map ``[N, 4]`` xyxy boxes from the resized to the original image (float32 ratios per axis, as torchvision)."""
    rh = torch.tensor(original[0], dtype=torch.float32, device=boxes.device) / torch.tensor(resized[0], dtype=torch.float32, device=boxes.device)
    rw = torch.tensor(original[1], dtype=torch.float32, device=boxes.device) / torch.tensor(resized[1], dtype=torch.float32, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=1)

"""The model's one input transform: normalise, resize, pad, batch; map results back.

:class:`InputTransform` (``MaskRCNN.transform``) prepares images for the network in every
``Config.image_resize_mode`` and maps detections back to the original pixels. Training, the
predictor, evaluation, tiled detection and export all go through it; the geometry of each mode
is :func:`maskrcnn.data.resize.plan_resize` (the rule the training pipeline also uses to resize
images and masks together). Everything on tensors is torch ops (no numpy), so tracing and ONNX
export keep the rules.

Per image, at inference (``resize=True``):

* ``minmax`` (torchvision, bit-exact with ``GeneralizedRCNNTransform``): normalise, then resize
  bilinearly (``align_corners=False``) to ``max(1, int(side * scale))`` with
  ``scale = min(min_dim / short, max_dim / long)``;
* ``none`` / ``square`` / ``pad64`` (Matterport): resize the ``[0, 1]`` image and zero-pad it
  (Matterport's ``resize_image``), then normalise with the window of real pixels (``mold_image``;
  padding becomes what a zero pixel normalises to, see :func:`normalize_input`);
* ``crop`` is for training only: inference refuses it (:func:`check_inference_mode`).

In training (``resize=False``) the data pipeline has resized the images (with their masks, after
augmentation): they are only normalised (with the window from their targets). Then, in both
cases, the images are zero-padded bottom/right into one ``[B, C, H, W]`` tensor with H and W
multiples of ``size_divisibility`` (an :class:`~maskrcnn.structures.ImageBatch`).
:meth:`InputTransform.postprocess` maps boxes from the batch back to each original image
(:meth:`~maskrcnn.data.resize.ResizeInfo.boxes_to_original`); masks stay probabilities inside
their box (``maskrcnn.inference.paste.paste_masks`` pastes them at the original size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import Config, ConfigError
from ..data.resize import ResizeInfo, plan_resize
from ..structures import ImageBatch

__all__ = ["InputTransform", "check_inference_mode", "normalize", "normalize_input", "batch_images"]


def check_inference_mode(mode: str) -> None:
    """Raise :class:`~maskrcnn.config.ConfigError` when ``mode`` cannot be used to detect.

    ``crop`` takes random crops of the training images; detection needs the whole image, and a
    crop-trained model detects with ``Config.inference_resize_mode`` (``pad64``: its training
    scale, as Matterport's nucleus inference configuration does). That choice is stated in the
    config (validation requires it with ``crop``), never made silently.
    """
    if mode == "crop":
        raise ConfigError("inference_resize_mode=crop: random crops are for training only; to detect or evaluate, "
                          "set inference_resize_mode: pad64 (the training scale on whole images) or square, e.g. "
                          "maskrcnn.load(weights, inference_resize_mode='pad64')")


class InputTransform(nn.Module):
    """Normalise, resize, pad and batch images for the network; map results back (see the module doc).

    Built from a :class:`~maskrcnn.config.Config`: ``detect_resize_mode`` (``inference_resize_mode``,
    else ``image_resize_mode``; training images come resized by the data pipeline), ``image_min_dim``,
    ``image_max_dim``, ``image_min_scale``, ``size_divisibility``, ``image_channel_count``,
    ``pixel_mean``/``pixel_std``, ``image_normalization``, ``invert_bright_images``.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        c = config
        self.mode = c.detect_resize_mode
        self.min_dim, self.max_dim, self.min_scale = c.image_min_dim, c.image_max_dim, c.image_min_scale
        self.size_divisibility = c.size_divisibility
        self.channels = c.image_channel_count
        self.normalization, self.invert_bright = c.image_normalization, c.invert_bright_images
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std, dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, min_dim={self.min_dim}, max_dim={self.max_dim}, min_scale={self.min_scale}, "
                f"size_divisibility={self.size_divisibility}, normalization={self.normalization}")

    # ------------------------------------------------------------------ geometry
    def plan(self, height: int, width: int, name: str = "image") -> ResizeInfo:
        """The inference geometry of an ``height x width`` image (:func:`~maskrcnn.data.resize.plan_resize`).

        Raises ``ConfigError`` for ``crop`` and a ``DataError`` naming ``name`` for a size this
        mode cannot resize (see :data:`~maskrcnn.data.resize.MAX_RESIZED_SIDE`)."""
        check_inference_mode(self.mode)
        return plan_resize(height, width, self.mode, self.min_dim, self.max_dim, self.min_scale, name=name)

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], resize: bool = True,
                windows: list[tuple[int, int, int, int] | None] | None = None,
                original_sizes: list[tuple[int, int]] | None = None) -> ImageBatch:
        """Images ``[C, H, W]`` float in [0, 1] -> :class:`~maskrcnn.structures.ImageBatch`.

        ``resize=True`` (inference): each image is resized per the mode. ``resize=False``
        (training): images come resized by the data pipeline, ``windows`` are the ``(y1, x1, y2,
        x2)`` of their real pixels (or None) and ``original_sizes`` their sizes before resizing
        (default: as given).
        """
        out: list[Tensor] = []
        infos: list[ResizeInfo] = []
        for k, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != self.channels:
                raise ValueError(f"expected images [C={self.channels}, H, W], got {tuple(img.shape)}")
            if resize:
                info = self.plan(int(img.shape[-2]), int(img.shape[-1]))
                infos.append(info)
                out.append(self._resize(img, info))
            else:
                window = None if windows is None else windows[k]
                out.append(self._normalize(img, window))
        sizes = [(int(i.shape[1]), int(i.shape[2])) for i in out]
        tensor = batch_images(out, self.size_divisibility)
        if resize:
            return ImageBatch(tensor, sizes, [i.window for i in infos], [i.original_size for i in infos], infos)
        wins = [tuple(int(v) for v in w) if w is not None else (0, 0, *s)
                for w, s in zip(windows or [None] * len(out), sizes)]
        return ImageBatch(tensor, sizes, wins, list(original_sizes) if original_sizes is not None else sizes, None)

    def _normalize(self, image: Tensor, window: tuple[int, int, int, int] | None = None) -> Tensor:
        return normalize_input(image, self.pixel_mean.to(image.dtype), self.pixel_std.to(image.dtype),
                               self.normalization, self.invert_bright, window)

    def _resize(self, image: Tensor, info: ResizeInfo) -> Tensor:
        """One image at inference: minmax normalises then resizes (torchvision's order); Matterport's
        modes resize and pad, then normalise with the window (their order)."""
        if info.mode == "minmax":
            return info.apply_image(self._normalize(image))
        return self._normalize(info.apply_image(image), info.window)

    # ------------------------------------------------------------------ back to the original image
    def postprocess(self, results: list[dict[str, Tensor]], batch: ImageBatch) -> list[dict[str, Tensor]]:
        """Map each result's ``boxes [N, 4]`` from the batch to its original image (in place; returned).

        Boxes are clipped to the image's window first (padding maps outside the image). Other
        entries (``labels``, ``scores``, ``mask_probs`` inside each box) are unchanged.
        """
        if batch.resizes is None:
            return results
        for r, info in zip(results, batch.resizes):
            r["boxes"] = info.boxes_to_original(r["boxes"])
        return results


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


def batch_images(images: list[Tensor], divisibility: int) -> Tensor:
    """Zero-pad ``[C, H_i, W_i]`` images bottom/right into ``[B, C, H, W]`` with H, W multiples of ``divisibility``."""
    c = images[0].shape[0]
    h = int(math.ceil(max(i.shape[1] for i in images) / divisibility) * divisibility)
    w = int(math.ceil(max(i.shape[2] for i in images) / divisibility) * divisibility)
    batch = images[0].new_zeros((len(images), c, h, w))
    for b, img in zip(batch, images):
        b[:, : img.shape[1], : img.shape[2]].copy_(img)
    return batch

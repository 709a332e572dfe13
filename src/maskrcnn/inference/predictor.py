"""``maskrcnn.load(...)`` and the :class:`Predictor` that detects on images of any kind."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from ..config import Config, ConfigError
from ..errors import DataError
from ..modeling import MaskRCNN, build_model
from .paste import paste_masks
from .results import Detections
from .scoring import rescore_by_maskness

__all__ = ["load", "Predictor", "ImageInput", "class_names_of"]

ImageInput = Union[str, os.PathLike, np.ndarray, Tensor, Any]  # Any: PIL.Image.Image


def _log(msg: str) -> None:
    print(msg)


def load(weights: str | os.PathLike | None = "coco", *, config: Config | str | os.PathLike | None = None,
         device: str | torch.device | None = None, fast: bool | None = None,
         frozen_bn_eps: float | None = None, progress: bool = True, **overrides: Any) -> "Predictor":
    """Load a model for detection.

    Args:
        weights: ``"coco"`` / ``"coco-v2"`` (downloaded once, hash-checked), one of our checkpoints
            (``.safetensors`` file or folder), a torchvision state-dict ``.pth``, a Matterport Keras
            ``.h5`` file (read with h5py: Matterport's own network, ``architecture: matterport``,
            :mod:`maskrcnn.modeling.matterport`; the class count and depth come from the file), a
            model written by ``maskrcnn export`` (``.onnx`` run with ONNX Runtime, ``.xml`` with
            OpenVINO, ``.tflite`` with LiteRT: :mod:`maskrcnn.export.runtime`; its config is the
            export's, only ``mask_threshold`` and ``mask_scoring`` may be overridden), or ``None`` for random weights
            (with ``config``).
        config: a :class:`Config` or YAML path; by default the checkpoint's own or the one implied by
            the state dict. Its class count must match the weights' (a one-line error otherwise).
            With ``.h5`` weights also a Matterport config instance or a dict of its UPPER_CASE
            attributes (Matterport's defaults for the rest; default: Matterport's defaults).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        fast: fast inference mode (see ``Config.fast``; ``fast_dtype="bf16"`` in ``overrides`` forces bf16).
        frozen_bn_eps: override the frozen-BatchNorm eps convention (torchvision v1 files use 0).
        overrides: config fields to change, e.g. ``detection_min_confidence=0.5``.
    """
    from .. import weights as W
    from ..engine.runtime import resolve_device

    device = resolve_device(device)  # a bad name is an error before the weights are read
    from ..export.runtime import RUNTIME_FIELDS, is_exported_path

    if is_exported_path(weights):
        fixed = [k for k in overrides if k not in RUNTIME_FIELDS]
        fixed += [name for name, v in (("config", config), ("fast", fast), ("frozen_bn_eps", frozen_bn_eps)) if v]
        if overrides.get("tta_views") or overrides.get("tta_scales"):
            raise ConfigError(f"{weights}: tta_views/tta_scales (--tta) run in PyTorch only, not on an exported model; "
                              "detect or evaluate with the checkpoint it was exported from")
        if fixed:
            raise ConfigError(f"{weights}: {fixed[0]} cannot change an exported model (its config is fixed at export); "
                              "drop it, or export again from a checkpoint with that setting")
        from ..export.runtime import exported_predictor

        return exported_predictor(weights, device=device, **overrides)
    if isinstance(config, (str, os.PathLike)) and not (weights is not None and W.is_matterport(weights)):
        config = Config.from_yaml(config)  # with .h5 weights it may hold Matterport's attributes: config_for_h5
    resolved = W.resolve_weights(weights, progress=progress) if weights is not None else None
    if resolved is not None and resolved.implied.get("architecture") == "matterport" and resolved.config is None:
        from ..compat.matterport import config_for_h5

        config = config_for_h5(config, resolved.implied, resolved.source)  # a Matterport .h5 file
    elif config is not None and not isinstance(config, Config):
        raise ConfigError(f"config: got {type(config).__name__}; pass a maskrcnn.Config or a YAML path (a Matterport "
                          "config class or UPPER_CASE dict goes with Matterport .h5 weights)")
    if resolved is None:
        config = config if config is not None else Config()
    elif config is None:
        config = Config.create(**resolved.implied)
    else:
        config = resolved.fit(config, ("architecture", "backbone", "num_classes", "image_channel_count"))
    if frozen_bn_eps is not None:
        overrides["frozen_bn_eps"] = frozen_bn_eps
    if fast is not None:
        overrides["fast"] = fast
    if overrides:
        config = config.replace(**overrides)
    model = build_model(config)
    if resolved is not None:
        W.load_into(model, resolved.state_dict, source=resolved.source, reinit_classes=False, log=_log)
    return Predictor(model, device=device)


def class_names_of(config: Config) -> list[str]:
    """The model's class names (index = class id): ``config.class_names``, else ``BG, 1, 2, ...``."""
    return list(config.class_names) if config.class_names else ["BG"] + [str(i) for i in range(1, config.num_classes)]


class Predictor:
    """Runs a :class:`MaskRCNN` on images: paths, PIL images, numpy arrays or tensors.

    ``detect(images)`` returns one :class:`Detections` per image: boxes ``(x1, y1, x2, y2)`` in
    original pixels, class ids and names, scores, and bool masks at the original size (a pixel
    belongs to an instance when its mask probability is ``>= config.mask_threshold``, 0.5 by
    default).

    Images go through the model's input transform (``model.transform``: normalise, resize per
    ``Config.detect_resize_mode``, pad, and boxes back to original pixels). ``resize_mode``
    detects with another mode than the model's config says (it sets ``inference_resize_mode``;
    ``crop`` is refused with a :class:`~maskrcnn.config.ConfigError`).
    """

    #: autocast dtype of the dense layers in fast mode (None: fp32; see ``Config.fast``)
    fast_dtype: torch.dtype | None = None

    def __init__(self, model: MaskRCNN, device: str | torch.device = "cpu", *, resize_mode: str | None = None) -> None:
        from ..engine.runtime import resolve_device
        from ..modeling.transform import InputTransform, check_inference_mode

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.fast_dtype = None
        if model.config.fast:
            from ..engine.runtime import resolve_fast_dtype
            from ..modeling.fuse import fast_copy

            self.fast_dtype = resolve_fast_dtype(model.config.fast_dtype, self.device)
            self.model = fast_copy(self.model)
        if resize_mode is not None:
            check_inference_mode(resize_mode)
        self.config: Config = (model.config if resize_mode is None
                               else model.config.replace(inference_resize_mode=resize_mode))
        self.transform = (self.model.transform if resize_mode is None
                          else InputTransform(self.config).to(self.device))
        self.class_names = class_names_of(self.config)
        self._warned: set[str] = set()

    @property
    def mode(self) -> str:
        """What this predictor runs, in words (e.g. for a log line)."""
        if not self.config.fast:
            return "exact (fp32)"
        dtype = "fp32" if self.fast_dtype is None else str(self.fast_dtype).replace("torch.", "")
        return f"fast ({self.device.type}: BatchNorm folded, channels-last, dense layers in {dtype})"

    # ------------------------------------------------------------------ input conversion
    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, stacklevel=3)

    def to_array(self, image: ImageInput, name: str = "image") -> np.ndarray:
        """Any supported input -> ``[H, W, C]`` array with the model's channel count.

        Grayscale into an RGB model is replicated and a constant alpha channel dropped, each with a
        warning; any other channel mismatch is a :class:`DataError`, and so is a size the resize
        mode cannot take (a side enlarged past ``maskrcnn.data.resize.MAX_RESIZED_SIDE``), so that
        folder and stream runs report and skip such an image.
        """
        from ..data.images import read_image

        if isinstance(image, (str, os.PathLike)):
            arr = read_image(image)
        elif isinstance(image, Tensor):
            t = image.detach().cpu()
            if t.is_floating_point() and t.dtype != torch.float64:
                t = t.float()  # float16/bfloat16 have no (or no exact) numpy counterpart
            if t.dim() == 2:
                t = t[None]
            if t.dim() != 3:
                raise DataError(f"{name}: tensor of shape {tuple(t.shape)}; expected [C, H, W] or [H, W]")
            arr = t.permute(1, 2, 0).numpy()
        elif isinstance(image, np.ndarray):
            arr = image
        elif hasattr(image, "mode") and hasattr(image, "size"):  # PIL image
            from PIL import ImageOps

            from ..data.images import PIL_RGB_MODES as _PIL_TO_RGB, normalize_pixels as _finish

            # the same conversions as reading the file from disk (read_image), so a path and its
            # opened PIL image give the same array: palette/CMYK/YCbCr... -> RGB, 1-bit -> L,
            # 32-bit integer "I" -> uint16
            im = ImageOps.exif_transpose(image)
            if im.mode in _PIL_TO_RGB:
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = _finish(np.asarray(im), name)
        else:
            raise DataError(f"{name}: unsupported input type {type(image).__name__}; pass a path, PIL image, "
                            "numpy array or tensor")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] > 16 or min(arr.shape[:2]) < 1:
            raise DataError(f"{name}: array of shape {arr.shape} is not an image; expected HxW, HxWx3 or HxWxC")
        if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64, np.bool_):
            raise DataError(f"{name}: dtype {arr.dtype} is not supported; use uint8, uint16 or float in [0, 1]")
        want = self.config.image_channel_count
        have = arr.shape[2]
        if have != want:
            if want == 3 and have == 1:
                self._warn_once("gray", f"{name}: grayscale image given to a 3-channel model; replicating it to RGB "
                                "(set image_channel_count: 1 to train on grayscale)")
                arr = np.repeat(arr, 3, axis=2)
            elif want == 3 and have == 4 and (arr[:, :, 3] == arr[0, 0, 3]).all():
                self._warn_once("alpha", f"{name}: dropping a constant alpha channel (RGBA -> RGB)")
                arr = arr[:, :, :3]
            else:
                raise DataError(f"{name}: image has {have} channels but the model takes {want}; convert the image "
                                f"or use a model with image_channel_count: {have}")
        self.transform.plan(int(arr.shape[0]), int(arr.shape[1]), name)
        return arr

    # ------------------------------------------------------------------ detection
    @torch.no_grad()
    def detect(self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 4,
               score_threshold: float | None = None, mask_threshold: float | None = None) -> list[Detections]:
        """Detect on one image or a sequence; returns one :class:`Detections` per image.

        ``score_threshold`` drops detections below it (the model itself keeps scores above
        ``config.detection_min_confidence``). An image this resize mode cannot take (a side
        enlarged past ``maskrcnn.data.resize.MAX_RESIZED_SIDE``) is a ``DataError`` naming it.
        """
        if isinstance(images, Tensor) and images.dim() == 4:
            images = list(images)  # a [B, C, H, W] batch
        elif not isinstance(images, (list, tuple)):
            images = [images]
        return list(self.detect_iter(images, batch_size=batch_size, score_threshold=score_threshold,
                                     mask_threshold=mask_threshold))

    def stream(self, source: Any, **kw: Any) -> Iterator[tuple[str, Detections]]:
        """Lazy ``(name, Detections)`` over a folder, video or iterable with bounded memory;
        see :func:`maskrcnn.inference.streaming.stream_detect`."""
        from .streaming import stream_detect

        return stream_detect(self, source, **kw)

    def detect_tiled(self, image: Any, **kw: Any) -> Any:
        """Detect on an image larger than the model input by overlapping tiles, merging instances cut
        by tile borders; see :func:`maskrcnn.inference.tiling.detect_tiled`."""
        from .tiling import detect_tiled

        return detect_tiled(self, image, **kw)

    def detect_iter(self, images: Iterable[ImageInput], *, batch_size: int = 4, score_threshold: float | None = None,
                    mask_threshold: float | None = None) -> Iterator[Detections]:
        """Like :meth:`detect` but lazy: images are read and results yielded batch by batch (bounded memory)."""
        batch: list[tuple[np.ndarray, str | None]] = []
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"
            arr = self.to_array(image, name)
            batch.append((arr, Path(image).name if isinstance(image, (str, os.PathLike)) else None))
            if len(batch) == batch_size:
                yield from self._run(batch, score_threshold, mask_threshold)
                batch = []
        if batch:
            yield from self._run(batch, score_threshold, mask_threshold)

    def _detect_raw(self, images: list[Tensor], score_threshold: float | None) -> list[dict[str, Tensor]]:
        """The model's raw detections of float ``[C, H, W]`` images in [0, 1] (see ``MaskRCNN.detect``):
        per image ``boxes`` (original pixels), ``labels``, ``scores``, ``mask_probs [N, M, M]``.
        The one step a runtime predictor replaces (:class:`maskrcnn.export.runtime.OnnxPredictor`)."""
        from ..engine.runtime import autocast

        tensors = [t.to(self.device) for t in images]
        with autocast(self.device, self.fast_dtype):  # fast mode: dense layers in bf16/fp16, heads' outputs fp32
            return self.model.detect(tensors, score_threshold=score_threshold, transform=self.transform)

    def _run(self, batch: list[tuple[np.ndarray, str | None]], score_threshold: float | None,
             mask_threshold: float | None) -> list[Detections]:
        from ..data.images import to_float_tensor

        thr = self.config.mask_threshold if mask_threshold is None else mask_threshold
        raw = self._detect_raw([to_float_tensor(a) for a, _ in batch], score_threshold)
        if self.config.mask_scoring == "maskness":
            raw = [rescore_by_maskness(r, thr, score_threshold) for r in raw]
        own = getattr(self.model, "paste_masks", None)  # a model with its own rule (Matterport's)
        out = []
        for r, (a, fname) in zip(raw, batch):
            size = (a.shape[0], a.shape[1])
            masks = (own(r["mask_probs"], r["boxes"], size, threshold=thr) if own is not None else
                     paste_masks(r["mask_probs"], r["boxes"], size, threshold=thr, mode=self.config.mask_paste))
            out.append(Detections(
                boxes=r["boxes"].float().cpu().numpy(), class_ids=r["labels"].cpu().numpy(),
                scores=r["scores"].float().cpu().numpy(), masks=masks.cpu().numpy(),
                class_names=self.class_names, image_size=size, file_name=fname))
        return out

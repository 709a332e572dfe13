"""One typed, validated configuration that drives model, data, training and inference.

Field names follow Matterport's ``Config`` in lower case (``image_min_dim``,
``train_rois_per_image``, ``detection_min_confidence`` ...), so users coming from there find
their settings. Every field has a default, a unit and a one-line description (see
``Config.describe()``). The defaults reproduce torchvision's ``maskrcnn_resnet50_fpn``.

Conventions used throughout the project:

* Boxes are ``(x1, y1, x2, y2)`` in pixels, float, x2/y2 exclusive-edge coordinates as in
  torchvision (a box covering pixel columns 0..9 is ``x1=0, x2=10``).
* Images enter the network as float ``[C, H, W]`` in ``[0, 1]`` (8-bit divided by 255, 16-bit
  by 65535), normalised by ``(x - pixel_mean) / pixel_std`` per channel (or per image, see
  ``image_normalization`` and ``invert_bright_images``).
* Class id 0 is background; ``num_classes`` counts it (Matterport's ``NUM_CLASSES``).

Inconsistent settings raise :class:`ConfigError` before anything runs, naming the field and the
fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from .errors import MaskRCNNError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["Config", "ConfigError", "LAYER_PRESETS"]


class ConfigError(MaskRCNNError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


#: Matterport's layer presets, as regular expressions over our parameter names.
LAYER_PRESETS: dict[str, str] = {
    "heads": r"^(backbone\.fpn|rpn|roi_heads)\.",
    "3+": r"^(backbone\.body\.layer[234]|backbone\.fpn|rpn|roi_heads)\.",
    "4+": r"^(backbone\.body\.layer[34]|backbone\.fpn|rpn|roi_heads)\.",
    "5+": r"^(backbone\.body\.layer4|backbone\.fpn|rpn|roi_heads)\.",
    "all": r".*",
}

ResizeMode = Literal["minmax", "none", "square", "pad64", "crop"]
Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101"]


def _f(default: Any, doc: str, unit: str = "") -> Any:
    """A field with its one-line doc and unit kept in the schema."""
    return Field(default, description=doc, json_schema_extra={"unit": unit})


class Config(BaseModel):
    """All settings of a run. Immutable field set; values are validated on construction and assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # ---------------------------------------------------------------- general
    name: str = _f("maskrcnn", "Experiment name, used in run folder and checkpoint names.")
    num_classes: int = _f(91, "Number of classes including background (Matterport NUM_CLASSES).", "classes")
    class_names: list[str] | None = _f(None, "Names of classes 0..num_classes-1 (index 0 is 'BG'); None uses the dataset's or numbers.")
    seed: int = _f(42, "Seed of every random number generator of a run.")

    # ---------------------------------------------------------------- backbone
    backbone: Backbone = _f("resnet50", "ResNet depth of the backbone body (Matterport BACKBONE).")
    architecture: Literal["v1", "v2"] = _f("v1", "torchvision layout: v1 (frozen BN, 2-FC box head) or v2 (BN everywhere, 4conv1fc box head).")
    backbone_width: int = _f(64, "Channels of the ResNet stem; 64 is the standard ResNet, smaller values give a lean model trained from scratch.", "channels")
    fpn_channels: int = _f(256, "Channels of every FPN level (Matterport TOP_DOWN_PYRAMID_SIZE).", "channels")
    backbone_strides: list[int] = _f([4, 8, 16, 32, 64], "Strides of P2..P6 (Matterport BACKBONE_STRIDES); fixed by the ResNet-FPN layout.", "px")
    frozen_bn_eps: float | None = _f(None, "eps of frozen BatchNorm; None means 1e-5, or 0.0 for a v1 torchvision COCO file (its convention).")
    train_bn: bool = _f(False, "Train BatchNorm statistics and affine parameters (Matterport TRAIN_BN); frozen by default.")
    sync_bn: bool = _f(False, "Convert trainable BatchNorm to SyncBatchNorm under DDP.")
    gradient_checkpointing: bool = _f(False, "Recompute backbone stage activations in the backward pass to save memory.")

    # ---------------------------------------------------------------- input
    image_channel_count: int = _f(3, "Channels of input images (1 grayscale, 3 RGB, 4 RGB-D ...); a mismatching image is an error.", "channels")
    pixel_mean: list[float] = _f([0.485, 0.456, 0.406], "Per-channel mean subtracted from images scaled to [0, 1].", "[0,1] intensity")
    pixel_std: list[float] = _f([0.229, 0.224, 0.225], "Per-channel std dividing images scaled to [0, 1].", "[0,1] intensity")
    image_normalization: Literal["fixed", "per_image"] = _f("fixed", "fixed: (x - pixel_mean) / pixel_std; per_image: each image standardised by its own per-channel mean and std (stains, exposure and bit depths that vary between images).")
    invert_bright_images: bool = _f(False, "Invert (1 - x) images whose mean intensity is above 0.5, so objects are always bright on a dark background (brightfield or stained histology mixed with fluorescence).")
    image_resize_mode: ResizeMode = _f("minmax", "minmax (torchvision: short side to image_min_dim, long side <= image_max_dim, pad to size_divisibility) or Matterport's none/square/pad64/crop.")
    image_min_dim: int = _f(800, "Target short side (minmax), minimum short side (square/pad64) or crop size (crop).", "px")
    image_max_dim: int = _f(1333, "Maximum long side (minmax, square).", "px")
    image_min_scale: float = _f(0.0, "Minimum upscaling factor (Matterport IMAGE_MIN_SCALE); 0 disables.")
    size_divisibility: int = _f(32, "Padded batch sides are multiples of this.", "px")

    # ---------------------------------------------------------------- anchors and RPN
    rpn_anchor_scales: list[float] = _f([32, 64, 128, 256, 512], "Anchor side per level P2..P6 (Matterport RPN_ANCHOR_SCALES).", "px")
    rpn_anchor_ratios: list[float] = _f([0.5, 1.0, 2.0], "Anchor aspect ratios height/width.")
    rpn_nms_threshold: float = _f(0.7, "IoU threshold of the RPN's NMS.", "IoU")
    rpn_train_anchors_per_image: int = _f(256, "Anchors sampled per image for the RPN loss.", "anchors")
    rpn_positive_fraction: float = _f(0.5, "Largest fraction of positives among sampled anchors.")
    rpn_fg_iou_threshold: float = _f(0.7, "Anchor IoU with a GT box at or above which it is positive.", "IoU")
    rpn_bg_iou_threshold: float = _f(0.3, "Anchor IoU below which it is negative.", "IoU")
    pre_nms_limit_training: int = _f(2000, "Top proposals kept per FPN level before NMS, training.", "boxes")
    pre_nms_limit_inference: int = _f(1000, "Top proposals kept per FPN level before NMS, inference.", "boxes")
    post_nms_rois_training: int = _f(2000, "Proposals kept per image after NMS, training.", "boxes")
    post_nms_rois_inference: int = _f(1000, "Proposals kept per image after NMS, inference.", "boxes")
    rpn_bbox_std_dev: list[float] = _f([1.0, 1.0, 1.0, 1.0], "Delta normalisation of RPN box regression (inverse of torchvision's weights).")

    # ---------------------------------------------------------------- RoI heads
    train_rois_per_image: int = _f(512, "RoIs sampled per image for the box and mask heads (Matterport TRAIN_ROIS_PER_IMAGE).", "RoIs")
    roi_positive_ratio: float = _f(0.25, "Largest fraction of positive RoIs among sampled ones.")
    roi_fg_iou_threshold: float = _f(0.5, "RoI IoU with a GT box at or above which it is foreground.", "IoU")
    pool_size: int = _f(7, "RoIAlign output side for the box head.", "cells")
    mask_pool_size: int = _f(14, "RoIAlign output side for the mask head; masks are predicted at twice this.", "cells")
    roi_sampling_ratio: int = _f(2, "RoIAlign sampling points per bin side.")
    box_head_dim: int = _f(1024, "Width of the box head's fully connected layers (Matterport FPN_CLASSIF_FC_LAYERS_SIZE).", "units")
    mask_head_channels: int = _f(256, "Channels of the mask head's convolutions.", "channels")
    mask_head_convs: int = _f(4, "Number of 3x3 convolutions in the mask head.")
    bbox_std_dev: list[float] = _f([0.1, 0.1, 0.2, 0.2], "Delta normalisation of the box head (Matterport BBOX_STD_DEV; torchvision weights 10,10,5,5).")

    # ---------------------------------------------------------------- detection
    detection_min_confidence: float = _f(0.05, "Class score above which a detection is kept by the model (torchvision 0.05; Matterport 0.7).", "probability")
    detection_nms_threshold: float = _f(0.5, "Per-class NMS IoU threshold of detections.", "IoU")
    detection_max_instances: int = _f(100, "Most detections returned per image.", "detections")
    mask_threshold: float = _f(0.5, "Mask probability at or above which a pixel belongs to the instance.", "probability")
    fast: bool = _f(False, "Fast inference: BatchNorm folded into convs, bf16 where safe, channels-last (outputs no longer bit-exact).")

    # ---------------------------------------------------------------- ground truth
    max_gt_instances: int = _f(100, "Most GT instances per training image; more are randomly dropped.", "instances")
    use_mini_mask: bool = _f(False, "Store GT masks cropped to their box at mini_mask_shape (Matterport USE_MINI_MASK).")
    mini_mask_shape: list[int] = _f([56, 56], "Height, width of stored mini-masks.", "px")

    # ---------------------------------------------------------------- training
    images_per_gpu: int = _f(2, "Images per device per step (Matterport IMAGES_PER_GPU).", "images")
    epochs: int = _f(12, "Passes over the training set.", "epochs")
    layers: str = _f("all", "Trainable layers: heads, 3+, 4+, 5+, all, or a regex over parameter names.")
    learning_rate: float = _f(0.02, "Learning rate for a total batch of base_batch_size; scaled linearly to the real total batch.", "lr")
    base_batch_size: int = _f(16, "Total batch that learning_rate is given for.", "images")
    optimizer: Literal["sgd", "adamw"] = _f("sgd", "sgd (momentum, torchvision/Matterport) or adamw (betas 0.9, 0.999; learning_rate is AdamW's rate, ~1e-3).")
    momentum: float = _f(0.9, "SGD momentum (Matterport LEARNING_MOMENTUM).")
    weight_decay: float = _f(1e-4, "L2 weight decay on weights (none on norms and biases).")
    lr_schedule: Literal["step", "cosine", "constant"] = _f("step", "Learning rate schedule after warmup.")
    lr_steps: list[float] = _f([0.667, 0.917], "Step schedule: fractions of the run at which the rate is multiplied by lr_gamma.")
    lr_gamma: float = _f(0.1, "Step schedule decay factor.")
    warmup_iters: int = _f(500, "Linear warmup length.", "steps")
    warmup_factor: float = _f(0.001, "Learning rate multiplier at the first warmup step.")
    gradient_clip_norm: float | None = _f(5.0, "Global gradient norm clip (Matterport GRADIENT_CLIP_NORM); None disables.")
    max_train_minutes: float | None = _f(None, "Wall-clock training budget: the schedule is fitted to the steps that fit and training ends when it is spent; None: all epochs.", "min")
    grad_accumulation: int = _f(1, "Steps whose gradients are summed before an optimizer step.", "steps")
    amp: Literal["none", "bf16", "fp16", "auto"] = _f("none", "Mixed precision: bf16 autocast (CPU or CUDA), fp16 with a grad scaler (CUDA), auto picks.")
    loss_weights: dict[str, float] = _f(
        {"rpn_class": 1.0, "rpn_bbox": 1.0, "mrcnn_class": 1.0, "mrcnn_bbox": 1.0, "mrcnn_mask": 1.0},
        "Weight of each loss term (Matterport LOSS_WEIGHTS); each head applies its own, and the model returns loss_<term>.",
    )
    class_loss_weights: list[float] | None = _f(None, "Per-class weights of the classification and mask losses (length num_classes).")
    repeat_factor_threshold: float | None = _f(None, "LVIS repeat-factor sampling threshold t (e.g. 0.001); None disables.")
    num_workers: int = _f(2, "Data loader worker processes (0 loads in the main process).", "processes")
    checkpoint_keep: int = _f(3, "Most recent epoch checkpoints kept besides the best.", "files")
    validate_every: int = _f(1, "Validate every N epochs (0 disables).", "epochs")
    deterministic: bool = _f(False, "Deterministic algorithms and seeded workers (exact resume on CPU).")

    # ---------------------------------------------------------------- augmentation
    aug_hflip: float = _f(0.5, "Probability of a horizontal flip.", "probability")
    aug_vflip: float = _f(0.0, "Probability of a vertical flip.", "probability")
    aug_rot90: float = _f(0.0, "Probability of a random 90/180/270 degree rotation.", "probability")
    aug_scale_jitter: list[float] | None = _f(None, "Random factor range [lo, hi] multiplied into the resize scale; None disables.")
    aug_crop: list[int] | None = _f(None, "Random crop height, width applied after resizing; None disables.", "px")
    aug_brightness: float = _f(0.0, "Max relative brightness change.")
    aug_contrast: float = _f(0.0, "Max relative contrast change.")
    aug_blur: float = _f(0.0, "Probability of a Gaussian blur.", "probability")
    aug_min_area: int = _f(4, "Instances with fewer visible pixels after augmentation are dropped.", "px")

    # ---------------------------------------------------------------- validation of combinations
    @model_validator(mode="after")
    def _check(self) -> "Config":
        err = _first_error(self)
        if err is not None:
            raise ValueError(err)
        return self

    # ---------------------------------------------------------------- derived values
    @property
    def bbox_weights(self) -> tuple[float, float, float, float]:
        """torchvision's BoxCoder weights of the box head: 1 / bbox_std_dev."""
        return tuple(1.0 / s for s in self.bbox_std_dev)  # type: ignore[return-value]

    @property
    def rpn_bbox_weights(self) -> tuple[float, float, float, float]:
        return tuple(1.0 / s for s in self.rpn_bbox_std_dev)  # type: ignore[return-value]

    @property
    def mask_shape(self) -> int:
        """Side of predicted masks (twice ``mask_pool_size``)."""
        return 2 * self.mask_pool_size

    def layer_regex(self) -> str:
        """The regular expression of trainable parameter names that ``layers`` denotes."""
        return LAYER_PRESETS.get(self.layers, self.layers)

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def create(cls, **values: Any) -> "Config":
        """Construct, turning pydantic's errors into one-line :class:`ConfigError` messages."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with ``changes`` applied."""
        return Config.create(**{**self.model_dump(), **changes})

    def with_overrides(self, assignments: list[str]) -> "Config":
        """Apply ``--set key=value`` strings (values parsed as YAML: ``lr=0.01``, ``aug_crop=[256,256]``)."""
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=0.01")
            key, raw = item.split("=", 1)
            key = key.strip()
            if key not in Config.model_fields:
                raise ConfigError(f"--set {key}: unknown config field{_suggest(key)}")
            changes[key] = yaml.safe_load(raw)
        return self.replace(**changes)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            from .configs import PRESETS, preset_path

            if str(path).removesuffix(".yaml") in PRESETS:  # a shipped preset by name: --config nuclei
                path = preset_path(str(path))
            else:
                raise ConfigError(f"{path}: config file not found; pass an existing YAML file to --config "
                                  f"or a shipped preset ({', '.join(PRESETS)})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            raise ConfigError(f"{path}: unknown config field {unknown[0]!r}{_suggest(unknown[0])}")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {_format_validation_error(exc)}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(), sort_keys=False)
        if path is not None:
            from .utils.files import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_matterport(cls, obj: Any, **overrides: Any) -> "Config":
        """Read a Matterport-style ``Config`` instance (UPPER_CASE attributes).

        Matterport feeds RGB 0-255 minus ``MEAN_PIXEL`` without std; that is expressed here as
        ``pixel_mean = MEAN_PIXEL / 255`` and ``pixel_std = 1 / 255``. Its learning rate is for its
        own batch, so ``base_batch_size`` is set to that batch and the rate is kept.
        """
        from .compat.matterport import config_values_from_matterport

        values = config_values_from_matterport(obj)
        values.update(overrides)
        return cls.create(**values)

    @classmethod
    def describe(cls) -> str:
        """A table of every field: name, default, unit and doc."""
        lines = []
        for name, field in cls.model_fields.items():
            unit = (field.json_schema_extra or {}).get("unit", "")  # type: ignore[union-attr]
            lines.append(f"{name:28s} {field.default!r:>24s} {unit:>14s}  {field.description}")
        return "\n".join(lines)


# -------------------------------------------------------------------- validation helpers


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.lower(), list(Config.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; see `maskrcnn config --describe` for the fields"


def _format_validation_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return msg
    if e["type"] == "extra_forbidden":
        return f"unknown config field {loc!r}{_suggest(loc)}"
    return f"config field {loc!r}: {msg} (got {e.get('input')!r})"


def _first_error(c: Config) -> str | None:
    """The first inconsistency among fields, as 'field: problem; fix'."""
    n_levels = len(c.backbone_strides)
    if c.num_classes < 2:
        return f"num_classes={c.num_classes}: must count background plus at least one class (e.g. 2 for one class)"
    if c.class_names is not None and len(c.class_names) != c.num_classes:
        return (f"class_names has {len(c.class_names)} names but num_classes={c.num_classes}; "
                "list one name per class including 'BG' at index 0")
    if c.backbone_strides != [4, 8, 16, 32, 64]:
        return "backbone_strides: the ResNet-FPN backbone has strides [4, 8, 16, 32, 64]; remove the field"
    if len(c.rpn_anchor_scales) != n_levels:
        return f"rpn_anchor_scales has {len(c.rpn_anchor_scales)} sizes; give one per FPN level ({n_levels})"
    if any(s <= 0 for s in c.rpn_anchor_scales) or any(r <= 0 for r in c.rpn_anchor_ratios):
        return "rpn_anchor_scales and rpn_anchor_ratios must be positive"
    if len(c.pixel_mean) != c.image_channel_count or len(c.pixel_std) != c.image_channel_count:
        return (f"pixel_mean/pixel_std have {len(c.pixel_mean)}/{len(c.pixel_std)} values but image_channel_count="
                f"{c.image_channel_count}; give one value per channel")
    if any(s <= 0 for s in c.pixel_std):
        return "pixel_std: every value must be > 0"
    if c.image_channel_count < 1:
        return "image_channel_count must be >= 1"
    if c.image_resize_mode == "pad64" and c.image_min_dim % 64:
        return (f"image_min_dim={c.image_min_dim} with image_resize_mode=pad64: must be divisible by 64 "
                f"(e.g. {max(64, round(c.image_min_dim / 64) * 64)})")
    if c.image_resize_mode in ("minmax", "square") and c.image_max_dim < c.image_min_dim:
        return f"image_max_dim={c.image_max_dim} is below image_min_dim={c.image_min_dim}; raise image_max_dim"
    if c.image_resize_mode == "crop" and c.image_min_dim % c.size_divisibility:
        return f"image_min_dim={c.image_min_dim} with crop: must be a multiple of size_divisibility={c.size_divisibility}"
    if c.size_divisibility % 32:
        return f"size_divisibility={c.size_divisibility}: must be a multiple of 32 (the P6 stride needs it)"
    if not 0 < c.rpn_positive_fraction <= 1 or not 0 < c.roi_positive_ratio <= 1:
        return "rpn_positive_fraction and roi_positive_ratio must be in (0, 1]"
    if c.rpn_bg_iou_threshold > c.rpn_fg_iou_threshold:
        return "rpn_bg_iou_threshold must not exceed rpn_fg_iou_threshold"
    for name in ("bbox_std_dev", "rpn_bbox_std_dev"):
        v = getattr(c, name)
        if len(v) != 4 or any(x <= 0 for x in v):
            return f"{name}: four positive values (dy, dx, dh, dw scales)"
    if len(c.mini_mask_shape) != 2 or min(c.mini_mask_shape) < 4:
        return "mini_mask_shape: two sides of at least 4 px, e.g. [56, 56]"
    if c.layers not in LAYER_PRESETS:
        try:
            re.compile(c.layers)
        except re.error as exc:
            return f"layers={c.layers!r}: neither a preset ({', '.join(LAYER_PRESETS)}) nor a valid regex ({exc})"
    if set(c.loss_weights) != {"rpn_class", "rpn_bbox", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask"}:
        return "loss_weights: give exactly rpn_class, rpn_bbox, mrcnn_class, mrcnn_bbox, mrcnn_mask"
    if c.class_loss_weights is not None and len(c.class_loss_weights) != c.num_classes:
        return f"class_loss_weights has {len(c.class_loss_weights)} values; give one per class ({c.num_classes}, background first)"
    if c.lr_schedule == "step" and any(not 0 < s < 1 for s in c.lr_steps):
        return "lr_steps: fractions of the run strictly between 0 and 1, e.g. [0.667, 0.917]"
    if c.max_train_minutes is not None and not c.max_train_minutes > 0:
        return f"max_train_minutes={c.max_train_minutes}: a positive number of minutes, or null for no time limit"
    if c.images_per_gpu < 1 or c.grad_accumulation < 1 or c.epochs < 1:
        return "images_per_gpu, grad_accumulation and epochs must be >= 1"
    if c.aug_crop is not None and (len(c.aug_crop) != 2 or min(c.aug_crop) < 32):
        return "aug_crop: [height, width] of at least 32 px, or null"
    if c.aug_scale_jitter is not None and (len(c.aug_scale_jitter) != 2 or not 0 < c.aug_scale_jitter[0] <= c.aug_scale_jitter[1]):
        return "aug_scale_jitter: [lo, hi] with 0 < lo <= hi, e.g. [0.8, 1.25], or null"
    if c.train_rois_per_image < 1 or c.detection_max_instances < 1:
        return "train_rois_per_image and detection_max_instances must be >= 1"
    if c.fpn_channels < 8 or c.backbone_width < 8:
        return "fpn_channels and backbone_width must be >= 8"
    return None

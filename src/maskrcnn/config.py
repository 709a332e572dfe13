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

import functools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import MaskRCNNError

__all__ = ["Config", "ConfigError", "LAYER_PRESETS", "BACKBONE_STRIDES", "RESNET_DEPTHS", "TIMM_EXAMPLES"]


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

#: Strides of P2..P6: fixed by the ResNet-FPN backbone (``Config.backbone_strides`` only documents them).
BACKBONE_STRIDES: list[int] = [4, 8, 16, 32, 64]

ResizeMode = Literal["minmax", "none", "square", "pad64", "crop"]
#: The ResNet depths of ``Config.backbone``; any other backbone is ``timm:<model name>``.
RESNET_DEPTHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101")
#: timm models tested as backbones (``timm:<name>``), named in errors; any features_only model with
#: features at strides 4..32 works.
TIMM_EXAMPLES: tuple[str, ...] = ("convnext_tiny", "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "inception_v3")
MaskLoss = Literal["bce", "dice", "bce+dice"]
MaskPaste = Literal["subpixel", "torchvision"]
MaskScoring = Literal["none", "maskness"]
_Positive = Annotated[float, Field(gt=0)]
_NonNegative = Annotated[float, Field(ge=0)]

#: The run folder and checkpoint names are built from ``Config.name``: one plain path component.
_PLAIN_NAME = re.compile(r"\w[\w.+-]{0,99}")


def _f(default: Any, doc: str, unit: str = "", *, example: Any = None, **constraints: Any) -> Any:
    """A field with its one-line doc, unit, an example value (shown in errors when the default is
    None) and its valid range (``ge``, ``gt``, ``le``, ``lt``, ``min_length``: checked by pydantic)."""
    extra = {"unit": unit} if example is None else {"unit": unit, "example": example}
    return Field(default, description=doc, json_schema_extra=extra, **constraints)


class Config(BaseModel):
    """All settings of a run. Immutable field set; values are validated on construction and assignment.

    Every invalid value raises :class:`ConfigError` (one line naming the field, the valid range and
    an example), from the constructor, :meth:`create`, :meth:`replace`, attribute assignment,
    :meth:`from_yaml` and :meth:`with_overrides` alike. NaN and infinity are refused everywhere.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc)) from None

    # ---------------------------------------------------------------- general
    name: str = _f("maskrcnn", "Experiment name, used in run folder and checkpoint names.")
    num_classes: int = _f(91, "Number of classes including background (Matterport NUM_CLASSES).", "classes")
    class_names: list[str] | None = _f(None, "Names of classes 0..num_classes-1 (index 0 is 'BG'); None uses the dataset's or numbers.", example=["BG", "balloon"])
    seed: int = _f(42, "Seed of every random number generator of a run.", ge=0, le=2**32 - 1)

    # ---------------------------------------------------------------- backbone
    backbone: str = _f("resnet50", "Backbone body: resnet18/34/50/101 (Matterport BACKBONE), or timm:<model> for a timm features_only model (e.g. timm:convnext_tiny, timm:efficientnet_b0; pip install 'maskrcnn[timm]') behind the same FPN.")
    timm_pretrained: str | None = _f(None, "ImageNet weights of a timm backbone, loaded when training starts from scratch: a local file with timm's state dict (.safetensors or .pth) or an http(s) URL (downloaded once into the cache); null: random init. Never fetched from a model hub.", example="convnext_tiny.safetensors")
    architecture: Literal["v1", "v2", "matterport"] = _f("v1", "torchvision layout: v1 (frozen BN, 2-FC box head) or v2 (BN everywhere, 4conv1fc box head); matterport: Matterport's Keras network, for its .h5 weights (detection and evaluation only).")
    backbone_width: int = _f(64, "Channels of the ResNet stem; 64 is the standard ResNet, smaller values give a lean model trained from scratch.", "channels", ge=8)
    fpn_channels: int = _f(256, "Channels of every FPN level (Matterport TOP_DOWN_PYRAMID_SIZE).", "channels", ge=8)
    backbone_strides: list[int] = _f([4, 8, 16, 32, 64], "Strides of P2..P6 (Matterport BACKBONE_STRIDES); fixed by the ResNet-FPN backbone, any other value is an error.", "px")
    frozen_bn_eps: float | None = _f(None, "eps of frozen BatchNorm; None means 1e-5, or 0.0 for a v1 torchvision COCO file (its convention).", ge=0, lt=1, example=1e-5)
    train_bn: bool = _f(False, "Train BatchNorm statistics and affine parameters (Matterport TRAIN_BN); frozen by default.")
    sync_bn: bool = _f(False, "Convert trainable BatchNorm to SyncBatchNorm under DDP.")
    gradient_checkpointing: bool = _f(False, "Recompute backbone stage activations in the backward pass to save memory.")

    # ---------------------------------------------------------------- input
    image_channel_count: int = _f(3, "Channels of input images (1 grayscale, 3 RGB, 4 RGB-D ...); a mismatching image is an error.", "channels", ge=1)
    pixel_mean: list[float] = _f([0.485, 0.456, 0.406], "Per-channel mean subtracted from images scaled to [0, 1].", "[0,1] intensity")
    pixel_std: list[_Positive] = _f([0.229, 0.224, 0.225], "Per-channel std dividing images scaled to [0, 1].", "[0,1] intensity")
    image_normalization: Literal["fixed", "per_image"] = _f("fixed", "fixed: (x - pixel_mean) / pixel_std; per_image: each image standardised by its own per-channel mean and std (stains, exposure and bit depths that vary between images).")
    invert_bright_images: bool = _f(False, "Invert (1 - x) images whose mean intensity is above 0.5, so objects are always bright on a dark background (brightfield or stained histology mixed with fluorescence).")
    image_resize_mode: ResizeMode = _f("minmax", "minmax (torchvision: short side to image_min_dim, long side <= image_max_dim, pad to size_divisibility) or Matterport's none/square/pad64/crop.")
    inference_resize_mode: Literal["minmax", "none", "square", "pad64"] | None = _f(None, "Resize mode to detect, evaluate, validate and export with; null: image_resize_mode. Required with image_resize_mode=crop (training on random crops), e.g. pad64: the training scale on whole images (Matterport's nucleus inference config).")
    image_min_dim: int = _f(800, "Target short side (minmax), minimum short side (square/pad64) or crop size (crop).", "px", ge=16, le=32768)
    image_max_dim: int = _f(1333, "Maximum long side (minmax, square).", "px", ge=16, le=32768)
    image_min_scale: float = _f(0.0, "Minimum upscaling factor (Matterport IMAGE_MIN_SCALE); 0 disables.", ge=0)
    size_divisibility: int = _f(32, "Padded batch sides are multiples of this.", "px", ge=32)

    # ---------------------------------------------------------------- anchors and RPN
    rpn_anchor_scales: list[_Positive] = _f([32, 64, 128, 256, 512], "Anchor side per level P2..P6 (Matterport RPN_ANCHOR_SCALES).", "px")
    rpn_anchor_ratios: list[_Positive] = _f([0.5, 1.0, 2.0], "Anchor aspect ratios height/width.", min_length=1)
    rpn_nms_threshold: float = _f(0.7, "IoU threshold of the RPN's NMS.", "IoU", gt=0, le=1)
    rpn_train_anchors_per_image: int = _f(256, "Anchors sampled per image for the RPN loss.", "anchors", ge=1)
    rpn_positive_fraction: float = _f(0.5, "Largest fraction of positives among sampled anchors.", gt=0, le=1)
    rpn_fg_iou_threshold: float = _f(0.7, "Anchor IoU with a GT box at or above which it is positive.", "IoU", gt=0, le=1)
    rpn_bg_iou_threshold: float = _f(0.3, "Anchor IoU below which it is negative.", "IoU", ge=0, le=1)
    pre_nms_limit_training: int = _f(2000, "Top proposals kept per FPN level before NMS, training.", "boxes", ge=1)
    pre_nms_limit_inference: int = _f(1000, "Top proposals kept per FPN level before NMS, inference (architecture matterport: over all levels together, Matterport's PRE_NMS_LIMIT).", "boxes", ge=1)
    post_nms_rois_training: int = _f(2000, "Proposals kept per image after NMS, training.", "boxes", ge=1)
    post_nms_rois_inference: int = _f(1000, "Proposals kept per image after NMS, inference.", "boxes", ge=1)
    rpn_bbox_std_dev: list[_Positive] = _f([1.0, 1.0, 1.0, 1.0], "Delta normalisation of RPN box regression (inverse of torchvision's weights).")

    # ---------------------------------------------------------------- RoI heads
    train_rois_per_image: int = _f(512, "RoIs sampled per image for the box and mask heads (Matterport TRAIN_ROIS_PER_IMAGE).", "RoIs", ge=1)
    roi_positive_ratio: float = _f(0.25, "Largest fraction of positive RoIs among sampled ones.", gt=0, le=1)
    roi_fg_iou_threshold: float = _f(0.5, "RoI IoU with a GT box at or above which it is foreground.", "IoU", gt=0, le=1)
    pool_size: int = _f(7, "RoIAlign output side for the box head.", "cells", ge=1)
    mask_pool_size: int = _f(14, "RoIAlign output side for the mask head; masks are predicted at twice this.", "cells", ge=1)
    roi_sampling_ratio: int = _f(2, "RoIAlign sampling points per bin side.", ge=0)
    box_head_dim: int = _f(1024, "Width of the box head's fully connected layers (Matterport FPN_CLASSIF_FC_LAYERS_SIZE).", "units", ge=1)
    mask_head_channels: int = _f(256, "Channels of the mask head's convolutions.", "channels", ge=1)
    mask_head_convs: int = _f(4, "Number of 3x3 convolutions in the mask head.", ge=0)
    bbox_std_dev: list[_Positive] = _f([0.1, 0.1, 0.2, 0.2], "Delta normalisation of the box head (Matterport BBOX_STD_DEV; torchvision weights 10,10,5,5).")

    # ---------------------------------------------------------------- detection
    detection_min_confidence: float = _f(0.05, "Class score above which a detection is kept by the model (torchvision 0.05; Matterport 0.7).", "probability", ge=0, le=1)
    detection_nms_threshold: float = _f(0.5, "Per-class NMS IoU threshold of detections.", "IoU", gt=0, le=1)
    detection_max_instances: int = _f(100, "Most detections returned per image.", "detections", ge=1)
    mask_threshold: float = _f(0.5, "Mask probability at or above which a pixel belongs to the instance.", "probability", ge=0, le=1)
    mask_paste: MaskPaste = _f("subpixel", "How the MxM mask probabilities become a mask in the image. subpixel: the mask head is asked for the box moved by the half pixel its RoIAlign(aligned=False) targets are offset by, so its map covers the box exactly, and each image pixel samples the map bilinearly at its centre (Detectron2's paste). torchvision: torchvision's paste (box expanded by one cell, truncated to integers, one pixel larger), bit-exact with its models; its masks are about a pixel too wide, which costs mask AP on small objects (nuclei: 5 points).")
    mask_scoring: MaskScoring = _f("none", "Detection score: none: the box head's class probability (torchvision, Matterport); maskness: that times the mean mask probability over the mask's pixels (SOLOv2's maskness, inference/scoring.py), so that detections with hesitant outlines rank below crisp ones (nuclei: mask AP +2, AP50 +1.1 points). Applied when the masks are pasted, to exported models too; score thresholds then apply to the product.")
    tta_views: list[Literal["hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose"]] = _f([], "Test-time augmentation: also detect on these flips/rotations of each image, fuse the boxes (NMS clusters at detection_nms_threshold, score-weighted boxes, scores averaged over the views) and average the masks (modeling/tta.py); each view costs one more pass; [] detects once. PyTorch models only (not exported ones).", example=["hflip", "vflip", "rot180"])
    tta_scales: list[_Positive] = _f([], "Test-time augmentation: also detect at these multiples of the inference size (e.g. 1.25: small objects larger), fused with the other views as tta_views are; each scale costs one more pass at that size.", example=[1.25])
    fast: bool = _f(False, "Fast inference (detect --fast, maskrcnn.load(fast=True)): BatchNorm folded into the convs and channels-last (NHWC) weights; the convs and linear layers (backbone, FPN, RPN and box/mask heads) run under autocast in fast_dtype: bf16 on a CPU with native bf16 (AVX512-BF16, AMX, ARM BF16) and on CUDA (fp16 on GPUs without bf16), fp32 on other CPUs (e.g. AVX2 only). Box decoding, NMS, RoIAlign coordinates, score thresholds and mask pasting stay fp32. Outputs are close to, not bit-equal with, exact mode.")
    fast_dtype: Literal["auto", "bf16", "fp16", "fp32"] = _f("auto", "Precision of fast mode's dense layers: auto (bf16 where the CPU or GPU has it natively, fp16 on GPUs without bf16, else fp32), bf16 (on any CPU: emulated where not native, slow but correct), fp16 (CUDA only), fp32.")

    # ---------------------------------------------------------------- ground truth
    max_gt_instances: int = _f(100, "Most GT instances per training image; more are randomly dropped.", "instances", ge=1)
    use_mini_mask: bool = _f(False, "Store GT masks cropped to their box at mini_mask_shape (Matterport USE_MINI_MASK).")
    mini_mask_shape: list[int] = _f([56, 56], "Height, width of stored mini-masks.", "px")

    # ---------------------------------------------------------------- training
    images_per_gpu: int = _f(2, "Images per device per step (Matterport IMAGES_PER_GPU).", "images", ge=1)
    epochs: int = _f(12, "Passes over the training set (or of steps_per_epoch optimizer steps each).", "epochs", ge=1)
    steps_per_epoch: int | None = _f(None, "Optimizer steps per epoch (Matterport STEPS_PER_EPOCH): the sampler draws as many images as that takes, shuffling the training set again when it runs out; None: one pass over the training set.", "steps", ge=1, example=1000)
    layers: str = _f("all", "Trainable layers: heads, 3+, 4+, 5+, all, or a regex over parameter names.")
    learning_rate: float = _f(0.02, "Learning rate for a total batch of base_batch_size; scaled linearly to the real total batch.", "lr", gt=0)
    base_batch_size: int = _f(16, "Total batch that learning_rate is given for.", "images", ge=1)
    optimizer: Literal["sgd", "adamw"] = _f("sgd", "sgd (momentum, torchvision/Matterport) or adamw (betas 0.9, 0.999; learning_rate is AdamW's rate, ~1e-3).")
    momentum: float = _f(0.9, "SGD momentum (Matterport LEARNING_MOMENTUM).", ge=0, lt=1)
    weight_decay: float = _f(1e-4, "L2 weight decay on weights (none on norms and biases).", ge=0)
    lr_schedule: Literal["step", "cosine", "constant"] = _f("step", "Learning rate schedule after warmup.")
    lr_steps: list[float] = _f([0.667, 0.917], "Step schedule: fractions of the run at which the rate is multiplied by lr_gamma.")
    lr_gamma: float = _f(0.1, "Step schedule decay factor.", gt=0, le=1)
    warmup_iters: int = _f(500, "Linear warmup length.", "steps", ge=0)
    warmup_factor: float = _f(0.001, "Learning rate multiplier at the first warmup step.", gt=0, le=1)
    gradient_clip_norm: float | None = _f(5.0, "Global gradient norm clip (Matterport GRADIENT_CLIP_NORM); None disables.", gt=0)
    ema_decay: float | None = _f(None, "Exponential moving average of the weights (Polyak averaging, Ultralytics' ModelEMA, TF's use_moving_average): after every step the average moves towards the weights by 1 - decay; validation, checkpoints and the trained model hold the average (the raw weights stay in the state file for resume); e.g. 0.999 averages over ~1000 steps; None disables.", gt=0, lt=1, example=0.999)
    ema_warmup_steps: int = _f(2000, "Ramp of the EMA decay: decay * (1 - exp(-step / ema_warmup_steps)), so early weights are not kept long (Ultralytics' tau); 0: no ramp.", "steps", ge=0)
    max_train_minutes: float | None = _f(None, "Wall-clock training budget: the schedule is fitted to the steps that fit and training ends when it is spent; None: all epochs.", "min", gt=0, example=30)
    grad_accumulation: int = _f(1, "Steps whose gradients are summed before an optimizer step.", "steps", ge=1)
    amp: Literal["none", "bf16", "fp16", "auto"] = _f("auto", "Mixed precision of training: auto = bf16 autocast with channels-last on a CPU with native bf16 (AVX512-BF16, AMX, ARM BF16) and on CUDA (fp16 with a grad scaler on GPUs without bf16), fp32 elsewhere (e.g. AVX2-only CPUs); bf16 (any CPU, emulated where not native) or fp16 (CUDA) forces it; none: fp32. Losses, RoIAlign and box coding stay fp32.")
    loss_weights: dict[str, _NonNegative] = _f(
        {"rpn_class": 1.0, "rpn_bbox": 1.0, "mrcnn_class": 1.0, "mrcnn_bbox": 1.0, "mrcnn_mask": 1.0},
        "Weight of each loss term (Matterport LOSS_WEIGHTS); each head applies its own, and the model returns loss_<term>.",
    )
    mask_loss: MaskLoss = _f("bce", "Mask loss: bce (binary cross-entropy per pixel, Matterport's and torchvision's), dice (1 - soft dice of the predicted class's sigmoid per RoI, smooth 1) or bce+dice (their sum).")
    mask_dice_weight: float = _f(1.0, "Weight of the dice term in mask_loss dice and bce+dice (the whole mask term is then weighted by loss_weights.mrcnn_mask).", gt=0)
    class_loss_weights: list[_NonNegative] | None = _f(None, "Per-class weights of the classification and mask losses (length num_classes).", example=[1.0, 1.0, 2.0])
    repeat_factor_threshold: float | None = _f(None, "LVIS repeat-factor sampling threshold t (e.g. 0.001); None disables.", gt=0, le=1, example=0.001)
    num_workers: int = _f(2, "Data loader worker processes (0 loads in the main process).", "processes", ge=0)
    checkpoint_keep: int = _f(3, "Most recent epoch checkpoints kept besides the best.", "files", ge=1)
    checkpoint_every: int = _f(1, "Write the epoch checkpoint (weights and resume state) every N epochs; the last epoch and a stop inside an epoch (time budget, Ctrl-C) always write one. Raise it when epochs take seconds (a small data set): each pair is a full copy of the weights and optimizer state.", "epochs", ge=1)
    validate_every: int = _f(1, "Validate every N epochs (0 disables).", "epochs", ge=0)
    deterministic: bool = _f(False, "Deterministic algorithms and seeded workers (exact resume on CPU).")

    # ---------------------------------------------------------------- augmentation
    aug_hflip: float = _f(0.5, "Probability of a horizontal flip.", "probability", ge=0, le=1)
    aug_vflip: float = _f(0.0, "Probability of a vertical flip.", "probability", ge=0, le=1)
    aug_rot90: float = _f(0.0, "Probability of a random 90/180/270 degree rotation.", "probability", ge=0, le=1)
    aug_scale_jitter: list[_Positive] | None = _f(None, "Random factor range [lo, hi] multiplied into the resize scale; None disables.", example=[0.8, 1.25])
    aug_crop: list[int] | None = _f(None, "Random crop height, width applied after resizing; None disables.", "px", example=[512, 512])
    aug_brightness: float = _f(0.0, "Max relative brightness change.", ge=0, le=1)
    aug_contrast: float = _f(0.0, "Max relative contrast change.", ge=0, le=1)
    aug_blur: float = _f(0.0, "Probability of a Gaussian blur.", "probability", ge=0, le=1)
    aug_min_area: int = _f(4, "Instances with fewer visible pixels after augmentation are dropped.", "px", ge=0)

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

    @property
    def detect_resize_mode(self) -> str:
        """The resize mode of detection, evaluation and export: ``inference_resize_mode``, else
        ``image_resize_mode`` (never ``crop``: validation requires ``inference_resize_mode`` then)."""
        return self.inference_resize_mode or self.image_resize_mode

    def layer_regex(self) -> str:
        """The regular expression of trainable parameter names that ``layers`` denotes."""
        return LAYER_PRESETS.get(self.layers, self.layers)

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def create(cls, **values: Any) -> "Config":
        """Construct and validate (the same as ``Config(**values)``; kept for readability)."""
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with ``changes`` applied."""
        return Config.create(**{**self.model_dump(), **changes})

    def with_overrides(self, assignments: list[str]) -> "Config":
        """Apply ``--set key=value`` strings (values parsed as YAML: ``lr=0.01``, ``aug_crop=[256,256]``).

        Values are read with YAML's safe loader: a tag such as ``!!python/object`` is refused with a
        one-line error, never executed.
        """
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=0.01")
            key, raw = item.split("=", 1)
            key = key.strip()
            if key not in Config.model_fields:
                raise ConfigError(f"--set {key}: unknown config field{_suggest(key)}")
            changes[key] = parse_yaml(raw, f"--set {key}={_short(raw)}",
                                      fix=f"write a plain YAML value, e.g. --set {key}={_example_yaml(key)}")
        return self.replace(**changes)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        """Read a config file (or a shipped preset by name: ``nuclei``); every problem is one
        :class:`ConfigError` line that names the file."""
        path = Path(path)
        if not path.exists():
            from .configs import PRESETS, preset_path

            if str(path).removesuffix(".yaml") in PRESETS:  # a shipped preset by name: --config nuclei
                path = preset_path(str(path))
            else:
                raise ConfigError(f"{path}: config file not found; pass an existing YAML file to --config "
                                  f"or a shipped preset ({', '.join(PRESETS)})")
        data = parse_yaml(_read_config_text(path), str(path),
                          fix="fix the file (`maskrcnn config > config.yaml` writes a valid one)")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level, got a "
                              f"{type(data).__name__}; write one `field: value` per line")
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            raise ConfigError(f"{path}: unknown config field {str(unknown[0])!r}{_suggest(str(unknown[0]))}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

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
        """A table of every field: name, default, unit, doc and valid range."""
        lines = []
        for name, field in cls.model_fields.items():
            unit = (field.json_schema_extra or {}).get("unit", "")  # type: ignore[union-attr]
            bounds = _bounds(name)
            rng = f" Valid: {bounds}." if bounds else ""
            lines.append(f"{name:28s} {field.default!r:>24s} {unit:>14s}  {field.description}{rng}")
        return "\n".join(lines)


# -------------------------------------------------------------------- reading YAML

#: A config file is a few KB; anything this large is not one (and is not parsed).
_MAX_CONFIG_BYTES = 1 << 20


def _read_config_text(path: Path) -> str:
    """The text of a config file, or a one-line :class:`ConfigError` (folder, FIFO, binary, huge)."""
    import stat

    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path}: is a folder; pass a YAML config file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file (a pipe or device?); pass a YAML config file")
        if st.st_size > _MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {st.st_size} bytes is too large for a config file; pass a YAML config file")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc}); check the path and "
                          "its permissions") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: binary content, not a YAML text file; pass a YAML config file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 YAML") from None


def parse_yaml(text: str, where: str, fix: str) -> Any:
    """``yaml.safe_load(text)`` or a one-line :class:`ConfigError` ``"{where}: ...; {fix}"``.

    Only plain YAML is accepted: a tag such as ``!!python/object/apply:os.system`` is reported as
    an error (the safe loader never constructs it).
    """
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        tag = re.search(r"tag '([^']*)'", str(exc))
        what = f"YAML tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')!r}" if tag else "a YAML tag"
        raise ConfigError(f"{where}: {what} is not allowed (only plain values); {fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(exc)}); {fix}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply; {fix}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: the parser's problem and where it is (``line 3, column 7: ...``)."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


# -------------------------------------------------------------------- validation helpers

#: Names users bring from other toolkits, mapped to ours (used by the unknown-field suggestion).
_ALIASES = {
    "lr": "learning_rate", "base_lr": "learning_rate", "batch_size": "images_per_gpu", "num_epochs": "epochs",
    "max_epochs": "epochs", "min_size": "image_min_dim", "max_size": "image_max_dim", "workers": "num_workers",
    "classes": "num_classes", "depth": "backbone", "score_threshold": "detection_min_confidence",
    "nms_threshold": "detection_nms_threshold", "clip_grad": "gradient_clip_norm",
    "save_period": "checkpoint_every", "checkpoint_period": "checkpoint_every",
}


def _suggest(key: str) -> str:
    import difflib

    low = key.strip().lower()
    if low in Config.model_fields:
        return f"; did you mean {low!r}?"
    if low in _ALIASES:
        return f"; did you mean {_ALIASES[low]!r}?"
    close = difflib.get_close_matches(low, list(Config.model_fields), n=1)
    if not close:  # a distinctive part of a field name: 'hflip' -> aug_hflip
        close = [f for f in Config.model_fields if len(low) >= 4 and low in f][:1]
    return f"; did you mean {close[0]!r}?" if close else "; see `maskrcnn config --describe` for the fields"


def _short(value: Any, limit: int = 60) -> str:
    """``repr``-like text of a user value, cut to ``limit`` characters (values can be huge)."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _schema() -> dict[str, Any]:
    return Config.model_json_schema()["properties"]


def _example_yaml(field: str) -> str:
    """A valid value of ``field`` as YAML flow text: its example, else its default."""
    info = Config.model_fields[field]
    value = (info.json_schema_extra or {}).get("example")  # type: ignore[union-attr]
    if value is None:
        value = info.default
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip().removesuffix("\n...").strip()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _bounds(field: str) -> str:
    """The valid range of a number field (or of each item of a list field) as text: ``[0, 1]``,
    ``(0, 1]``, ``>= 1``; empty when unbounded."""
    schema = _schema().get(field, {})
    for part in [schema, *schema.get("anyOf", [])]:
        part = part.get("items", part) if part.get("type") == "array" else part
        if part.get("type") == "array" and isinstance(part.get("items"), dict):
            part = part["items"]
        lo = ("[", part["minimum"]) if "minimum" in part else ("(", part["exclusiveMinimum"]) if "exclusiveMinimum" in part else None
        hi = ("]", part["maximum"]) if "maximum" in part else (")", part["exclusiveMaximum"]) if "exclusiveMaximum" in part else None
        if lo and hi:
            return f"{lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        if hi:
            return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return ""


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_RULES = {
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "float_parsing": "must be a number", "float_type": "must be a number",
    "list_type": "must be a list", "string_type": "must be text", "bool_parsing": "must be true or false",
    "bool_type": "must be true or false", "dict_type": "must be a mapping of name: value",
}


def _format_validation_error(exc: ValidationError) -> str:
    """pydantic's first error as one line: ``field=value: must be <rule>; e.g. field: <example>``."""
    e = exc.errors()[0]
    msg = e["msg"]
    if msg.startswith("Value error, "):  # our own check (_first_error): already 'field: problem; fix'
        return " ".join(msg[len("Value error, "):].split())
    loc = [str(p) for p in e["loc"]]
    if e["type"] == "extra_forbidden":
        return f"unknown config field {loc[-1]!r}{_suggest(loc[-1])}"
    if not loc or loc[0] not in Config.model_fields:
        return f"config: {msg}"
    field = loc[0]
    where = field + "".join(f"[{p}]" if p.isdigit() else f"[{p!r}]" for p in loc[1:] if p not in ("list", "dict"))
    got = _short(e.get("input"))
    if e["type"] in _RANGE_ERRORS:
        bounds = _bounds(field)
        rule = f"must be {'in ' if bounds[:1] in '[(' else ''}{bounds}" if bounds else msg.replace("Input should be", "must be")
    elif e["type"] == "finite_number":
        rule = "must be a finite number, not NaN or infinity"
    elif e["type"] == "too_short":
        rule = "must not be empty" if e.get("ctx", {}).get("min_length") == 1 else msg.replace("List should", "must")
    else:
        rule = _TYPE_RULES.get(e["type"]) or msg.replace("Input should be", "must be").replace("Input should", "must")
    return f"{where}={got}: {rule}; e.g. {field}: {_example_yaml(field)}"


def _first_error(c: Config) -> str | None:
    """The first inconsistency among fields, as 'field: problem; fix' (single fields' ranges are
    checked by pydantic before this runs)."""
    n_levels = len(BACKBONE_STRIDES)
    if not _PLAIN_NAME.fullmatch(c.name) or set(c.name) <= {"."}:
        return (f"name={_short(c.name)!r}: must be a plain file name (letters, digits, '_', '-', '.', '+'; "
                "at most 100, no '/' or '..'): it names the run folder; e.g. name: balloon")
    if c.num_classes < 2:
        return f"num_classes={c.num_classes}: must count background plus at least one class (e.g. 2 for one class)"
    if c.class_names is not None and len(c.class_names) != c.num_classes:
        return (f"class_names has {len(c.class_names)} names but num_classes={c.num_classes}; "
                "list one name per class including 'BG' at index 0")
    backbone_problem = _backbone_problem(c)
    if backbone_problem:
        return backbone_problem
    if c.architecture == "matterport" and (c.fast or c.backbone not in ("resnet50", "resnet101")):
        return ("architecture=matterport: Matterport's network is resnet50/resnet101 in exact mode; "
                f"{'set fast: false' if c.fast else f'set backbone: resnet50 or resnet101 (not {c.backbone})'}")
    if c.backbone_strides != BACKBONE_STRIDES:
        return (f"backbone_strides={c.backbone_strides}: fixed at {BACKBONE_STRIDES} by the ResNet-FPN backbone "
                "(P2..P6) and not configurable; remove the field")
    if len(c.rpn_anchor_scales) != n_levels:
        return f"rpn_anchor_scales has {len(c.rpn_anchor_scales)} sizes; give one per FPN level ({n_levels}), e.g. [32, 64, 128, 256, 512]"
    if len(c.pixel_mean) != c.image_channel_count or len(c.pixel_std) != c.image_channel_count:
        return (f"pixel_mean/pixel_std have {len(c.pixel_mean)}/{len(c.pixel_std)} values but image_channel_count="
                f"{c.image_channel_count}; give one value per channel")
    for field in ("image_resize_mode", "inference_resize_mode"):  # the training and the detection geometry
        if getattr(c, field) == "pad64" and c.image_min_dim % 64:
            return (f"image_min_dim={c.image_min_dim} with {field}=pad64: must be divisible by 64 "
                    f"(e.g. {max(64, round(c.image_min_dim / 64) * 64)})")
        if getattr(c, field) in ("minmax", "square") and c.image_max_dim < c.image_min_dim:
            return f"image_max_dim={c.image_max_dim} is below image_min_dim={c.image_min_dim}; raise image_max_dim"
    if c.size_divisibility % 32:
        return f"size_divisibility={c.size_divisibility}: must be a multiple of 32 (the P6 stride needs it), e.g. 32"
    if c.image_resize_mode == "crop" and c.image_min_dim % c.size_divisibility:
        return (f"image_min_dim={c.image_min_dim} with crop: must be a multiple of size_divisibility={c.size_divisibility} "
                f"(e.g. {max(c.size_divisibility, round(c.image_min_dim / c.size_divisibility) * c.size_divisibility)})")
    if c.rpn_bg_iou_threshold > c.rpn_fg_iou_threshold:
        return (f"rpn_bg_iou_threshold={c.rpn_bg_iou_threshold} exceeds rpn_fg_iou_threshold={c.rpn_fg_iou_threshold}; "
                "lower it (e.g. 0.3 and 0.7)")
    for name in ("bbox_std_dev", "rpn_bbox_std_dev"):
        if len(getattr(c, name)) != 4:
            return f"{name}: four positive values (dy, dx, dh, dw scales), e.g. {_example_yaml(name)}"
    if len(c.mini_mask_shape) != 2 or min(c.mini_mask_shape) < 4:
        return f"mini_mask_shape={c.mini_mask_shape}: two sides of at least 4 px, e.g. [56, 56]"
    if c.layers not in LAYER_PRESETS:
        try:
            re.compile(c.layers)
        except re.error as exc:
            return f"layers={c.layers!r}: neither a preset ({', '.join(LAYER_PRESETS)}) nor a valid regex ({exc})"
    if set(c.loss_weights) != {"rpn_class", "rpn_bbox", "mrcnn_class", "mrcnn_bbox", "mrcnn_mask"}:
        return "loss_weights: give exactly rpn_class, rpn_bbox, mrcnn_class, mrcnn_bbox, mrcnn_mask"
    if not any(c.loss_weights.values()):
        return "loss_weights: every weight is 0, so nothing would be learned; give at least one positive weight"
    if c.mask_loss == "bce" and c.mask_dice_weight != 1.0:
        return (f"mask_dice_weight={c.mask_dice_weight} has no effect with mask_loss=bce; set mask_loss: bce+dice "
                "(or dice), or remove mask_dice_weight")
    option_problem = _option_problem(c)
    if option_problem:
        return option_problem
    if c.class_loss_weights is not None and len(c.class_loss_weights) != c.num_classes:
        return f"class_loss_weights has {len(c.class_loss_weights)} values; give one per class ({c.num_classes}, background first)"
    if c.lr_schedule == "step" and any(not 0 < s < 1 for s in c.lr_steps):
        return "lr_steps: fractions of the run strictly between 0 and 1, e.g. [0.667, 0.917]"
    if c.lr_schedule == "step" and c.lr_steps != sorted(c.lr_steps):
        return f"lr_steps={c.lr_steps}: must be in increasing order, e.g. [0.667, 0.917]"
    if c.aug_crop is not None:
        if len(c.aug_crop) != 2 or min(c.aug_crop) < 32:
            return f"aug_crop={c.aug_crop}: [height, width] of at least 32 px each, e.g. [512, 512], or null"
        largest = _largest_resized_side(c)
        if largest is not None and min(c.aug_crop) > largest:
            return (f"aug_crop={c.aug_crop}: larger than every resized image (at most {largest} px with "
                    f"image_resize_mode={c.image_resize_mode}), so it would never crop; use sides up to {largest} or null")
    if c.aug_scale_jitter is not None and (len(c.aug_scale_jitter) != 2 or not c.aug_scale_jitter[0] <= c.aug_scale_jitter[1]):
        return "aug_scale_jitter: [lo, hi] with 0 < lo <= hi, e.g. [0.8, 1.25], or null"
    if c.image_resize_mode == "crop" and c.inference_resize_mode is None:
        return ("inference_resize_mode: required with image_resize_mode=crop (random crops are for training only); "
                "set inference_resize_mode: pad64 (the training scale on whole images) or square")
    return None


def _option_problem(c: Config) -> str | None:
    """What is wrong with the weight average (``ema_*``) and test-time views (``tta_views``, ``tta_scales``)."""
    if len(set(c.tta_views)) != len(c.tta_views):
        return f"tta_views={c.tta_views}: each view once, e.g. [hflip, vflip, rot180]"
    if len(set(c.tta_scales)) != len(c.tta_scales) or 1.0 in c.tta_scales:
        return f"tta_scales={c.tta_scales}: distinct factors other than 1 (the image as it is is always a view), e.g. [1.25]"
    if c.ema_decay is None and c.ema_warmup_steps != 2000:
        return (f"ema_warmup_steps={c.ema_warmup_steps} has no effect without ema_decay; set ema_decay (e.g. 0.999) "
                "or remove ema_warmup_steps")
    return None


def _backbone_problem(c: Config) -> str | None:
    """What is wrong with ``backbone`` (a ResNet depth or ``timm:<model>``) and the fields tied to it."""
    examples = ", ".join(f"timm:{n}" for n in TIMM_EXAMPLES)
    if c.backbone in RESNET_DEPTHS:
        if c.timm_pretrained is not None:
            return (f"timm_pretrained: only for a timm backbone (backbone: timm:<model>), not {c.backbone}; "
                    "remove timm_pretrained")
        return None
    if not c.backbone.startswith("timm:"):
        return (f"backbone={_short(c.backbone)!r}: use {', '.join(RESNET_DEPTHS)} or timm:<model>, "
                f"e.g. {examples}")
    name = c.backbone[len("timm:"):]
    try:
        import timm
    except ImportError:
        return f"backbone={c.backbone}: needs the timm package; pip install 'maskrcnn[timm]'"
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"did you mean 'timm:{close[0]}'? " if close else ""
        return (f"backbone={_short(c.backbone)}: not a timm model; {hint}e.g. {examples} "
                "(timm.list_models() lists them all)")
    if c.backbone_width != 64:
        return f"backbone_width={c.backbone_width}: applies to ResNet backbones only; remove it with backbone={c.backbone}"
    return None


def _largest_resized_side(c: Config) -> int | None:
    """The longest side a training image can have after resizing (and scale jitter), before the
    random crop; None when unbounded (``none``, ``pad64``)."""
    jitter = c.aug_scale_jitter[1] if c.aug_scale_jitter else 1.0
    if c.image_resize_mode in ("minmax", "square"):
        return int(math.floor(c.image_max_dim * max(jitter, 1.0)))
    if c.image_resize_mode == "crop":
        return c.image_min_dim
    return None

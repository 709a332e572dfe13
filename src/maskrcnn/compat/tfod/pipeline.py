"""A TF Object Detection API ``pipeline.config`` mapped to a :class:`~maskrcnn.config.Config`.

Only fields with an equivalent here are mapped (``maskrcnn config --from-pipeline``):

=====================================================================  ===================================
pipeline.config                                                         Config
=====================================================================  ===================================
``faster_rcnn.num_classes``                                             ``num_classes`` (+1 background)
``image_resizer.keep_aspect_ratio_resizer.min/max_dimension``           ``image_min_dim``/``image_max_dim``
                                                                        (``image_resize_mode: minmax``)
``feature_extractor.type`` (``*resnet50*``/``*resnet101*``)             ``backbone``
``grid_anchor_generator`` scales x base size, aspect_ratios (w/h)       ``rpn_anchor_scales`` (one per
                                                                        level P2..P6), ``rpn_anchor_ratios``
                                                                        (h/w)
``multiscale_anchor_generator`` (5 levels)                              ``rpn_anchor_scales``/``_ratios``
``first_stage_nms_iou_threshold``, ``first_stage_max_proposals``        ``rpn_nms_threshold``,
                                                                        ``post_nms_rois_training/inference``
``first_stage_minibatch_size``, ``..._positive_balance_fraction``       ``rpn_train_anchors_per_image``,
                                                                        ``rpn_positive_fraction``
``second_stage_batch_size``, ``second_stage_balance_fraction``          ``train_rois_per_image``,
                                                                        ``roi_positive_ratio``
``batch_non_max_suppression`` score / iou threshold, max total          ``detection_min_confidence``,
                                                                        ``detection_nms_threshold``,
                                                                        ``detection_max_instances``
``mask_rcnn_box_predictor.mask_height/width``                           ``mask_pool_size`` (= side / 2)
``train_config.batch_size``                                             ``images_per_gpu``, ``base_batch_size``
``train_config.num_steps``                                              ``epochs`` (needs the image count)
``momentum_optimizer`` / ``adam_optimizer``                             ``optimizer``, ``momentum``
``manual_step_learning_rate``, ``cosine_decay_learning_rate``,          ``learning_rate``, ``lr_schedule``,
``constant_learning_rate``                                              ``lr_steps``, ``lr_gamma``,
                                                                        ``warmup_iters``, ``warmup_factor``
``gradient_clipping_by_norm``                                           ``gradient_clip_norm``
``optimizer.use_moving_average``, ``moving_average_decay``            ``ema_decay``
``random_horizontal_flip`` / ``random_vertical_flip``                   ``aug_hflip`` / ``aug_vflip``: 0.5
``train_input_reader.label_map_path`` (when the file is there)          ``num_classes``, ``class_names``
=====================================================================  ===================================

Every other field is returned in :attr:`PipelineMapping.unmapped` with the reason, and every
approximation in :attr:`PipelineMapping.notes`. The learning rate keeps its value:
``base_batch_size`` is set to TF's ``batch_size`` (the total over all GPUs), so our linear
scaling gives TF's rate at TF's batch.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Config, ConfigError
from ...errors import DataError
from .textformat import Identifier, TextFormatError, TextMessage, parse, read_text_file

__all__ = ["PipelineMapping", "config_from_pipeline", "map_pipeline"]

#: Why a part of a pipeline.config has no equivalent (longest matching dotted prefix wins).
REASONS: dict[str, str] = {
    "model": "this part of the model has no equivalent in the ResNet-FPN Mask R-CNN",
    "model.faster_rcnn.feature_extractor": "TF feature extractor settings; the backbone here is a ResNet-FPN",
    "model.faster_rcnn.first_stage_box_predictor_conv_hyperparams": "initialisers and regularisers are fixed here "
                                                                    "(weight_decay is the L2 of every weight)",
    "model.faster_rcnn.second_stage_box_predictor": "TF's box/mask head layout; the heads here are torchvision's",
    "model.faster_rcnn.first_stage_anchor_generator": "anchor strides and offsets follow the FPN levels (4..64 px)",
    "model.faster_rcnn.first_stage_atrous_rate": "no atrous backbone here",
    "model.faster_rcnn.initial_crop_size": "RoI pooling is RoIAlign to pool_size 7 / mask_pool_size, not crop-and-resize + max-pool",
    "model.faster_rcnn.maxpool_kernel_size": "RoI pooling is RoIAlign, without the max-pool",
    "model.faster_rcnn.maxpool_stride": "RoI pooling is RoIAlign, without the max-pool",
    "model.faster_rcnn.first_stage_nms_score_threshold": "the RPN keeps proposals by rank, not by score",
    "model.faster_rcnn.first_stage_localization_loss_weight": "losses are normalised differently; loss_weights stays 1.0",
    "model.faster_rcnn.first_stage_objectness_loss_weight": "losses are normalised differently; loss_weights stays 1.0",
    "model.faster_rcnn.second_stage_localization_loss_weight": "losses are normalised differently; loss_weights stays 1.0",
    "model.faster_rcnn.second_stage_classification_loss_weight": "losses are normalised differently; loss_weights stays 1.0",
    "model.faster_rcnn.second_stage_mask_prediction_loss_weight": "losses are normalised differently; loss_weights stays 1.0",
    "model.faster_rcnn.image_resizer": "only keep_aspect_ratio_resizer min/max has an equivalent (minmax)",
    "model.faster_rcnn.second_stage_post_processing": "no equivalent in the detection step",
    "train_config": "no equivalent training option",
    "train_config.fine_tune_checkpoint": "TF checkpoints do not load: start from --weights coco or --weights imagenet",
    "train_config.fine_tune_checkpoint_type": "TF checkpoints do not load: start from --weights coco or --weights imagenet",
    "train_config.from_detection_checkpoint": "TF checkpoints do not load: start from --weights coco or --weights imagenet",
    "train_config.data_augmentation_options": "no equivalent augmentation (see the aug_* fields)",
    "train_config.optimizer": "no equivalent optimizer setting",
    "train_config.num_steps": "training length is in epochs: pass --num-images N (training images) to convert steps",
    "train_input_reader": "data: pass the TFRecords to maskrcnn train --data (label_map.pbtxt next to them)",
    "eval_config": "evaluation: maskrcnn evaluate / train --val-data compute COCO box and mask AP",
    "eval_input_reader": "data: pass the validation TFRecords to maskrcnn train --val-data or maskrcnn evaluate",
    "graph_rewriter": "quantisation-aware training has no equivalent",
}


@dataclass
class PipelineMapping:
    """What :func:`config_from_pipeline` made of a pipeline.config.

    Attributes:
        config: the validated config.
        mapped: ``{config field: value}`` taken from the pipeline.
        unmapped: ``(dotted path, value, reason)`` of each pipeline field not mapped.
        notes: approximations and things to check, one line each.
    """

    config: Config
    mapped: dict[str, Any]
    unmapped: list[tuple[str, Any, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def comment_lines(self) -> list[str]:
        """YAML comment lines: the notes, then each unmapped field with its reason."""
        lines = [f"# note: {n}" for n in self.notes]
        if self.unmapped:
            lines.append(f"# not mapped ({len(self.unmapped)} fields of the pipeline.config without an equivalent here):")
            lines += [f"#   {path} = {_show(value)}: {reason}" for path, value, reason in self.unmapped]
        return lines


def config_from_pipeline(path: str | os.PathLike[str], *, num_images: int | None = None,
                         base: Config | None = None) -> PipelineMapping:
    """Read ``path`` (text-format ``TrainEvalPipelineConfig``) and map it onto ``base`` (default
    :class:`Config`). ``num_images`` (training images) turns ``num_steps`` into ``epochs``; when
    not given, the records of ``train_input_reader`` are counted if they are on disk. Every
    problem is a one-line :class:`ConfigError` naming the file."""
    path = Path(path)
    text = read_text_file(path, "pipeline config", ConfigError, "model { faster_rcnn { ... } }",
                          "pass the pipeline.config of your TF OD API model")
    try:
        root = parse(text)
    except TextFormatError as exc:
        raise ConfigError(f"{path}: {exc}; fix the pipeline config (protobuf text format)") from None
    return map_pipeline(root, str(path), folder=path.parent, num_images=num_images, base=base)


def map_pipeline(root: TextMessage, source: str, *, folder: Path | None = None, num_images: int | None = None,
                 base: Config | None = None) -> PipelineMapping:
    """Map a parsed pipeline; ``source`` names it in messages, ``folder`` resolves relative paths."""
    if not root.has("model") and not root.has("train_config"):
        raise ConfigError(f"{source}: neither 'model' nor 'train_config' at the top level; this is not a TF OD API "
                          "pipeline.config")
    m = _Mapper(source, folder or Path("."), num_images)
    m.model(root.message("model"))
    m.train(root.message("train_config"), root.message("train_input_reader"))
    base = base or Config()
    try:
        config = base.replace(**m.values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: the mapped values are not a valid config ({exc}); fix the pipeline value or "
                          "change the field with --set") from None
    unmapped = [(p, v, _reason(p)) for p, v, _ in root.unused_leaves()]
    return PipelineMapping(config, dict(m.values), unmapped, m.notes)


# --------------------------------------------------------------------------- the mapper


class _Mapper:
    def __init__(self, source: str, folder: Path, num_images: int | None) -> None:
        self.source = source
        self.folder = folder
        self.num_images = num_images
        self.values: dict[str, Any] = {}
        self.notes: list[str] = []
        self.batch: int | None = None

    def number(self, msg: TextMessage, name: str, *, integer: bool = False, default: Any = None) -> Any:
        value = msg.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            line = msg.entries(name)[-1].line if msg.entries(name) else msg.line
            raise ConfigError(f"{self.source}: line {line}: {msg.path}.{name} is {_show(value)}, not {kind}; fix the value")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.source}: {msg.path}.{name} is {value}; give a finite number")
        return value

    def flag(self, msg: TextMessage, name: str, default: bool) -> bool:
        """A boolean field (``true``/``false``, also 1/0), marked used."""
        value = msg.get(name, default)
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "t", "1"):
            return True
        if str(value).lower() in ("false", "f", "0"):
            return False
        raise ConfigError(f"{self.source}: {msg.path}.{name} is {_show(value)}; write true or false")

    # ----------------------------------------------------------------- model
    def model(self, model: TextMessage | None) -> None:
        if model is None:
            return
        fr = model.message("faster_rcnn")
        if fr is None:
            kind = model.oneof()
            self.notes.append(f"model.{kind[0] if kind else '?'}: not a Faster/Mask R-CNN model; only the training "
                              "settings were mapped")
            return
        n = self.number(fr, "num_classes", integer=True)
        if n is not None:
            self.values["num_classes"] = n + 1
        if fr.get("number_of_stages", 3) != 3:
            self.notes.append("number_of_stages is not 3: TF trains a box-only model; this config trains Mask R-CNN")
        self.resizer(fr.message("image_resizer"))
        self.backbone(fr.message("feature_extractor"))
        self.anchors(fr.message("first_stage_anchor_generator"))
        for name, target in (("first_stage_nms_iou_threshold", ("rpn_nms_threshold",)),
                             ("first_stage_max_proposals", ("post_nms_rois_training", "post_nms_rois_inference")),
                             ("first_stage_minibatch_size", ("rpn_train_anchors_per_image",)),
                             ("first_stage_positive_balance_fraction", ("rpn_positive_fraction",)),
                             ("second_stage_batch_size", ("train_rois_per_image",)),
                             ("second_stage_balance_fraction", ("roi_positive_ratio",))):
            value = self.number(fr, name)
            if value is not None:
                for t in target:
                    self.values[t] = value
        self.post_processing(fr.message("second_stage_post_processing"))
        predictor = fr.message("second_stage_box_predictor")
        box = predictor.message("mask_rcnn_box_predictor") if predictor is not None else None
        if box is not None:
            self.mask_size(box)
            if not self.flag(box, "predict_instance_masks", True):
                self.notes.append("predict_instance_masks is false in the pipeline; this config trains masks anyway")

    def resizer(self, resizer: TextMessage | None) -> None:
        keep = resizer.message("keep_aspect_ratio_resizer") if resizer is not None else None
        if keep is None:
            if resizer is not None:
                self.notes.append("image_resizer is not keep_aspect_ratio_resizer; the minmax defaults are used")
            return
        lo = self.number(keep, "min_dimension", integer=True, default=600)
        hi = self.number(keep, "max_dimension", integer=True, default=1024)
        self.values.update(image_resize_mode="minmax", image_min_dim=lo, image_max_dim=hi)

    def backbone(self, extractor: TextMessage | None) -> None:
        if extractor is None:
            return
        kind = extractor.entries("type")
        text = str(kind[-1].value) if kind else ""
        for depth in ("resnet101", "resnet50"):
            if depth in text:
                extractor.get("type")
                self.values["backbone"] = depth
                return
        if text:
            self.notes.append(f"feature extractor {text!r} has no equivalent; the backbone is "
                              f"{self.values.get('backbone', 'resnet50')} (--set backbone=resnet101 for a larger one)")

    def anchors(self, gen: TextMessage | None) -> None:
        if gen is None:
            return
        grid, multi = gen.message("grid_anchor_generator"), gen.message("multiscale_anchor_generator")
        if grid is not None:
            scales = [self._positive(grid, "scales", v) for v in grid.get_all("scales")] or [0.5, 1.0, 2.0]
            ratios = [self._positive(grid, "aspect_ratios", v) for v in grid.get_all("aspect_ratios")] or [0.5, 1.0, 2.0]
            base_h = self.number(grid, "height", default=256)
            base_w = self.number(grid, "width", default=256)
            sizes = sorted(s * math.sqrt(base_h * base_w) for s in scales)
            levels = _five_levels(sizes)
            if levels != sizes:
                self.notes.append(f"TF's single-level grid anchors {_nums(sizes)} became one size per FPN level "
                                  f"P2..P6: {_nums(levels)}")
            if base_h != base_w:
                self.notes.append(f"base_anchor_size {base_h}x{base_w} is not square; anchors use sqrt(h*w)")
        elif multi is not None:
            lo = self.number(multi, "min_level", integer=True, default=3)
            hi = self.number(multi, "max_level", integer=True, default=7)
            scale = self.number(multi, "anchor_scale", default=4.0)
            ratios = [self._positive(multi, "aspect_ratios", v) for v in multi.get_all("aspect_ratios")] or [0.5, 1.0, 2.0]
            levels = _five_levels([scale * 2 ** level for level in range(lo, hi + 1)])
            if hi - lo + 1 != 5:
                self.notes.append(f"anchors of levels {lo}..{hi} became one size per FPN level P2..P6: {_nums(levels)}")
        else:
            return
        self.values["rpn_anchor_scales"] = levels
        # TF's aspect ratio is width / height; ours is height / width
        self.values["rpn_anchor_ratios"] = sorted({_tidy(1.0 / r) for r in ratios})

    def _positive(self, msg: TextMessage, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{self.source}: {msg.path}.{name} has {_show(value)}; give positive numbers")
        return float(value)

    def post_processing(self, post: TextMessage | None) -> None:
        nms = post.message("batch_non_max_suppression") if post is not None else None
        if post is not None and str(post.get("score_converter", "SOFTMAX")) != "SOFTMAX":
            post.entries("score_converter")[-1].used = False
            self.notes.append("score_converter is not SOFTMAX; class scores here are a softmax")
        if nms is None:
            return
        for name, target in (("score_threshold", "detection_min_confidence"), ("iou_threshold", "detection_nms_threshold"),
                             ("max_total_detections", "detection_max_instances")):
            value = self.number(nms, name, integer=name.startswith("max"))
            if value is not None:
                self.values[target] = value
        per_class = nms.entries("max_detections_per_class")
        total = self.values.get("detection_max_instances", 100)
        if per_class and isinstance(per_class[-1].value, int) and per_class[-1].value >= total:
            per_class[-1].used = True  # no limit in effect: the total caps first, as here
        if nms.get("score_threshold") == 0:
            self.notes.append("score_threshold 0 keeps every detection up to detection_max_instances; "
                              "detection_min_confidence 0.05 is torchvision's usual value")

    def mask_size(self, box: TextMessage) -> None:
        h = self.number(box, "mask_height", integer=True)
        w = self.number(box, "mask_width", integer=True)
        if h is None and w is None:
            return
        side = max(h or 15, w or 15)  # TF's defaults: 15 x 15
        pool = max(1, math.ceil(side / 2))
        self.values["mask_pool_size"] = pool
        if (h or 15) != (w or 15) or 2 * pool != side:
            self.notes.append(f"masks {h or 15}x{w or 15} became {2 * pool}x{2 * pool} (masks here are square, twice "
                              "mask_pool_size)")

    # ----------------------------------------------------------------- training
    def train(self, train: TextMessage | None, reader: TextMessage | None) -> None:
        self.label_map(reader)
        if train is None:
            return
        batch = self.number(train, "batch_size", integer=True)
        if batch is not None:
            if batch < 1:
                raise ConfigError(f"{self.source}: train_config.batch_size is {batch}; give a batch of at least 1")
            self.batch = batch
            self.values.update(images_per_gpu=batch, base_batch_size=batch)
            if batch > 1:
                self.notes.append(f"batch_size {batch} is TF's total over all GPUs: with N GPUs use "
                                  f"--set images_per_gpu={batch}/N (the learning rate stays right)")
        clip = self.number(train, "gradient_clipping_by_norm")
        if clip is not None:
            self.values["gradient_clip_norm"] = clip if clip > 0 else None
        steps = train.entries("num_steps")
        num_steps = steps[-1].value if steps and isinstance(steps[-1].value, int) and steps[-1].value > 0 else None
        self.optimizer(train.message("optimizer"), num_steps)
        if num_steps is not None:
            self.epochs(train, num_steps, reader)
        for option in train.messages("data_augmentation_options"):
            for name, target in (("random_horizontal_flip", "aug_hflip"), ("random_vertical_flip", "aug_vflip")):
                flip = option.message(name)
                if flip is not None:
                    self.values[target] = 0.5
                    option.entries(name)[-1].used = True

    def epochs(self, train: TextMessage, num_steps: int, reader: TextMessage | None) -> None:
        images, how = self.num_images, "--num-images"
        if images is None:
            images, how = self._count_records(reader), "the records of train_input_reader"
        if not images:
            return
        batch = self.batch or 1
        train.get("num_steps")
        self.values["epochs"] = max(1, math.ceil(num_steps * batch / images))
        self.notes.append(f"num_steps {num_steps} x batch {batch} over {images} training images ({how}) = "
                          f"{self.values['epochs']} epochs")

    def optimizer(self, opt: TextMessage | None, num_steps: int | None) -> None:
        kind = opt.oneof() if opt is not None else None
        if opt is None or kind is None:
            return
        name, body = kind
        if name == "momentum_optimizer":
            self.values["optimizer"] = "sgd"
            momentum = self.number(body, "momentum_optimizer_value", default=0.9)
            self.values["momentum"] = momentum
        elif name == "adam_optimizer":
            self.values["optimizer"] = "adamw"
            self.notes.append("adam_optimizer became adamw (decoupled weight decay, weight_decay 1e-4)")
        else:
            return
        if self.flag(opt, "use_moving_average", False):
            decay = self.number(opt, "moving_average_decay", default=0.9999)
            if not 0 < decay < 1:
                raise ConfigError(f"{self.source}: {opt.path}.moving_average_decay is {decay}; give a decay in (0, 1), "
                                  "e.g. 0.9999")
            self.values["ema_decay"] = decay
            self.notes.append(f"use_moving_average: ema_decay {decay:g}; the decay ramps up over ema_warmup_steps "
                              "(2000) instead of TF's min(decay, (1 + step) / (10 + step))")
        lr = body.message("learning_rate")
        kind2 = lr.oneof() if lr is not None else None
        if kind2 is None:
            return
        schedule, s = kind2
        if schedule == "constant_learning_rate":
            self.values.update(lr_schedule="constant", learning_rate=self.number(s, "learning_rate", default=0.002))
        elif schedule == "cosine_decay_learning_rate":
            self.cosine(s, num_steps)
        elif schedule == "manual_step_learning_rate":
            self.manual_step(s, num_steps)

    def cosine(self, s: TextMessage, num_steps: int | None) -> None:
        base = self.number(s, "learning_rate_base", default=0.002)
        warm_steps = self.number(s, "warmup_steps", integer=True, default=0)
        warm_lr = self.number(s, "warmup_learning_rate", default=0.0)
        total = self.number(s, "total_steps", integer=True, default=4000000)
        self.values.update(lr_schedule="cosine", learning_rate=base, warmup_iters=warm_steps)
        if warm_steps:
            factor = _tidy(warm_lr / base) if base > 0 else 0.0
            self.values["warmup_factor"] = min(1.0, factor) if factor > 0 else 0.001
            if factor <= 0:
                self.notes.append("warmup_learning_rate 0 became warmup_factor 0.001 (it must be above 0)")
        if num_steps is not None and total != num_steps:
            self.notes.append(f"cosine total_steps {total} differs from num_steps {num_steps}; the cosine here spans "
                              "the whole run")
        if s.get("hold_base_rate_steps", 0):
            s.entries("hold_base_rate_steps")[-1].used = False

    def manual_step(self, s: TextMessage, num_steps: int | None) -> None:
        initial = self.number(s, "initial_learning_rate", default=0.002)
        self.values.update(lr_schedule="step", learning_rate=initial)
        points = []
        for entry in s.messages("schedule"):
            points.append((self.number(entry, "step", integer=True, default=0), self.number(entry, "learning_rate", default=initial)))
        if self.flag(s, "warmup", False):
            s.entries("warmup")[-1].used = False  # listed: TF's linear ramp to the first step differs
        if not points:
            self.values["lr_schedule"] = "constant"
            return
        if num_steps is None:
            for entry in s.messages("schedule"):
                for f in entry.fields:
                    f.used = False
            self.values["lr_schedule"] = "constant"
            self.notes.append("manual_step_learning_rate without num_steps: the steps cannot be placed in the run; "
                              "the rate is constant (set lr_steps as fractions of the run)")
            return
        points.sort()
        self.values["lr_steps"] = [_tidy(step / num_steps) for step, _ in points]
        rates = [initial] + [rate for _, rate in points]
        ratios = [b / a for a, b in zip(rates, rates[1:]) if a > 0]
        if ratios:
            self.values["lr_gamma"] = _tidy(min(1.0, max(ratios[0], 1e-12)))
            if any(abs(r - ratios[0]) > 1e-6 * ratios[0] for r in ratios[1:]) or ratios[0] > 1:
                self.notes.append(f"manual steps multiply the rate by {_nums(ratios)}; one lr_gamma "
                                  f"({self.values['lr_gamma']}) is used at every step")

    def label_map(self, reader: TextMessage | None) -> None:
        if reader is None:
            return
        entries = reader.entries("label_map_path")
        if not entries or not isinstance(entries[-1].value, str):
            return
        path = self._existing(entries[-1].value)
        if path is None:
            return
        from .labelmap import read_label_map

        try:
            lm = read_label_map(path)
        except DataError as exc:
            self.notes.append(f"label_map_path: {exc}; class names not taken")
            return
        entries[-1].used = True
        tf_classes = self.values.get("num_classes")
        self.values["num_classes"] = len(lm.items) + 1
        self.values["class_names"] = ["BG"] + [i.class_name for i in lm.items]
        if tf_classes is not None and tf_classes != len(lm.items) + 1:
            self.notes.append(f"num_classes {tf_classes - 1} counts label-map ids up to {max(lm.ids)}; {path.name} has "
                              f"{len(lm.items)} classes, so num_classes is {len(lm.items) + 1} (ids are mapped to 1..K)")

    def _count_records(self, reader: TextMessage | None) -> int | None:
        tf_reader = reader.message("tf_record_input_reader") if reader is not None else None
        if tf_reader is None:
            return None
        from .records import count_records

        total, entries = 0, tf_reader.entries("input_path")
        for entry in entries:
            matches = sorted(glob.glob(str(self._resolve(str(entry.value)))))
            if not matches:
                return None
            total += sum(count_records(m) for m in matches)
        if total:
            for entry in entries:
                entry.used = True
        return total or None

    def _resolve(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() or p.exists() else self.folder / p

    def _existing(self, text: str) -> Path | None:
        p = self._resolve(text)
        return p if p.is_file() else None


def _five_levels(sizes: list[float]) -> list[float]:
    """One anchor size per FPN level P2..P6: ``sizes`` as they are when there are five, else
    halved below the smallest (or doubled above the largest) / cut to five."""
    levels = sorted(_tidy(s) for s in sizes)
    while len(levels) < 5:
        levels = [_tidy(levels[0] / 2)] + levels if levels[0] / 2 >= 8 else levels + [_tidy(levels[-1] * 2)]
    return levels[:5]


def _tidy(x: float) -> float | int:
    """A float without binary noise (``0.30000000000000004`` -> 0.3); whole numbers as ints."""
    r = float(f"{x:.10g}")
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


def _nums(values: list[float]) -> str:
    """``[32, 64, 128]``: numbers for a message."""
    return "[" + ", ".join(f"{_tidy(v):g}" for v in values) + "]"


def _show(value: Any) -> str:
    if isinstance(value, Identifier):
        return str(value)
    return repr(value)


def _reason(path: str) -> str:
    best = ""
    for prefix in REASONS:
        if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return REASONS.get(best, "no equivalent here")

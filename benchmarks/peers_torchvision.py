"""The torchvision peers of ``benchmarks/nuclei.py``: torchvision's Mask R-CNN trained two ways.

* ``tv-recipe`` (:func:`run_tv_recipe`): ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
  num_classes=2)`` at our ResNet depth as torchvision's reference scripts train it: its transform
  (min_size 800, max_size 1333), SGD 0.02 * batch / 16 with momentum 0.9 and weight decay 1e-4,
  linear warmup over min(1000, iterations per epoch - 1) iterations, the 26-epoch schedule's x0.1
  steps at the same fractions (16/26, 22/26) of the time budget, horizontal flips, batch 2.
* ``tv-ours-pipeline`` (:func:`run_tv_ours_pipeline`): the same torchvision model given what a
  capable torchvision user would copy from our nuclei preset: our training samples (the data
  pipeline :class:`maskrcnn.data.pipeline.TrainingDataset` and the engine's loader: random 256x256
  crops of the image upscaled >= 2x, flips both ways, 90-degree turns, tiny instances dropped),
  its transform told not to resize them (``_skip_resize``) and at inference to resize each image by
  our preset's rule (:func:`maskrcnn.data.resize.plan_resize` of ``inference_resize_mode``: 2x),
  our input normalisation (bright images inverted, per-image standardisation:
  :func:`maskrcnn.modeling.transform.normalize_input` in place of its ImageNet mean/std), the
  preset's anchors (8-128 px), RPN and RoI sampling sizes, detection limits and NMS threshold, and
  our optimizer and schedule (:func:`maskrcnn.engine.optim.build_optimizer`: AdamW at the preset's
  rate, no decay on norms and biases; warmup and cosine decay re-fitted after every step to the
  steps the time budget allows, as the engine's ``TimeBudgetHook`` does; gradient clipping) and
  its ``amp`` rule (:func:`maskrcnn.engine.runtime.resolve_amp`: bf16 autocast and channels-last
  where the CPU has native bf16, else fp32; training only, detection in fp32 as ours).
  What stays torchvision's is the network (full-width ResNet, 256-channel FPN and heads) and its
  losses and post-processing.

Both return a row of :func:`nuclei_common.make_row`; their soft masks are thresholded at >= 0.5 and
scored by the same :class:`~maskrcnn.evaluation.Evaluator` as ours.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from maskrcnn.config import Config
from maskrcnn.data.dataset import Dataset
from maskrcnn.engine.budget import TimeBudget

from nuclei_common import Predictions, evaluate_predictions, loadavg, make_row

__all__ = ["build_peer", "build_tv_ours_pipeline", "set_inference_size", "run_tv_recipe", "run_tv_ours_pipeline",
           "PEER_BATCH"]

PEER_BATCH = 2
PEER_MIN_SIZE, PEER_MAX_SIZE = 800, 1333


def build_peer(depth: str, **kwargs: Any) -> torch.nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **kwargs)``;
    for another ResNet depth, exactly what that builder does with it: ``resnet_fpn_backbone`` with
    all 5 stages trainable and BatchNorm trained (the builder's choice without weights)."""
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    kwargs = {"min_size": PEER_MIN_SIZE, "max_size": PEER_MAX_SIZE, **kwargs}
    if depth == "resnet50":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, **kwargs)
    backbone = resnet_fpn_backbone(backbone_name=depth, weights=None, norm_layer=torch.nn.BatchNorm2d, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=2, **kwargs)


def _predict(model: torch.nn.Module, images: list[torch.Tensor]) -> list[Predictions]:
    """torchvision's outputs as :data:`nuclei_common.Predictions` (soft masks thresholded at 0.5)."""
    with torch.no_grad():
        outs = model(images)
    return [(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy(), (o["masks"][:, 0] >= 0.5).numpy())
            for o in outs]


# ============================================================================== the reference recipe
def _recipe_sample(ds: Dataset, image_id: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """torchvision's reference preprocessing: the image as float [0, 1], boxes from the masks, hflip 0.5."""
    from maskrcnn.data.augment import boxes_from_masks
    from maskrcnn.data.images import to_float_tensor

    image = to_float_tensor(ds.load_image(image_id))
    masks, _ = ds.load_mask(image_id)
    masks = np.ascontiguousarray(np.moveaxis(masks, 2, 0))
    masks = masks[masks.any(axis=(1, 2))]
    if rng.random() < 0.5:
        image = image.flip(-1)
        masks = np.ascontiguousarray(masks[:, :, ::-1])
    boxes = boxes_from_masks(masks)
    target = {"boxes": torch.from_numpy(boxes).float(), "labels": torch.ones(len(masks), dtype=torch.int64),
              "masks": torch.from_numpy(masks.astype(np.uint8))}
    return image, target


def _check_loss(label: str, step: int, losses: dict[str, torch.Tensor]) -> float:
    loss = float(sum(float(v.detach()) for v in losses.values()))
    if not math.isfinite(loss):
        raise RuntimeError(f"{label}: loss is {loss} at step {step}; {({k: float(v.detach()) for k, v in losses.items()})}")
    return loss


def _finish(label: str, log: Callable[[str], None], model: torch.nn.Module, val_ds: Dataset,
            predict: Callable[[list[int]], list[Predictions]], n_params: int, steps: int, images: int, clock: TimeBudget,
            train_s: float, n_train: int, load_before: Any, last_loss: float | None) -> dict[str, Any]:
    """After training: log, score ``predict`` on ``val_ds`` with the model in eval mode, the result row."""
    load_after = loadavg()
    log(f"[{label}] trained {steps} steps in {train_s:.0f} s")
    model.eval()
    report, eval_s = evaluate_predictions(val_ds, predict)
    return make_row(label, None, n_params, steps, images, clock.step_times, train_s, eval_s, report, n_train,
                    load_before, load_after, last_loss)


def _log_step(log: Callable[[str], None], label: str, step: int, loss: float, losses: dict[str, torch.Tensor],
              lr: float, clock: TimeBudget) -> None:
    if step % 10 == 0 or step <= 3:
        log(f"[{label}] step {step}, loss {loss:.4f} ({', '.join(f'{k} {float(v.detach()):.3f}' for k, v in losses.items())}), "
            f"lr {lr:.3g}, {clock.step_seconds():.2f} s/step, {clock.elapsed:.0f} s")


def run_tv_recipe(train_ds: Dataset, val_ds: Dataset, budget_s: float, seed: int, log: Callable[[str], None],
                  max_steps: int | None = None, depth: str = "resnet50", label: str = "tv-recipe") -> dict[str, Any]:
    """Train and score the ``tv-recipe`` peer (see the module doc)."""
    from maskrcnn.data.images import to_float_tensor

    load_before = loadavg()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clock = TimeBudget(budget_s, max_steps=max_steps)
    model = build_peer(depth)
    n_params = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = 0.02 * PEER_BATCH / 16
    opt = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    ids = [int(i) for i in train_ds.image_ids]
    iters_per_epoch = math.ceil(len(ids) / PEER_BATCH)
    warmup_iters = min(1000, iters_per_epoch - 1)
    warmup_factor = 1.0 / 1000
    milestones = (16 / 26, 22 / 26)
    model.train()
    step, images_seen, last_loss, train_s = 0, 0, None, 0.0
    stop = False
    epoch = 0
    while not stop:
        order = rng.permutation(len(ids))
        for b in range(0, len(order), PEER_BATCH):
            t0 = time.perf_counter()
            factor = 1.0
            if epoch == 0 and step < warmup_iters:  # LinearLR(start_factor=1/1000, total_iters=warmup_iters)
                alpha = step / warmup_iters
                factor = warmup_factor * (1 - alpha) + alpha
            progress = len(clock.step_times) / max_steps if max_steps else clock.elapsed / clock.seconds
            factor *= 0.1 ** sum(progress >= m for m in milestones)
            for g in opt.param_groups:
                g["lr"] = base_lr * factor
            batch = [_recipe_sample(train_ds, ids[k], rng) for k in order[b:b + PEER_BATCH]]
            images = [x for x, _ in batch]
            losses = model(images, [t for _, t in batch])
            last_loss = _check_loss(label, step, losses)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
            step += 1
            images_seen += len(images)
            clock.step_done(time.perf_counter() - t0)
            train_s = clock.elapsed
            _log_step(log, label, step, last_loss, losses, base_lr * factor, clock)
            if clock.exhausted():
                stop = True
                break
        epoch += 1
    row = _finish(label, log, model, val_ds, lambda chunk: _predict(model, [to_float_tensor(val_ds.load_image(i)) for i in chunk]),
                  n_params, step, images_seen, clock, train_s, len(ids), load_before, last_loss)
    row["model"] = (f"torchvision MaskRCNN {depth}-FPN, its reference recipe: {PEER_MIN_SIZE}/{PEER_MAX_SIZE} resize, "
                    f"SGD, hflip, batch {PEER_BATCH}")
    return row


# ============================================================================== with our pipeline
def build_tv_ours_pipeline(config: Config) -> torch.nn.Module:
    """torchvision's Mask R-CNN at ``config.backbone``'s depth with the preset's anchors, sampling sizes,
    detection limits and input handling (see the module doc)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from maskrcnn.modeling.transform import normalize_input

    c = config
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in c.rpn_anchor_scales),
                              aspect_ratios=(tuple(float(r) for r in c.rpn_anchor_ratios),) * len(c.rpn_anchor_scales))
    model = build_peer(
        c.backbone, min_size=c.image_min_dim, max_size=c.image_min_dim, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=c.pre_nms_limit_training, rpn_post_nms_top_n_train=c.post_nms_rois_training,
        rpn_pre_nms_top_n_test=c.pre_nms_limit_inference, rpn_post_nms_top_n_test=c.post_nms_rois_inference,
        rpn_batch_size_per_image=c.rpn_train_anchors_per_image, box_batch_size_per_image=c.train_rois_per_image,
        box_positive_fraction=c.roi_positive_ratio, box_detections_per_img=c.detection_max_instances,
        box_nms_thresh=c.detection_nms_threshold, box_score_thresh=c.detection_min_confidence)
    model.transform._skip_resize = True  # training samples come at our size (the pipeline's crops)
    mean = torch.tensor(c.pixel_mean, dtype=torch.float32)
    std = torch.tensor(c.pixel_std, dtype=torch.float32)
    # our normalisation instead of its ImageNet mean/std (it runs before its resize, per image)
    model.transform.normalize = lambda image: normalize_input(image, mean, std, c.image_normalization,
                                                              c.invert_bright_images)
    return model


def set_inference_size(model: torch.nn.Module, config: Config, height: int, width: int) -> float:
    """Set the transform's min/max size so that its own resize of an ``height x width`` image applies
    :func:`~maskrcnn.data.resize.plan_resize`'s scale for ``config.detect_resize_mode``; returns the scale."""
    from maskrcnn.data.resize import plan_resize

    info = plan_resize(height, width, config.detect_resize_mode, config.image_min_dim, config.image_max_dim,
                       config.image_min_scale)
    model.transform.min_size = (info.scale * min(height, width),)
    model.transform.max_size = info.scale * max(height, width)
    return info.scale


def _predict_at_our_size(model: torch.nn.Module, config: Config, image: torch.Tensor) -> Predictions:
    """One image detected at the preset's inference scale (:func:`set_inference_size`); results at the original size."""
    set_inference_size(model, config, int(image.shape[-2]), int(image.shape[-1]))
    return _predict(model, [image])[0]


def run_tv_ours_pipeline(config: Config, train_ds: Dataset, val_ds: Dataset, budget_s: float, log: Callable[[str], None],
                         max_steps: int | None = None, label: str = "tv-ours-pipeline") -> dict[str, Any]:
    """Train and score the ``tv-ours-pipeline`` peer (see the module doc) with ``config``'s data,
    optimizer and schedule for ``budget_s`` seconds (or ``max_steps`` steps)."""
    from maskrcnn.data.images import to_float_tensor
    from maskrcnn.data.pipeline import TrainingDataset, collate
    from maskrcnn.engine.loader import build_loader
    from maskrcnn.engine.optim import build_optimizer
    from maskrcnn.engine.samplers import TrainingSampler
    from maskrcnn.engine.schedule import LRSchedule, build_scheduler

    from maskrcnn.engine.runtime import autocast, resolve_amp, use_channels_last

    c = config
    load_before = loadavg()
    torch.manual_seed(c.seed)
    clock = TimeBudget(budget_s, max_steps=max_steps)
    model = build_tv_ours_pipeline(c)
    device = torch.device("cpu")
    amp_dtype = resolve_amp(c.amp, device)[0]  # the engine's rule: bf16 where the CPU has it natively
    use_channels_last(model, amp_dtype)
    n_params = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, c)
    params = [p for g in opt.param_groups for p in g["params"]]
    scheduler = build_scheduler(opt, c, total_steps=1)
    samples = TrainingDataset(train_ds, c, train=True, seed=c.seed)
    sampler = TrainingSampler(len(samples), seed=c.seed)
    model.train()
    step, images_seen, last_loss, train_s, epoch = 0, 0, None, 0.0, 0
    clock.start()  # the engine's budget counts from the first step on
    stop = clock.exhausted()
    while not stop:
        sampler.set_epoch(epoch)
        samples.set_epoch(epoch)
        t0 = time.perf_counter()
        for batch in build_loader(samples, collate, sampler, c.images_per_gpu, c.num_workers, c.seed):
            if not batch.images:
                continue
            targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in batch.targets]
            with autocast(device, amp_dtype):
                losses = model(batch.images, targets)
            losses = {k: v.float() for k, v in losses.items()}
            last_loss = _check_loss(label, step, losses)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            if c.gradient_clip_norm:
                torch.nn.utils.clip_grad_norm_(params, c.gradient_clip_norm)
            opt.step()
            lr = scheduler.get_last_lr()[0]
            step += 1
            images_seen += len(batch.images)
            clock.step_done(time.perf_counter() - t0)
            train_s = clock.elapsed
            left = clock.steps_left()  # the engine's TimeBudgetHook: the schedule ends where the budget does
            scheduler.set_schedule(LRSchedule.from_config(c, max(1, step + left)))
            scheduler.step()
            _log_step(log, label, step, last_loss, losses, lr, clock)
            t0 = time.perf_counter()
            if left == 0:
                stop = True
                break
        epoch += 1
    row = _finish(label, log, model, val_ds,
                  lambda chunk: [_predict_at_our_size(model, c, to_float_tensor(val_ds.load_image(i))) for i in chunk],
                  n_params, step, images_seen, clock, train_s, len(train_ds.image_ids), load_before, last_loss)
    row["model"] = (f"torchvision MaskRCNN {c.backbone}-FPN with our pipeline: {c.image_resize_mode} {c.image_min_dim} "
                    f"x{c.image_min_scale:g}, {c.image_normalization} normalisation, {c.optimizer} {c.learning_rate:g}, "
                    f"batch {c.images_per_gpu}, {'fp32' if amp_dtype is None else 'bf16 autocast'} training")
    row["amp"] = str(amp_dtype)
    return row

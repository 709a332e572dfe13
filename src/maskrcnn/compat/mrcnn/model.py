"""Matterport's ``mrcnn.model.MaskRCNN`` on this project's engine.

``MaskRCNN(mode, config, model_dir)`` reads the Matterport config with
:meth:`maskrcnn.Config.from_matterport` (kept as :attr:`MaskRCNN.settings`, a
:class:`maskrcnn.Config`: the place to change what Matterport has no attribute for, e.g.
``model.settings = model.settings.replace(num_workers=0)``) and builds our network
(:attr:`MaskRCNN.module`, an ``nn.Module``).

* ``train(train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
  custom_callbacks=None, no_augmentation_sources=None)`` runs :func:`maskrcnn.engine.train`:
  ``epochs`` is the epoch to train up to (cumulative over calls, Keras' ``initial_epoch``),
  an epoch is ``STEPS_PER_EPOCH`` optimizer steps, ``layers`` is ``heads``, ``3+``, ``4+``,
  ``5+``, ``all`` or a regex over our parameter names, the learning rate is constant (as
  Matterport's), validation reports the validation losses. Checkpoints are laid out as
  Matterport's, in our safetensors format::

      <model_dir>/<name><YYYYmmddTHHMM>/mask_rcnn_<name>_<epoch:04d>.safetensors

  (hard links of the engine's own ``checkpoints/epoch_NNNN.safetensors`` in the same folder,
  next to its ``metrics.jsonl``, ``config.yaml`` and optimizer state). ``augmentation`` is an
  imgaug augmenter applied to the image and, with Matterport's mask hook, to the masks;
  ``custom_callbacks`` are :class:`maskrcnn.engine.HookBase` objects.
* ``detect(images, verbose=0)``: :class:`maskrcnn.inference.Predictor` then
  :meth:`Detections.to_matterport` (``rois`` ``[N, (y1, x1, y2, x2)]`` int32, ``class_ids``,
  ``scores``, ``masks`` ``[H, W, N]`` bool), any number of images.
* ``load_weights(path, by_name=False, exclude=None)``: our checkpoints, torchvision ``.pth``
  state dicts (a ResNet body too) and named weights (``"coco"``, ``"coco-v2"``, ``"imagenet"``) through
  :func:`maskrcnn.weights.resolve_weights`; ``exclude`` takes Matterport's layer names.
  Matterport ``.h5`` files load (``mode="inference"``) into Matterport's own network
  (``settings.architecture`` becomes ``matterport``, :mod:`maskrcnn.modeling.matterport`) with
  ``by_name`` and ``exclude`` as Matterport means them; training starts from ``coco``/``imagenet``.
* ``find_last()``, ``get_imagenet_weights()``, ``log_dir``, ``epoch`` as Matterport's.

Module functions of Matterport's that scripts and notebooks call: ``load_image_gt`` (the resized
image and its ground truth, through the training pipeline), ``compose_image_meta``,
``parse_image_meta`` and ``log``.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config as Settings
from ...config import ConfigError
from ...data.augment import Sample
from ...data.dataset import Dataset
from ...data.pipeline import TrainingDataset
from ...engine.hooks import HookBase
from ...errors import MaskRCNNError, WeightsError
from ...utils.files import atomic_write
from ._unsupported import module_getattr

__all__ = ["MaskRCNN", "MATTERPORT_LAYERS", "MASK_AUGMENTERS", "CheckpointNotFoundError", "load_image_gt",
           "compose_image_meta", "parse_image_meta", "log", "imgaug_augment_fn"]

#: Matterport layer names (``load_weights(exclude=...)``) -> prefixes of our parameter names.
MATTERPORT_LAYERS: dict[str, tuple[str, ...]] = {
    "mrcnn_class_logits": ("roi_heads.box_predictor.cls_score.",),
    "mrcnn_bbox_fc": ("roi_heads.box_predictor.bbox_pred.",),
    "mrcnn_bbox": ("roi_heads.box_predictor.bbox_pred.",),
    "mrcnn_mask": ("roi_heads.mask_predictor.mask_fcn_logits.",),
    "conv1": ("backbone.body.conv1.",),
}

#: imgaug augmenters that Matterport also applies to the masks (its ``load_image_gt`` hook);
#: every other augmenter (colour, blur, noise ...) changes the image only.
MASK_AUGMENTERS = ("Sequential", "SomeOf", "OneOf", "Sometimes", "Fliplr", "Flipud", "CropAndPad", "Affine",
                   "PiecewiseAffine")

#: What Matterport's ``train`` does that ours would otherwise do differently.
_MATTERPORT_TRAINING = {"aug_hflip": 0.0, "lr_schedule": "constant", "warmup_iters": 0}

_STAMP = re.compile(r"^(?P<name>.+?)(?P<stamp>\d{8}T\d{4})$")
_CHECKPOINT = re.compile(r"^mask_rcnn_.+_(?P<epoch>\d{4})\.safetensors$")

#: Matterport attributes of its Keras model class that have no equivalent here, and what to use.
_NOT_HERE = {
    "keras_model": "the network is model.module (a torch nn.Module)",
    "compile": "train() sets up the optimizer itself",
    "set_trainable": "pass layers= to train()",
    "mold_inputs": "detect() resizes and normalises inside the network",
    "unmold_detections": "detect() returns detections in original image pixels",
    "detect_molded": "use detect() on the original images",
    "run_graph": "use model.module (a torch nn.Module) with forward hooks",
    "get_anchors": "anchors are made inside model.module.rpn",
    "ancestor": "use model.module.named_modules()",
    "find_trainable_layer": "use model.module.named_parameters()",
    "get_trainable_layers": "use model.module.named_parameters()",
}


#: Matterport's module-level functions and classes with no counterpart here, and what to use.
_MODULE_NOT_HERE = {
    "data_generator": "train() feeds the data (maskrcnn.data.pipeline.TrainingDataset for the samples)",
    "DataGenerator": "train() feeds the data (maskrcnn.data.pipeline.TrainingDataset for the samples)",
    "mold_image": "the network normalises its input itself (MaskRCNN.detect takes the original images)",
    "unmold_image": "load_image_gt returns the image as it is, not normalised",
    "build_rpn_targets": "the RPN matches anchors inside model.module (maskrcnn.modeling.rpn)",
    "build_detection_targets": "the RoI heads sample their targets inside model.module (maskrcnn.modeling.roi_heads)",
}


__getattr__ = module_getattr(__name__, _MODULE_NOT_HERE)


class CheckpointNotFoundError(WeightsError, FileNotFoundError):
    """``find_last()`` found no run folder or no checkpoint (a ``FileNotFoundError``, as Matterport's)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class MaskRCNN:
    """Matterport's model class: ``MaskRCNN(mode="training" | "inference", config, model_dir)``.

    Attributes:
        mode, config (the Matterport config as given), model_dir, log_dir, epoch (epochs trained,
        from the last ``train`` or the loaded checkpoint's name).
        settings: the :class:`maskrcnn.Config` read from ``config``; replace it to change more.
        module: the network (``maskrcnn.modeling.MaskRCNN``, an ``nn.Module``).
    """

    def __init__(self, mode: str, config: Any, model_dir: str | os.PathLike[str]) -> None:
        _require(mode in ("training", "inference"), f"mode={mode!r}: use mode='training' or mode='inference'")
        if isinstance(config, Settings):
            raise ConfigError("config: a maskrcnn.Config was given; MaskRCNN takes a Matterport-style config "
                              "(subclass maskrcnn.compat.mrcnn.config.Config), or use maskrcnn.engine.train / maskrcnn.load")
        _require(hasattr(config, "NUM_CLASSES") and hasattr(config, "IMAGES_PER_GPU"),
                 f"config: got {type(config).__name__}, not a Matterport config; pass an instance of a subclass of "
                 "maskrcnn.compat.mrcnn.config.Config")
        self.mode = mode
        self.config = config
        self.model_dir = str(model_dir)
        self.settings = Settings.from_matterport(config, **_MATTERPORT_TRAINING)
        self.set_log_dir()

    @property
    def settings(self) -> Settings:
        """Our :class:`maskrcnn.Config` read from the Matterport config. Assigning another one
        (``model.settings = model.settings.replace(num_workers=0)``) rebuilds the network with
        fresh weights: do it before ``load_weights`` and ``train``."""
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        if not isinstance(value, Settings):
            raise ConfigError(f"settings: expected a maskrcnn.Config, got {type(value).__name__}; "
                              "use model.settings.replace(field=value)")
        from ...modeling import build_model

        self._settings = value
        self.module = build_model(value)
        self._predictor: Any = None

    # ------------------------------------------------------------------ Matterport's attributes
    def __getattr__(self, name: str) -> Any:
        if name in _NOT_HERE:
            raise AttributeError(f"MaskRCNN.{name}: Matterport's Keras API is not available here; {_NOT_HERE[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def name(self) -> str:
        """The experiment name of folders and checkpoints (Matterport: ``NAME.lower()``)."""
        return self.settings.name.lower()

    def set_log_dir(self, model_path: str | os.PathLike[str] | None = None) -> None:
        """``log_dir`` and ``epoch``: from a checkpoint named as :meth:`train` names them (continue its
        run folder's time stamp and its epoch), else a new time stamp and epoch 0."""
        self.epoch = 0
        stamp = f"{datetime.datetime.now():%Y%m%dT%H%M}"
        if model_path is not None:
            path = Path(model_path)
            folder, file = _STAMP.match(path.parent.name), _CHECKPOINT.match(path.name)
            if folder and file:
                stamp, self.epoch = folder["stamp"], int(file["epoch"])
        self.log_dir = os.path.join(self.model_dir, f"{self.name}{stamp}")
        self.checkpoint_path = os.path.join(self.log_dir, f"mask_rcnn_{self.name}_{{epoch:04d}}.safetensors")

    def find_last(self) -> str:
        """The newest checkpoint of the newest run folder of this config's name in ``model_dir``."""
        try:
            runs = sorted(d.name for d in Path(self.model_dir).iterdir()
                          if d.is_dir() and (m := _STAMP.match(d.name)) and m["name"] == self.name)
        except OSError:
            runs = []
        if not runs:
            raise CheckpointNotFoundError(f"{self.model_dir}: no run folder of {self.name!r} "
                                          f"({self.name}YYYYmmddTHHMM); train first or check model_dir and NAME")
        folder = Path(self.model_dir) / runs[-1]
        checkpoints = sorted(f.name for f in folder.iterdir() if f.is_file() and _CHECKPOINT.match(f.name))
        if not checkpoints:
            raise CheckpointNotFoundError(f"{folder}: no mask_rcnn_{self.name}_NNNN.safetensors checkpoint; "
                                          "the run ended before its first epoch; train again")
        return str(folder / checkpoints[-1])

    def get_imagenet_weights(self) -> str:
        """The weights spec of torchvision's ImageNet ResNet of this depth for :meth:`load_weights`
        (``"imagenet"``: downloaded there once, hash-checked); load it with ``by_name=True``."""
        return "imagenet"

    # ------------------------------------------------------------------ weights
    def load_weights(self, filepath: str | os.PathLike[str], by_name: bool = False,
                     exclude: Sequence[str] | None = None) -> None:
        """Load weights: one of our checkpoints, a torchvision ``.pth`` state dict (a whole Mask
        R-CNN, or a ResNet classifier's body), or a name (``"coco"``, ``"coco-v2"``, ``"imagenet"``:
        the ImageNet ResNet of this config's depth) through :func:`maskrcnn.weights.resolve_weights`.

        ``by_name``: layers that the file does not have keep their current weights, and what the
        model does not have is not used (Matterport's partial loading). ``exclude``: Matterport
        layer names (:data:`MATTERPORT_LAYERS`, e.g. the class-dependent ``mrcnn_class_logits``,
        ``mrcnn_bbox_fc``, ``mrcnn_bbox``, ``mrcnn_mask`` when the class count differs) or prefixes
        of our parameter names, kept as they are; as in Matterport it implies ``by_name``.

        A Matterport ``.h5`` file (``mode="inference"``) loads into Matterport's own network
        (``settings.architecture`` becomes ``matterport``; :func:`maskrcnn.weights.load_h5_into`),
        with ``by_name`` and ``exclude`` over its Keras layer names (``rpn_model`` for the RPN).
        """
        from ...weights import CLASS_DEPENDENT, is_matterport, load_into, local_path, resolve_weights

        spec = os.fspath(filepath)
        if is_matterport(spec):
            self._load_h5(local_path(spec), by_name, exclude)
            return
        resolved = resolve_weights(spec, backbone=self.settings.backbone, allow_backbone_only=True)
        settings = resolved.fit(self.settings, ("architecture", "backbone", "backbone_width"))
        own = self.module.state_dict()
        sd = dict(resolved.state_dict)
        excluded = self._excluded(exclude or (), own)
        by_name = bool(by_name or exclude)
        sd = {k: v for k, v in sd.items() if k not in excluded}
        mismatch = [k for k in sd if k.startswith(CLASS_DEPENDENT) and k in own and sd[k].shape != own[k].shape]
        if mismatch:
            raise WeightsError(f"{spec}: {mismatch[0]} has shape {tuple(sd[mismatch[0]].shape)} but NUM_CLASSES="
                               f"{self.settings.num_classes} needs {tuple(own[mismatch[0]].shape)}; pass exclude=["
                               "'mrcnn_class_logits', 'mrcnn_bbox_fc', 'mrcnn_bbox', 'mrcnn_mask'] as Matterport's samples do")
        if by_name:
            sd = {k: v for k, v in sd.items() if k in own}
            sd.update({k: v for k, v in own.items() if k not in sd})
        if settings != self.settings:  # e.g. torchvision's frozen-BatchNorm eps: rebuild, keep the weights
            from ...modeling import build_model

            module = build_model(settings)
            module.load_state_dict(own)
            self.module, self._settings = module, settings
        load_into(self.module, sd, source=spec, reinit_classes=False, log=lambda line: print(line, file=sys.stderr),
                  backbone_only=resolved.backbone_only)
        self._predictor = None
        self.set_log_dir(spec)

    def _load_h5(self, spec: str, by_name: bool, exclude: Sequence[str] | None) -> None:
        """A Matterport ``.h5`` into Matterport's own network (``architecture: matterport``), for detection."""
        from ...weights.h5 import load_h5_into, read_keras_layers

        if self.mode != "inference":
            raise WeightsError(f"{spec}: Matterport .h5 weights run in mode='inference' here (detection, evaluation); to "
                               "train, load_weights('coco', by_name=True, exclude=[...]) or model.get_imagenet_weights()")
        layers = read_keras_layers(spec)
        if self.settings.architecture != "matterport":
            self.settings = self.settings.replace(architecture="matterport")
        loaded = load_h5_into(self.module, spec, by_name=bool(by_name or exclude), exclude=exclude or (), layers=layers)
        print(f"{spec}: loaded {len(loaded)} of {len(self.module.net.layers)} layers", file=sys.stderr)
        self._predictor = None
        self.set_log_dir(spec)

    @staticmethod
    def _excluded(exclude: Sequence[str], own: dict[str, torch.Tensor]) -> set[str]:
        if isinstance(exclude, str):
            exclude = [exclude]
        out: set[str] = set()
        for name in exclude:
            prefixes = MATTERPORT_LAYERS.get(str(name), (str(name),))
            keys = {k for k in own if k.startswith(prefixes)}
            if not keys:
                raise WeightsError(f"exclude: {name!r} names no layer; use Matterport's {', '.join(MATTERPORT_LAYERS)} "
                                   "or a prefix of model.module's parameter names (e.g. 'roi_heads.mask_head')")
            out |= keys
        return out

    # ------------------------------------------------------------------ training
    def train(self, train_dataset: Dataset, val_dataset: Dataset | None, learning_rate: float, epochs: int,
              layers: str, augmentation: Any = None, custom_callbacks: Sequence[HookBase] | None = None,
              no_augmentation_sources: Sequence[str] | None = None) -> Any:
        """Train up to epoch ``epochs`` (a later call continues: ``epochs`` counts from the first);
        returns the engine's :class:`~maskrcnn.engine.TrainResult` (None when nothing was left)."""
        from ...engine import train as engine_train

        _require(self.mode == "training", f"train: the model was created with mode={self.mode!r}; "
                                          "create it with mode='training'")
        _require(isinstance(train_dataset, Dataset), "train_dataset: expected a prepared maskrcnn.compat.mrcnn.utils.Dataset "
                                                     f"subclass, got {type(train_dataset).__name__}")
        _require(val_dataset is None or isinstance(val_dataset, Dataset),
                 f"val_dataset: expected a maskrcnn.compat.mrcnn.utils.Dataset subclass or None, got {type(val_dataset).__name__}")
        hooks = _hooks(custom_callbacks)
        epochs = int(epochs)
        if epochs <= self.epoch:
            print(f"train: epochs={epochs} is the epoch to train up to (as in Matterport) and the model is already at "
                  f"epoch {self.epoch}; nothing to train", file=sys.stderr)
            return None
        settings = self.settings.replace(epochs=epochs, layers=str(layers), learning_rate=float(learning_rate))
        augment_fn = None if augmentation is None else imgaug_augment_fn(augmentation, train_dataset, no_augmentation_sources)
        train_set = TrainingDataset(train_dataset, settings, train=True, seed=settings.seed, augment_fn=augment_fn)
        print(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n\nCheckpoint Path: {self.checkpoint_path}", file=sys.stderr)
        result = engine_train(settings, train_set, val_dataset, model=self.module, run_dir=self.log_dir,
                              evaluate_fn=None, hooks=[MatterportCheckpoints(self.checkpoint_path), *hooks],
                              start_epoch=self.epoch)
        self.epoch = max(self.epoch, result.epochs_completed)
        self._predictor = None
        return result

    # ------------------------------------------------------------------ detection
    def detect(self, images: Sequence[np.ndarray], verbose: int = 0) -> list[dict[str, np.ndarray]]:
        """Per image Matterport's dict: ``rois`` ``[N, (y1, x1, y2, x2)]`` int32 pixels,
        ``class_ids`` ``[N]`` int32, ``scores`` ``[N]`` float32, ``masks`` ``[H, W, N]`` bool."""
        _require(self.mode == "inference", f"detect: the model was created with mode={self.mode!r}; "
                                           "create it with mode='inference'")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if verbose:
            log(f"Processing {len(images)} images")
            for image in images:
                log("image", np.asarray(image))
        if self._predictor is None:
            from ...inference.predictor import Predictor

            self._predictor = Predictor(self.module, device="cuda" if torch.cuda.is_available() else "cpu")
        detections = self._predictor.detect(images, batch_size=self.settings.images_per_gpu)
        return [d.to_matterport() for d in detections]


def log(text: str, array: np.ndarray | None = None) -> None:
    """Print ``text`` and, with ``array``, its shape, min, max and dtype (Matterport's ``log``)."""
    if array is not None:
        a = np.asarray(array)
        text = text.ljust(25) + f"shape: {str(a.shape):20}  "
        text += (f"min: {a.min():10.5f}  max: {a.max():10.5f}" if a.size else f"min: {'':10}  max: {'':10}")
        text += f"  {a.dtype}"
    print(text)


def compose_image_meta(image_id: int, original_image_shape: Sequence[int], image_shape: Sequence[int],
                       window: Sequence[int], scale: float, active_class_ids: Sequence[int]) -> np.ndarray:
    """Matterport's image meta row: id, original shape (3), resized shape (3), window (4), scale,
    active class ids (one per class)."""
    return np.array([image_id, *original_image_shape, *image_shape, *window, scale, *active_class_ids])


def parse_image_meta(meta: np.ndarray) -> dict[str, np.ndarray]:
    """The fields of image meta rows ``[batch, meta length]`` (inverse of :func:`compose_image_meta`)."""
    meta = np.asarray(meta)
    return {"image_id": meta[:, 0].astype(np.int32), "original_image_shape": meta[:, 1:4].astype(np.int32),
            "image_shape": meta[:, 4:7].astype(np.int32), "window": meta[:, 7:11].astype(np.int32),
            "scale": meta[:, 11].astype(np.float32), "active_class_ids": meta[:, 12:].astype(np.int32)}


def load_image_gt(dataset: Dataset, config: Any, image_id: int, augment: bool = False, augmentation: Any = None,
                  use_mini_mask: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, image_meta, class_ids, bbox, mask)`` of one image as the network sees it: resized per
    the config (:class:`maskrcnn.data.pipeline.TrainingDataset`, no augmentation), boxes
    ``[N, (y1, x1, y2, x2)]`` from the masks, masks ``[H, W, N]`` bool (mini-masks with
    ``use_mini_mask``). Instances left without pixels are dropped, as in Matterport."""
    from ...compat.matterport import convert_matterport
    from ...data.resize import plan_resize

    if augment or augmentation is not None:
        raise MaskRCNNError("load_image_gt: augment/augmentation are applied by train() here; call it without them")
    values, _ = convert_matterport(config)  # the notes were printed when the model read the config
    settings = Settings.create(**{**values, "use_mini_mask": bool(use_mini_mask)})
    pipeline = TrainingDataset(dataset, settings, train=False, skip_errors=False)
    where = np.flatnonzero(pipeline.image_ids == int(image_id))
    if not len(where):
        raise MaskRCNNError(f"load_image_gt: image_id {image_id} is not in the dataset (ids 0..{len(pipeline) - 1}); "
                            "call prepare() after add_image()")
    tensor, target = pipeline.load(int(where[0]))
    original = np.asarray(dataset.load_image(int(image_id)))
    top = 65535.0 if original.dtype == np.uint16 else 255.0
    image = np.round(tensor.permute(1, 2, 0).numpy() * top).astype(original.dtype)
    masks = target["masks"].numpy().transpose(1, 2, 0).astype(bool)
    bbox = target["boxes"].numpy()[:, [1, 0, 3, 2]].astype(np.int32)
    class_ids = target["labels"].numpy().astype(np.int32)
    h, w = target["orig_size"]
    scale = plan_resize(h, w, settings.image_resize_mode, settings.image_min_dim, settings.image_max_dim,
                        settings.image_min_scale, rng=np.random.default_rng(0)).scale
    active = np.zeros([dataset.num_classes], dtype=np.int32)
    active[dataset.source_class_ids[dataset.image_info[int(image_id)]["source"]]] = 1
    meta = compose_image_meta(int(image_id), original.shape, image.shape, target["window"], scale, active)
    return image, meta, class_ids, bbox, masks


def _hooks(custom_callbacks: Sequence[Any] | None) -> list[HookBase]:
    callbacks = list(custom_callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, HookBase):
            raise MaskRCNNError(f"custom_callbacks: {type(cb).__name__} is not a maskrcnn.engine.HookBase; Keras callbacks "
                                "cannot run here, write a HookBase (on_epoch_end -> after_epoch, on_batch_end -> after_step)")
    return callbacks


class MatterportCheckpoints(HookBase):
    """After each completed epoch, ``checkpoint_path.format(epoch=N)`` names the epoch's weights
    (a hard link of the engine's checkpoint, or an atomic copy where links are not possible)."""

    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = checkpoint_path

    def after_epoch(self) -> None:
        t = self.trainer
        if not (t.epoch_completed and t.dist.is_main and t.last_checkpoint is not None):
            return
        target = Path(self.checkpoint_path.format(epoch=t.epoch))
        tmp = target.with_name(f".{target.name}.link{os.getpid()}")
        try:
            tmp.unlink(missing_ok=True)
            os.link(t.last_checkpoint, tmp)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            with open(t.last_checkpoint, "rb") as src:
                atomic_write(target, lambda fh: shutil.copyfileobj(src, fh))
        t.log.info(f"saved {target}")


# ---------------------------------------------------------------------------- imgaug


def imgaug_augment_fn(augmentation: Any, dataset: Dataset, no_augmentation_sources: Sequence[str] | None = None):
    """The pipeline's ``augment_fn`` applying an imgaug augmenter as Matterport's ``load_image_gt``:
    one deterministic draw for the image and its masks; only :data:`MASK_AUGMENTERS` touch the
    masks. Images of a source in ``no_augmentation_sources`` are left as they are. Each draw is
    seeded from the sample's generator, so runs repeat and resume exactly."""
    try:
        import imgaug
    except ImportError:
        raise MaskRCNNError("augmentation: needs the imgaug package (pip install imgaug); or pass augmentation=None") from None
    except Exception as exc:  # noqa: BLE001 - imgaug 0.4 uses np.sctypes, removed in NumPy 2
        raise MaskRCNNError(f"augmentation: imgaug failed to import ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); "
                            "imgaug 0.4 needs NumPy < 2 (pip install 'numpy<2'), or use the aug_* fields of model.settings") from None
    if not hasattr(augmentation, "to_deterministic"):
        raise MaskRCNNError(f"augmentation: {type(augmentation).__name__} is not an imgaug augmenter; pass e.g. "
                            "imgaug.augmenters.Fliplr(0.5), or use the aug_* fields of model.settings")
    skip = set(no_augmentation_sources or ())

    def activator(images: Any, augmenter: Any, parents: Any, default: Any) -> bool:
        return augmenter.__class__.__name__ in MASK_AUGMENTERS

    def augment(sample: Sample, rng: np.random.Generator, image_id: int) -> Sample:
        if skip and dataset.image_info[image_id].get("source") in skip:
            return sample
        seed = getattr(augmentation, "seed_", None)
        if seed is not None:
            seed(int(rng.integers(2**31 - 1)))
        det = augmentation.to_deterministic()
        image = np.asarray(sample.image)
        floating = np.issubdtype(image.dtype, np.floating)
        pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8) if floating else image
        out = np.asarray(det.augment_image(pixels))
        layers = [sample.masks] + ([] if sample.ignore is None else [sample.ignore[None].astype(np.uint8)])
        stack = np.concatenate(layers, axis=0).transpose(1, 2, 0)
        if stack.shape[2]:
            stack = np.asarray(det.augment_image(np.ascontiguousarray(stack, dtype=np.uint8),
                                                 hooks=imgaug.HooksImages(activator=activator)))
        stack = (stack != 0).astype(np.uint8).transpose(2, 0, 1)
        n = len(sample.masks)
        image = out.astype(np.float32) / 255.0 if floating else out
        ignore = None if sample.ignore is None else stack[n].astype(bool)
        return Sample(image, stack[:n], sample.labels, ignore, sample.window)

    return augment

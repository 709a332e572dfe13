"""Weights: named downloads, torchvision state dicts and our own checkpoints.

* Named weights ``"coco"`` (torchvision ``maskrcnn_resnet50_fpn``, 37.9 box / 34.6 mask AP),
  ``"coco-v2"`` (``maskrcnn_resnet50_fpn_v2``, 47.4 / 41.8) and ``"imagenet"`` (torchvision's
  ImageNet ResNet-50 or -101 classifier, ``IMAGENET1K_V1``, the one torchvision's Mask R-CNN
  starts from; the depth follows ``Config.backbone``; ``imagenet-resnet50``/``-resnet101`` name
  one) are downloaded once into the cache
  (``$MASKRCNN_CACHE`` or ``~/.cache/maskrcnn``), checked against the SHA-256 prefix in their file
  name, and loaded. torchvision's own cache is used when the file is already there. Offline, the
  error says which file to put where.
* torchvision state dicts (``.pth``/``.pt``) are read with ``torch.load(weights_only=True)``: no
  arbitrary unpickling. Legacy key names of the 2019 v1 file are accepted. A v1 file gets frozen
  BatchNorm ``eps = 0`` (torchvision's convention for it, inherited by models fine-tuned from it)
  unless ``frozen_bn_eps`` is given.
* Backbone-only state dicts (``imagenet``, a torchvision ``resnet*.pth`` with keys ``conv1.weight``,
  ``layer1.0...``, or keys prefixed ``backbone.body.``) load into the ResNet body only, for training
  (``train --weights``): the FPN, RPN and heads start as when training from scratch, as
  Matterport's ``--weights=imagenet`` does.
* Our checkpoints are safetensors: one ``.safetensors`` file whose metadata holds the config YAML,
  or a folder with ``model.safetensors`` and ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, parse_yaml
from .errors import WeightsError
from .utils.files import atomic_write, fsync_path

__all__ = [
    "NAMED_WEIGHTS", "COCO_CLASSES", "resolve_named", "cache_dir", "download",
    "read_state_dict", "convert_torchvision", "config_from_state_dict", "load_into",
    "save_checkpoint", "load_checkpoint", "is_checkpoint", "check_weights_file", "check_finite",
    "ResolvedWeights", "resolve_weights", "backbone_state_dict", "imagenet_name", "IMAGENET",
]


@dataclass(frozen=True)
class NamedWeights:
    file: str
    url: str
    architecture: str | None  # None: a backbone only (an ImageNet classifier)
    backbone: str = "resnet50"


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "coco": NamedWeights("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
                         "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "v1"),
    "coco-v2": NamedWeights("maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
                            "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "v2"),
    "imagenet-resnet50": NamedWeights("resnet50-0676ba61.pth", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                                      None, "resnet50"),
    "imagenet-resnet101": NamedWeights("resnet101-63fe2227.pth",
                                       "https://download.pytorch.org/models/resnet101-63fe2227.pth", None, "resnet101"),
}
#: ``"imagenet"`` picks one of these by ``Config.backbone``.
IMAGENET = "imagenet"

#: COCO category names in torchvision's 91-class order (index 0 background, "N/A" for unused ids).
COCO_CLASSES: list[str] = [
    "BG", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]

CLASS_DEPENDENT = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                   "roi_heads.mask_predictor.mask_fcn_logits.")


# ---------------------------------------------------------------------------- download


def cache_dir() -> Path:
    return Path(os.environ.get("MASKRCNN_CACHE", Path.home() / ".cache" / "maskrcnn")) / "weights"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected_prefix(file: str) -> str | None:
    m = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", file)
    return m.group(1) if m else None


def download(url: str, file: str, *, progress: bool = True) -> Path:
    """Return the cached path of ``file``, downloading ``url`` first if needed.

    The SHA-256 of the file must start with the hex digits after the last ``-`` in its name.
    The download goes to a temporary file renamed into place only after the check.
    """
    target = cache_dir() / file
    torch_hub = Path(torch.hub.get_dir()) / "checkpoints" / file
    for candidate in (target, torch_hub):
        if candidate.is_file():
            return candidate
    prefix = _expected_prefix(file)

    def fetch(out: Any) -> None:  # into atomic_write's temporary file: kept only when complete and checked
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=file, leave=False)
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
        except (urllib.error.URLError, OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, urllib.error.URLError):
                raise  # writing failed (a full disk): atomic_write reports it with the file name
            reason = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
            raise WeightsError(f"cannot download {url} ({reason}); offline? download it elsewhere and "
                               f"put the file at {target}") from None
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise WeightsError(f"{url}: SHA-256 {digest.hexdigest()[:12]}... does not start with {prefix} (corrupt or "
                               f"truncated download, nothing was kept); retry, or put a good copy at {target}")

    atomic_write(target, fetch)
    return target


def imagenet_name(backbone: str | None) -> str:
    """The named ImageNet weights of a backbone depth (``"imagenet-resnet50"``), or a one-line error."""
    name = f"{IMAGENET}-{backbone or 'resnet50'}"
    if name not in NAMED_WEIGHTS:
        depths = ", ".join(k.split("-", 1)[1] for k in NAMED_WEIGHTS if k.startswith(IMAGENET + "-"))
        raise WeightsError(f"--weights imagenet: torchvision publishes ImageNet weights here for {depths}, not "
                           f"{backbone}; set backbone: resnet50 (or resnet101), or pass a backbone .pth file")
    return name


def resolve_named(name: str, *, progress: bool = True) -> tuple[Path, NamedWeights]:
    try:
        entry = NAMED_WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"unknown weights name {name!r}; use one of {', '.join(NAMED_WEIGHTS)}, {IMAGENET}, "
                           "a checkpoint (.safetensors or folder) or a torchvision .pth file") from None
    path = download(entry.url, entry.file, progress=progress)
    prefix = _expected_prefix(entry.file)
    if prefix is not None and not file_sha256(path).startswith(prefix):
        raise WeightsError(f"{path}: SHA-256 does not match {prefix}; delete the file and download it again")
    return path, entry


# ---------------------------------------------------------------------------- torchvision state dicts


_LEGACY = [
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"), None),
]


_WEIGHTS_KINDS = ("'coco', 'coco-v2', 'imagenet', one of our checkpoints (.safetensors or folder) or a torchvision "
                  ".pth state dict")


def check_weights_file(path: str | Path) -> Path:
    """``path`` if it is a non-empty regular file, else a one-line :class:`WeightsError`.

    Only ``stat`` is used: a FIFO, a socket or a device passed as weights is refused without being
    opened (opening a FIFO blocks until a writer appears, i.e. forever).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found; pass {_WEIGHTS_KINDS}") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot access the weights file ({exc.strerror or exc}); check the path "
                           "and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"{path}: a folder without model.safetensors; pass a weights file or a checkpoint "
                           "folder (model.safetensors + config.yaml)")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"{path}: not a regular file (a pipe, socket or device); pass a weights file")
    if st.st_size == 0:
        raise WeightsError(f"{path}: empty file (0 bytes): the save or download was interrupted; "
                           "save or download it again")
    return path


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save's format), ``"pickle"`` (legacy torch.save) or ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the weights file ({exc.strerror or exc}); check its permissions") from None
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).strip().splitlines()[:1]).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth``/``.pt`` (``weights_only`` unpickling) or ``.safetensors`` file.

    The format is recognised from the file's first bytes. Every unreadable file (truncated,
    empty, a FIFO or folder, a zip that is not a torch file, a pickle with Python objects,
    which is refused and never executed) is a one-line :class:`WeightsError` naming the file.
    """
    path = check_weights_file(path)
    kind = _sniff(path)
    if kind == "safetensors" or (kind == "unknown" and path.suffix == ".safetensors"):
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(exc)}); the file is corrupt "
                               "or truncated: save or download it again") from None
    elif kind == "unknown":
        raise WeightsError(f"{path}: not a weights file (neither a PyTorch .pth nor safetensors); pass {_WEIGHTS_KINDS}")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise WeightsError(f"{path}: holds Python objects besides tensors, refused (unpickling them could run "
                                   "code); save the model's state dict (model.state_dict()) with torch.save, or use safetensors") from None
            raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({_first_line(exc)}); "
                               "save or download it again") from None
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for bad files
            what = "a zip archive that is not a PyTorch file, or a truncated one" if kind == "zip" else \
                "a corrupt or truncated PyTorch file"
            raise WeightsError(f"{path}: {what} ({_first_line(exc)}); save or download it again") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise WeightsError(f"{path}: does not hold a state dict of named tensors; save model.state_dict()")
    check_finite(sd, str(path))
    return sd


def check_finite(sd: dict[str, Tensor], source: str) -> None:
    """A one-line :class:`WeightsError` naming the first tensor with NaN or infinity."""
    for name, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "infinity"
            raise WeightsError(f"{source}: this checkpoint contains {what} in {name}; it is unusable (the training "
                               "that wrote it diverged); use an earlier checkpoint or other weights")


def convert_torchvision(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename legacy v1 keys to the current names; drop ``num_batches_tracked`` of frozen BN."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        k2 = k
        m = _LEGACY[0][0].match(k)
        if m:
            k2 = f"backbone.fpn.{m.group(1)}.{m.group(2)}.0.{m.group(3)}"
        elif _LEGACY[1][0].match(k):
            k2 = _LEGACY[1][0].sub(_LEGACY[1][1], k)  # type: ignore[arg-type]
        else:
            m = _LEGACY[2][0].match(k)
            if m:
                k2 = f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
        out[k2] = v
    return out


_HEAD_PREFIXES = ("rpn.", "roi_heads.")


def backbone_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """``sd`` under our key names when it holds a backbone only, else None.

    Accepted: a torchvision ResNet classifier (``conv1.weight``, ``layer1.0.conv1.weight``, ...;
    its ``fc.*`` classifier is dropped), our ``body.*`` / ``backbone.body.*`` keys (optionally with
    ``backbone.fpn.*``). A state dict with RPN or head keys is a whole model: None.
    """
    if any(k.startswith(_HEAD_PREFIXES) for k in sd):
        return None
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        out = {f"backbone.body.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    elif all(k.startswith("body.") for k in sd):
        out = {f"backbone.{k}": v for k, v in sd.items()}
    else:
        out = dict(sd)
    if "backbone.body.conv1.weight" not in out or not all(k.startswith("backbone.") for k in out):
        return None
    return out


def _depth_from_keys(sd: dict[str, Tensor]) -> str:
    blocks3 = {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.body\.layer3\.(\d+)\.", k))}
    bottleneck = any(k.startswith("backbone.body.layer1.0.conv3.") for k in sd)
    n = len(blocks3)
    table = {(True, 6): "resnet50", (True, 23): "resnet101", (False, 2): "resnet18", (False, 6): "resnet34"}
    depth = table.get((bottleneck, n))
    if depth is None:
        raise WeightsError(f"state dict has a ResNet body with {n} blocks in layer3 "
                           f"({'bottleneck' if bottleneck else 'basic'} blocks) that matches no supported depth")
    return depth


def config_from_state_dict(sd: dict[str, Tensor]) -> dict[str, Any]:
    """Config values implied by a (converted) state dict: architecture, backbone, classes, widths."""
    if "roi_heads.box_predictor.cls_score.weight" not in sd or "backbone.body.conv1.weight" not in sd:
        raise WeightsError("not a Mask R-CNN state dict (no backbone.body.conv1 / roi_heads.box_predictor keys); "
                           "pass Mask R-CNN weights")
    try:
        values: dict[str, Any] = {
            "architecture": "v2" if "roi_heads.box_head.5.weight" in sd else "v1",
            "backbone": _depth_from_keys(sd),
            "num_classes": int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0]),
            "backbone_width": int(sd["backbone.body.conv1.weight"].shape[0]),
            "image_channel_count": int(sd["backbone.body.conv1.weight"].shape[1]),
            "fpn_channels": int(sd["backbone.fpn.layer_blocks.0.0.weight"].shape[0]),
            "box_head_dim": int(sd["roi_heads.box_predictor.cls_score.weight"].shape[1]),
            "mask_head_channels": int(sd["roi_heads.mask_predictor.conv5_mask.weight"].shape[1]),
            "mask_head_convs": len({m.group(1) for k in sd if (m := re.match(r"roi_heads\.mask_head\.(\d+)\.", k))}),
        }
    except KeyError as exc:
        raise WeightsError(f"not a complete Mask R-CNN state dict (no {exc.args[0]}); pass Mask R-CNN weights") from None
    except IndexError:
        raise WeightsError("a Mask R-CNN state dict with tensors of the wrong rank (conv1 / cls_score / conv5_mask); "
                           "the file is damaged: save or download it again") from None
    if values["num_classes"] == 91:
        values["class_names"] = list(COCO_CLASSES)
    return values


def v1_frozen_bn_eps(sd: dict[str, Tensor]) -> float:
    """The frozen-BN eps a v1 state dict was made with.

    torchvision's COCO file (and every model fine-tuned from it with frozen BN) uses ``eps = 0``;
    its ``FrozenBatchNorm2d`` has no ``num_batches_tracked``. A body that has those buffers was a
    plain ``BatchNorm2d`` model (eps 1e-5). Override with ``frozen_bn_eps`` when you know better.
    """
    return 1e-5 if "backbone.body.bn1.num_batches_tracked" in sd else 0.0


def adapt_conv1(weight: Tensor, channels: int) -> Tensor:
    """Adapt RGB ``conv1`` weights ``[O, 3, k, k]`` to ``channels`` inputs.

    The first three channels keep the RGB filters (fewer channels take the mean of the RGB filters),
    each extra channel gets the mean of the RGB filters, and everything is rescaled by ``3 / channels``
    so the response to an image of equal channels is unchanged.
    """
    mean = weight.mean(dim=1, keepdim=True)
    if channels < 3:
        new = mean.repeat(1, channels, 1, 1)
    else:
        new = torch.cat([weight, mean.repeat(1, channels - 3, 1, 1)], dim=1)
    return new * (3.0 / channels)


def load_into(model: nn.Module, sd: dict[str, Tensor], *, source: str, reinit_classes: bool,
              log: Any = print, backbone_only: bool = False) -> None:
    """Load ``sd`` into ``model``, adapting what can be adapted and naming what cannot.

    * class-dependent layers of another class count are re-initialised when ``reinit_classes``
      (fine-tuning; Matterport's ``exclude``), otherwise a :class:`WeightsError`;
    * ``conv1`` of another input channel count is adapted from the RGB filters;
    * ``backbone_only``: ``sd`` holds the ResNet body (:func:`backbone_state_dict`); every other
      part keeps the model's own initialisation, and only missing body keys are errors;
    * any other shape mismatch or missing key is a :class:`WeightsError` naming the first one.
    """
    own = model.state_dict()
    sd = dict(sd)
    dropped = []
    for k in list(sd):
        if k.endswith("num_batches_tracked") and k not in own:
            del sd[k]
            continue
        if k in own and sd[k].shape != own[k].shape:
            if k.startswith(CLASS_DEPENDENT):
                if not reinit_classes:
                    raise WeightsError(f"{source}: has {_classes_of(sd)} classes but the config has "
                                       f"{_classes_of(own)}; set num_classes: {_classes_of(sd)} (or fine-tune "
                                       "with maskrcnn train, which re-initialises the class layers)")
                dropped.append(k)
                del sd[k]
            elif (k == "backbone.body.conv1.weight" and sd[k].shape[1] == 3
                  and sd[k].shape[0] == own[k].shape[0] and sd[k].shape[2:] == own[k].shape[2:]):
                log(f"{source}: adapting conv1 from 3 to {own[k].shape[1]} input channels (RGB filter means)")
                sd[k] = adapt_conv1(sd[k], own[k].shape[1])
            else:
                raise WeightsError(f"{source}: {k} has shape {tuple(sd[k].shape)} but the model expects "
                                   f"{tuple(own[k].shape)}; the checkpoint is for another backbone/head setting "
                                   "(check backbone, fpn_channels, box_head_dim, mask_head_channels)")
    if dropped:
        log(f"{source}: re-initialised the class-dependent layers (cls_score, bbox_pred, mask_fcn_logits) "
            f"for {_classes_of(own)} classes")
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # e.g. a tensor of a type that cannot be copied into a parameter
        raise WeightsError(f"{source}: cannot load the weights into the model ({_first_line(exc)}); "
                           "use weights saved from this architecture") from None
    missing = [k for k in missing if k not in dropped]
    if backbone_only:
        missing = [k for k in missing if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked")]
        if not missing:
            log(f"{source}: loaded the ResNet body ({len(sd)} tensors); the FPN, RPN and heads start from their "
                "initialisation, as when training from scratch")
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); "
                           "the checkpoint is for another architecture (v1/v2) or backbone depth")
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r} ({len(missing)} in all); "
                           "the checkpoint is for another architecture (v1/v2) or backbone depth")


def _classes_of(sd: dict[str, Tensor]) -> int | str:
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    return int(w.shape[0]) if w is not None else "?"


# ---------------------------------------------------------------------------- our checkpoints

_META_KEY = "maskrcnn_config"


def is_checkpoint(path: str | Path) -> bool:
    """True for one of our checkpoints (a ``.safetensors`` with a config, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        return (path / "model.safetensors").is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return _META_KEY in (f.metadata() or {})
    except Exception:
        return False


def save_checkpoint(model: nn.Module, config: Config, path: str | Path, extra_meta: dict[str, str] | None = None) -> Path:
    """Write weights and config atomically: ``path`` ending ``.safetensors`` -> one file (config in
    metadata); otherwise a folder with ``model.safetensors`` and ``config.yaml``."""
    from safetensors.torch import save, save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_META_KEY: config.to_yaml(), "format": "maskrcnn/1"}
    meta.update(extra_meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        data = save(state, metadata=meta)
        atomic_write(path, lambda fh: fh.write(data))
        return path
    # folder form: write a sibling temp folder, then swap it in (the old folder is moved aside first,
    # because a folder cannot be renamed over a non-empty one)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp"))
    old: Path | None = None
    try:
        save_file(state, str(tmp_dir / "model.safetensors"), metadata=meta)
        config.to_yaml(tmp_dir / "config.yaml")
        for f in (tmp_dir / "model.safetensors", tmp_dir / "config.yaml", tmp_dir):
            fsync_path(f)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".old"))
            os.replace(path, old / "ckpt")
        os.replace(tmp_dir, path)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if old is not None:
            if not path.exists() and (old / "ckpt").exists():
                os.replace(old / "ckpt", path)  # put the previous checkpoint back
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path) -> tuple[Config, dict[str, Tensor]]:
    """``(config, state_dict)`` of one of our checkpoints; every problem is one :class:`WeightsError` line."""
    from safetensors import safe_open

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    check_weights_file(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsError(f"{file}: not a readable safetensors file ({_first_line(exc)}); the checkpoint is corrupt "
                           "or truncated: use another checkpoint or save it again") from None
    if path.is_dir() and (path / "config.yaml").is_file():
        try:
            config = Config.from_yaml(path / "config.yaml")
        except ConfigError as exc:
            raise WeightsError(f"{path}: the checkpoint's config.yaml is invalid ({exc}); fix that file") from None
    elif _META_KEY in meta:
        config = _embedded_config(meta[_META_KEY], file)
    else:
        raise WeightsError(f"{file}: safetensors file without a maskrcnn config; load it as a state dict instead")
    check_finite(sd, str(file))
    return config, sd


def _embedded_config(text: str, file: Path) -> Config:
    """The config YAML stored in a checkpoint's metadata, validated."""
    fix = "the file is damaged or was not written by maskrcnn: use another checkpoint or save it again"
    try:
        data = parse_yaml(text, f"{file}: the embedded config", fix=fix)
        if not isinstance(data, dict):
            raise WeightsError(f"{file}: the embedded config is a YAML {type(data).__name__}, not a mapping of "
                               f"field: value; {fix}")
        return Config(**data)
    except ConfigError as exc:
        msg = str(exc)
        raise WeightsError(msg if msg.startswith(str(file)) else f"{file}: the embedded config is invalid ({msg}); {fix}") from None


# ---------------------------------------------------------------------------- one entry point


@dataclass(frozen=True)
class ResolvedWeights:
    """Weights named by a spec, read and checked (known key names, finite values).

    Attributes:
        state_dict: the tensors, under the current torchvision key names.
        implied: config fields the weights fix: a checkpoint's whole config; for a state dict its
            architecture, backbone, class count, channel and head widths (plus ``frozen_bn_eps``
            for a v1 file: torchvision's convention is 0, see :func:`v1_frozen_bn_eps`).
        source: the spec as given, for messages.
        config: a checkpoint's own config (None for a state dict).
        backbone_only: the tensors are a ResNet body only (``backbone.body.*``; ImageNet weights):
            load them with ``load_into(..., backbone_only=True)``; they cannot detect.
    """

    state_dict: dict[str, Tensor]
    implied: dict[str, Any]
    source: str
    config: Config | None = None
    backbone_only: bool = False

    @property
    def frozen_bn_eps(self) -> float | None:
        """The frozen-BatchNorm eps the weights were made with, None when they do not say."""
        return self.implied.get("frozen_bn_eps")

    def fit(self, config: Config, keys: tuple[str, ...]) -> Config:
        """``config`` with ``frozen_bn_eps`` following the weights when it is unset; a one-line
        :class:`WeightsError` when one of ``keys`` differs from what the weights imply."""
        for key in keys:
            if key in self.implied and getattr(config, key) != self.implied[key]:
                raise WeightsError(f"{self.source}: the weights have {key}={self.implied[key]!r} but the config says "
                                   f"{getattr(config, key)!r}; set {key}: {self.implied[key]!r} in the config or use "
                                   "matching weights")
        if config.frozen_bn_eps is None and self.frozen_bn_eps is not None:
            return config.replace(frozen_bn_eps=self.frozen_bn_eps)
        return config


def resolve_weights(spec: str | os.PathLike[str], *, progress: bool = True, backbone: str | None = None,
                    allow_backbone_only: bool = False) -> ResolvedWeights:
    """Read the weights ``spec`` names: ``"coco"``/``"coco-v2"``/``"imagenet"`` (downloaded once,
    hash-checked), one of our checkpoints (``.safetensors`` with a config, or a folder), or a
    state-dict file.

    The one place that turns a weights spec into tensors and config values (``maskrcnn.load``,
    ``maskrcnn train --weights``). ``"imagenet"`` is the ImageNet ResNet of depth ``backbone``
    (default resnet50). Backbone-only weights (``imagenet``, a ResNet classifier ``.pth``) are
    accepted only with ``allow_backbone_only`` (training starts from them; detecting cannot).
    Every problem is a one-line :class:`WeightsError` naming the file and the fix.
    """
    source = str(spec)
    name = imagenet_name(backbone) if source == IMAGENET else source
    if name in NAMED_WEIGHTS:
        if NAMED_WEIGHTS[name].architecture is None and not allow_backbone_only:
            raise WeightsError(_BACKBONE_ONLY.format(source=source))  # before downloading it
        path, entry = resolve_named(name, progress=progress)
        sd = convert_torchvision(read_state_dict(path))
        if entry.architecture is None:
            return _backbone_weights(sd, source, allow_backbone_only)
        implied = _implied_by(sd, source)
        if implied["architecture"] == "v1":
            implied["frozen_bn_eps"] = 0.0  # torchvision's COCO file
        return ResolvedWeights(sd, implied, source)
    if is_checkpoint(spec):
        config, sd = load_checkpoint(spec)
        return ResolvedWeights(sd, config.model_dump(), source, config)
    sd = read_state_dict(spec)
    if backbone_state_dict(sd) is not None:
        return _backbone_weights(sd, source, allow_backbone_only)
    sd = convert_torchvision(sd)
    implied = _implied_by(sd, source)
    if implied["architecture"] == "v1":
        implied["frozen_bn_eps"] = v1_frozen_bn_eps(sd)
    return ResolvedWeights(sd, implied, source)


_BACKBONE_ONLY = ("{source}: holds a backbone only (ImageNet classifier weights), which cannot detect; train from it "
                  "with maskrcnn train --weights {source}")


def _backbone_weights(sd: dict[str, Tensor], source: str, allowed: bool) -> ResolvedWeights:
    """A backbone-only state dict as :class:`ResolvedWeights` (it implies the depth and stem width)."""
    body = backbone_state_dict(sd)
    if body is None:
        raise WeightsError(f"{source}: not a ResNet backbone state dict (no conv1.weight / layer1.* keys); pass "
                           "torchvision ResNet weights")
    if not allowed:
        raise WeightsError(_BACKBONE_ONLY.format(source=source))
    try:
        implied: dict[str, Any] = {"backbone": _depth_from_keys(body),
                                   "backbone_width": int(body["backbone.body.conv1.weight"].shape[0]),
                                   "frozen_bn_eps": 1e-5}  # an ImageNet classifier's plain BatchNorm
    except (WeightsError, IndexError) as exc:
        raise WeightsError(f"{source}: {exc}") from None
    return ResolvedWeights(body, implied, source, backbone_only=True)


def _implied_by(sd: dict[str, Tensor], source: str) -> dict[str, Any]:
    try:
        return config_from_state_dict(sd)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}") from None

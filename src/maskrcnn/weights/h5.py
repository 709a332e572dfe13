"""Matterport's Keras ``.h5`` weights, read with h5py (no TensorFlow), for ``architecture: matterport``.

Keras' layout: the layers under a ``model_weights`` group (a whole saved model) or at the top
(``save_weights``), listed in the ``layer_names`` attribute; each layer group lists its arrays in
``weight_names`` (``conv1/kernel:0``, ``bn_conv1/moving_mean:0``, ...). A nested model
(Matterport's ``rpn_model``) holds several layers in one group; its arrays are assigned to the
layer named in their path. Conversions: Conv2D kernels HWIO -> OIHW; Conv2DTranspose kernels
``(H, W, out, in)`` -> ``(in, out, H, W)``; Dense ``(in, out)`` -> ``(out, in)``; BatchNorm gamma,
beta, moving mean and variance -> weight, bias, running_mean, running_var. The arrays go to
``net.layers.<Keras name>.*`` of :class:`~maskrcnn.modeling.matterport.MatterportMaskRCNN`.

The file fixes the network's shape: the class count (``mrcnn_class_logits``), the depth (the
number of ``res4`` blocks: 6 is resnet50, 23 resnet101), the stem, FPN, head widths and input
channels. Every problem is a one-line :class:`~maskrcnn.errors.WeightsError` naming the file and
the layer.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import WeightsError, first_line
from .files import check_finite, check_weights_file

__all__ = ["is_h5", "read_keras_layers", "h5_config", "read_h5_weights", "load_h5_into", "convert_layer",
           "WEIGHTLESS_LAYERS", "HDF5_MAGIC"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Matterport layer names without weights that ``exclude`` may name (``mrcnn_bbox`` is a Reshape;
#: ``rpn_model`` the nested RPN model, standing for its three convolutions).
WEIGHTLESS_LAYERS = {"mrcnn_bbox": (), "rpn_model": ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")}
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_DEPTHS = {6: "resnet50", 23: "resnet101"}

Layers = dict[str, dict[str, np.ndarray]]


def is_h5(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names an HDF5 file: the ``.h5``/``.hdf5`` suffix, or a regular file with HDF5's signature."""
    path = Path(spec)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return True
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # never open a FIFO or device (it would block)
            return False
        with open(path, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _h5py(source: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{source}: reading Matterport .h5 weights needs h5py; pip install 'maskrcnn[matterport]'") from None
    return h5py


def _decode(names: Iterable[Any]) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_keras_layers(path: str | os.PathLike[str]) -> Layers:
    """``{layer name: {array kind: array}}`` of a Keras weights file (kinds: ``kernel``, ``bias``,
    ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``); layers without weights are left out."""
    path = check_weights_file(path)
    source = str(path)
    with open(path, "rb") as fh:
        if fh.read(8) != HDF5_MAGIC:
            raise WeightsError(f"{source}: not an HDF5 file (no HDF5 signature); pass a Keras .h5 weights file "
                               "(Matterport's mask_rcnn_*.h5) or save it again")
    h5py = _h5py(source)
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise WeightsError(f"{source}: an HDF5 file without Keras' layer_names; pass weights saved by Keras "
                                   "(model.save_weights / keras_model.save) such as Matterport's mask_rcnn_coco.h5")
            layers: Layers = {}
            for name in _decode(root.attrs["layer_names"]):
                if name not in root:
                    raise WeightsError(f"{source}: layer {name!r} is listed but has no group; the file is damaged, "
                                       "save or download it again")
                group = root[name]
                weight_names = _decode(group.attrs.get("weight_names", []))
                owners = {w.split("/")[-2] for w in weight_names if "/" in w}
                nested = len(owners) > 1  # a model inside the model (rpn_model): arrays named by their layer
                for wname in weight_names:
                    parts = wname.split("/")
                    owner = parts[-2] if nested and len(parts) > 1 else name
                    kind = parts[-1].split(":")[0]
                    try:
                        array = np.asarray(group[wname][()])
                    except Exception as exc:  # noqa: BLE001 - h5py raises KeyError, OSError, ... on damage
                        raise WeightsError(f"{source}: layer {owner!r}: cannot read {wname} ({first_line(exc, limit=120)}); "
                                           "the file is damaged or truncated, save or download it again") from None
                    layers.setdefault(owner, {})[kind] = array
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py's errors for truncated/garbled files are OSError, KeyError ...
        raise WeightsError(f"{source}: not a readable HDF5 file ({first_line(exc, limit=120)}); it is damaged or "
                           "truncated, save or download it again") from None
    return layers


def _kernel(layers: Layers, name: str, source: str) -> np.ndarray:
    try:
        return layers[name]["kernel"]
    except KeyError:
        raise WeightsError(f"{source}: missing layer {name!r} (or its kernel); not Matterport Mask R-CNN weights "
                           "(mask_rcnn_*.h5), or a file saved from another model") from None


def h5_config(layers: Layers, source: str) -> dict[str, Any]:
    """Config values the file fixes: ``architecture: matterport``, backbone depth, class count, widths."""
    blocks = {m[1] for name in layers if (m := re.fullmatch(r"res4([a-z])_branch2a", name))}
    if len(blocks) not in _DEPTHS:
        raise WeightsError(f"{source}: has {len(blocks)} res4 blocks; Matterport's resnet50 has 6 and resnet101 23 "
                           "(BACKBONE); pass Matterport Mask R-CNN weights")
    conv1 = _kernel(layers, "conv1", source)
    logits = _kernel(layers, "mrcnn_class_logits", source)
    for name, rank in (("conv1", 4), ("mrcnn_class_logits", 2)):
        if _kernel(layers, name, source).ndim != rank:
            raise WeightsError(f"{source}: layer {name!r}: kernel of shape {_kernel(layers, name, source).shape}, "
                               f"expected {rank} dimensions; not Matterport Mask R-CNN weights")
    return {"architecture": "matterport", "backbone": _DEPTHS[len(blocks)], "num_classes": int(logits.shape[1]),
            "backbone_width": int(conv1.shape[3]), "image_channel_count": int(conv1.shape[2]),
            "fpn_channels": int(_kernel(layers, "fpn_c5p5", source).shape[-1]),
            "box_head_dim": int(_kernel(layers, "mrcnn_class_conv1", source).shape[-1]),
            "mask_head_channels": int(_kernel(layers, "mrcnn_mask_conv1", source).shape[-1])}


def _net_shape(layers: Layers, implied: dict[str, Any], source: str) -> Any:
    """The :class:`~maskrcnn.modeling.matterport.NetShape` of the file (its RPN widths too)."""
    from ..modeling.matterport.network import NetShape

    rpn = _kernel(layers, "rpn_class_raw", source)
    return NetShape(num_classes=implied["num_classes"], backbone=implied["backbone"], width=implied["backbone_width"],
                    fpn=implied["fpn_channels"], fc=implied["box_head_dim"], mask=implied["mask_head_channels"],
                    anchors=int(rpn.shape[-1]) // 2, in_channels=implied["image_channel_count"], rpn=int(rpn.shape[-2]))


def convert_layer(name: str, arrays: dict[str, np.ndarray], module: nn.Module, source: str) -> dict[str, Tensor]:
    """One Keras layer's arrays as ``module``'s state dict (transposed), shapes checked against it."""
    own = module.state_dict()
    out: dict[str, Tensor] = {}
    for kind, array in arrays.items():
        if kind in _BN_PARAMS:
            key, t = _BN_PARAMS[kind], torch.from_numpy(np.array(array, dtype=np.float32))
        elif kind == "kernel":
            a = np.asarray(array, dtype=np.float32)
            key = "weight"
            # Conv2D HWIO -> OIHW; Conv2DTranspose (H, W, out, in) -> (in, out, H, W): the same axes
            t = torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T))
        elif kind == "bias":
            key, t = "bias", torch.from_numpy(np.array(array, dtype=np.float32))
        else:
            raise WeightsError(f"{source}: layer {name!r} has an array {kind!r} that Matterport's layer has not; "
                               "pass Matterport Mask R-CNN weights")
        if key not in own:
            raise WeightsError(f"{source}: layer {name!r} has {kind!r} but the layer here has no {key}; the file is for "
                               "another architecture")
        if tuple(t.shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: layer {name!r}: {kind} has shape {tuple(array.shape)} but the model expects "
                               f"{_keras_shape(tuple(own[key].shape), kind, isinstance(module, nn.ConvTranspose2d))}; "
                               "the class count or BACKBONE differs: set NUM_CLASSES/BACKBONE to the file's, or "
                               "exclude the layer (exclude=[...])")
        out[key] = t
    missing = [k for k in own if k not in out and k in ("weight", "bias", "running_mean", "running_var")]
    if missing:
        raise WeightsError(f"{source}: layer {name!r} lacks {missing[0]} (has {', '.join(arrays) or 'nothing'}); "
                           "not Matterport Mask R-CNN weights")
    check_finite(out, f"{source} layer {name!r}")
    return out


def _keras_shape(shape: tuple[int, ...], kind: str, transposed: bool) -> tuple[int, ...]:
    """A torch shape written as Keras stores it (for messages)."""
    if kind == "kernel" and len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if kind == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


def read_h5_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state dict, implied config values)`` of a Matterport ``.h5`` file, every layer present and
    of the right shape (a one-line :class:`WeightsError` naming the first that is not)."""
    from ..modeling.matterport.network import MatterportLayers

    source = str(path)
    layers = read_keras_layers(path)
    implied = h5_config(layers, source)
    with torch.device("meta"):  # names and shapes only, nothing allocated
        net = MatterportLayers(_net_shape(layers, implied, source))
    extra = [n for n in layers if n not in net.layers]
    if extra:
        raise WeightsError(f"{source}: has layer {extra[0]!r} ({len(extra)} in all) that Matterport's Mask R-CNN has not; "
                           "pass Matterport Mask R-CNN weights (mask_rcnn_*.h5)")
    sd: dict[str, Tensor] = {}
    for name, module in net.layers.items():
        if name not in layers:
            raise WeightsError(f"{source}: missing layer {name!r}; the file is not complete Matterport Mask R-CNN "
                               "weights (load partial files with MaskRCNN.load_weights(path, by_name=True))")
        for key, t in convert_layer(name, layers[name], module, source).items():
            sd[f"net.layers.{name}.{key}"] = t
    return sd, implied


def load_h5_into(model: nn.Module, path: str | os.PathLike[str], *, by_name: bool = False,
                 exclude: Sequence[str] = (), layers: Layers | None = None) -> list[str]:
    """Load a Matterport ``.h5`` into ``model`` (a ``MatterportMaskRCNN``) as Matterport's
    ``load_weights`` does; returns the names of the layers loaded.

    ``exclude``: layer names left as they are (Matterport's names; ``rpn_model`` stands for the
    RPN's three convolutions, ``mrcnn_bbox`` has no weights). ``by_name``: only the layers the file
    and the model share are loaded, others keep their weights; otherwise every (not excluded)
    layer of the model must be in the file. A layer of another shape is an error either way.
    ``layers``: the file's :func:`read_keras_layers`, when already read.
    """
    source = str(path)
    own = model.net.layers  # type: ignore[union-attr]
    skipped: set[str] = set()
    for name in ([exclude] if isinstance(exclude, str) else list(exclude)):
        if name in WEIGHTLESS_LAYERS:
            skipped |= set(WEIGHTLESS_LAYERS[name])
        elif name in own:
            skipped.add(name)
        else:
            raise WeightsError(f"exclude: {name!r} is not a layer of Matterport's network; use its layer names, e.g. "
                               "mrcnn_class_logits, mrcnn_bbox_fc, mrcnn_bbox, mrcnn_mask, conv1")
    layers = read_keras_layers(path) if layers is None else layers
    targets = [n for n in own if n not in skipped]
    if not by_name:
        missing = [n for n in targets if n not in layers]
        if missing:
            raise WeightsError(f"{source}: missing layer {missing[0]!r} ({len(missing)} in all); load it with "
                               "by_name=True to keep the model's own weights for the layers the file lacks")
    loaded = []
    with torch.no_grad():
        for name in targets:
            if name in layers:
                own[name].load_state_dict(convert_layer(name, layers[name], own[name], source))
                loaded.append(name)
    if not loaded:
        raise WeightsError(f"{source}: no layer of the file matches Matterport's network here; pass Matterport Mask R-CNN "
                           "weights (mask_rcnn_*.h5)")
    return loaded

"""Write a Matterport-style Keras ``.h5`` (h5py only) from the layers of a MatterportLayers net.

The inverse of ``maskrcnn.weights.h5``'s conversions, written independently: Conv2D kernels
OIHW -> HWIO, Conv2DTranspose ``(in, out, H, W)`` -> ``(H, W, out, in)``, Dense ``(out, in)`` ->
``(in, out)``, BatchNorm weight/bias/running stats -> gamma/beta/moving_mean/moving_variance.
The RPN's three convolutions go in one nested ``rpn_model`` group, as Matterport saves them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

RPN = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")


def keras_arrays(module: nn.Module) -> list[tuple[str, np.ndarray]]:
    """(kind, array) in Keras' order for one torch layer."""
    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if isinstance(module, FrozenBatchNorm2d):
        return [("gamma", sd["weight"]), ("beta", sd["bias"]), ("moving_mean", sd["running_mean"]),
                ("moving_variance", sd["running_var"])]
    w = sd["weight"]
    if isinstance(module, nn.ConvTranspose2d):  # (in, out, H, W) -> (H, W, out, in)
        kernel = w.transpose(2, 3, 1, 0)
    elif w.ndim == 4:  # (out, in, H, W) -> (H, W, in, out)
        kernel = w.transpose(2, 3, 1, 0)
    else:  # Dense (out, in) -> (in, out)
        kernel = w.T
    return [("kernel", np.ascontiguousarray(kernel)), ("bias", sd["bias"])]


def write_keras_h5(path: Path, layers: nn.ModuleDict, *, model_weights: bool = True, drop: tuple[str, ...] = (),
                   extra_weightless: tuple[str, ...] = ("input_image", "mrcnn_bbox", "pool_squeeze")) -> Path:
    """Write ``layers`` (name -> module) as Keras saves a model's weights; ``drop`` leaves layers out."""
    import h5py

    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        names: list[str] = list(extra_weightless[:1])
        for name in extra_weightless:
            root.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        rpn_done = False
        for name, module in layers.items():
            if name in drop:
                continue
            if name in RPN:
                if rpn_done:
                    continue
                rpn_done = True
                g = root.create_group("rpn_model")
                wnames = []
                for sub in RPN:
                    if sub in drop:
                        continue
                    for kind, arr in keras_arrays(layers[sub]):
                        wn = f"{sub}/{kind}:0"
                        g.create_dataset(wn, data=arr)
                        wnames.append(wn.encode())
                g.attrs["weight_names"] = np.array(wnames)
                names.append("rpn_model")
                continue
            g = root.create_group(name)
            wnames = []
            for kind, arr in keras_arrays(module):
                wn = f"{name}/{kind}:0"
                g.create_dataset(wn, data=arr)
                wnames.append(wn.encode())
            g.attrs["weight_names"] = np.array(wnames)
            names.append(name)
        names += list(extra_weightless[1:])
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
    return path


def randomize(net: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, BatchNorm statistics included (variance positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            elif name.endswith("weight") and t.dim() == 1:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / fan_in) ** 0.5)

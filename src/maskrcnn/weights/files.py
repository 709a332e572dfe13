"""Reading and checking weights files: regular non-empty files only, the format sniffed from the
first bytes, ``weights_only`` unpickling, no NaN or infinity."""

from __future__ import annotations

import pickle
import stat
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import WeightsError, first_line


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
            raise WeightsError(f"{path}: not a readable safetensors file ({first_line(exc, limit=160)}); the file is corrupt "
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
            raise WeightsError(f"{path}: corrupt or truncated PyTorch file ({first_line(exc, limit=160)}); "
                               "save or download it again") from None
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for bad files
            what = "a zip archive that is not a PyTorch file, or a truncated one" if kind == "zip" else \
                "a corrupt or truncated PyTorch file"
            raise WeightsError(f"{path}: {what} ({first_line(exc, limit=160)}); save or download it again") from None
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

"""Training checkpoints: atomic, pickle-free, keep-last-K plus best.

Layout inside a run directory::

    checkpoints/epoch_0003.safetensors        model weights (+ config YAML in the metadata)
    checkpoints/epoch_0003.state.safetensors  optimizer tensors, RNG states; JSON of scalars
    checkpoints/step_000123.safetensors       a mid-epoch save (Ctrl-C / SIGTERM), same pair
    checkpoints/last                          text: the stem of the newest complete pair
    best.safetensors                          weights with the best validation metric

Every file is written to a temporary name in the same folder, flushed, ``fsync``-ed and moved over
the target with ``os.replace`` (atomic on POSIX), so a crash leaves either the old or the new file,
never a torn one. The state file is written before the weights and the ``last`` pointer after
both, so ``last`` always names a complete pair. Nothing is pickled: tensors go to safetensors and
every other value to JSON in the safetensors metadata (key ``"state"``).
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import MaskRCNNError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_KEY",
    "atomic_write_bytes",
    "save_safetensors_atomic",
    "read_safetensors_metadata",
    "model_state_tensors",
    "optimizer_state",
    "load_optimizer_state",
    "capture_rng",
    "restore_rng",
    "CheckpointManager",
]

#: ``format`` metadata of every file; weights files carry their config YAML under
#: :data:`CONFIG_KEY`, as :func:`maskrcnn.weights.save_checkpoint` writes it, so
#: ``maskrcnn.load(run_dir / "best.safetensors")`` works.
CHECKPOINT_FORMAT = "maskrcnn/1"
CONFIG_KEY = "maskrcnn_config"


# --------------------------------------------------------------------------- atomic files


def fsync_path(path: str | Path) -> None:
    """Flush a written file, or a folder's entries, to disk (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes | Callable[[Any], None]) -> None:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def save_safetensors_atomic(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors`` file of ``tensors`` with string ``metadata``, written atomically."""
    atomic_write_bytes(path, save(dict(tensors), metadata=dict(metadata or {})))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return dict(header.get("__metadata__") or {})


# --------------------------------------------------------------------------- model / optimizer


def model_state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as independent contiguous CPU tensors (``module.`` prefix removed)."""
    model = getattr(model, "module", model)
    out = {}
    for name, t in model.state_dict().items():
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-serialisable remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{idx}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optimizer/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- random number generators


def capture_rng(prefix: str = "rng") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The python, numpy, torch and CUDA generator states as tensors + JSON."""
    tensors = {f"{prefix}/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}/cuda/{i}"] = s
    np_state = np.random.get_state()
    tensors[f"{prefix}/numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"name": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], prefix: str = "rng") -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(tensors[f"{prefix}/torch"])
    cuda = sorted((k for k in tensors if k.startswith(f"{prefix}/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    n = meta["numpy"]
    keys = tensors[f"{prefix}/numpy"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


# --------------------------------------------------------------------------- manager


class CheckpointManager:
    """Saves and finds the checkpoints of one run directory.

    Args:
        run_dir: the run directory (``checkpoints/`` and ``best.safetensors`` live in it).
        keep: most recent checkpoint pairs kept (at least 1); ``best`` is separate.
    """

    def __init__(self, run_dir: str | Path, keep: int = 3) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep = max(1, int(keep))

    # ---------------------------------------------------------------- paths
    def weights_path(self, stem: str) -> Path:
        return self.dir / f"{stem}.safetensors"

    def state_path(self, stem: str) -> Path:
        return self.dir / f"{stem}.state.safetensors"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.safetensors"

    @staticmethod
    def epoch_stem(epoch: int) -> str:
        """Stem of the checkpoint at the end of 1-based ``epoch``."""
        return f"epoch_{epoch:04d}"

    @staticmethod
    def step_stem(global_step: int) -> str:
        """Stem of a mid-epoch checkpoint after ``global_step`` optimizer steps."""
        return f"step_{global_step:06d}"

    # ---------------------------------------------------------------- saving
    def save(
        self,
        stem: str,
        weights: Mapping[str, torch.Tensor],
        weights_meta: Mapping[str, str],
        state_tensors: Mapping[str, torch.Tensor],
        state: Mapping[str, Any],
    ) -> Path:
        """Write the pair ``stem``, point ``last`` at it and prune old pairs; return the weights path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"format": CHECKPOINT_FORMAT, "kind": "training_state", "state": json.dumps(state)}
        save_safetensors_atomic(self.state_path(stem), state_tensors, meta)
        save_safetensors_atomic(self.weights_path(stem), weights, {"format": CHECKPOINT_FORMAT, **weights_meta})
        atomic_write_bytes(self.dir / "last", (stem + "\n").encode())
        self.prune()
        return self.weights_path(stem)

    def save_best(self, weights: Mapping[str, torch.Tensor], weights_meta: Mapping[str, str]) -> Path:
        """Write ``best.safetensors`` atomically."""
        save_safetensors_atomic(self.best_path, weights, {"format": CHECKPOINT_FORMAT, **weights_meta})
        return self.best_path

    def _saved(self) -> list[tuple[int, str]]:
        """(global step, stem) of every complete pair, oldest first."""
        out = []
        for state in self.dir.glob("*.state.safetensors"):
            stem = state.name[: -len(".state.safetensors")]
            if not self.weights_path(stem).is_file():
                continue
            try:
                step = int(json.loads(read_safetensors_metadata(state)["state"])["global_step"])
            except (OSError, ValueError, KeyError, struct.error):
                continue
            out.append((step, stem))
        return sorted(out)

    def prune(self) -> None:
        """Delete all but the ``keep`` newest pairs (never the one ``last`` names)."""
        last = self.last()
        saved = self._saved()
        for _, stem in saved[: max(0, len(saved) - self.keep)]:
            if stem == last:
                continue
            self.state_path(stem).unlink(missing_ok=True)
            self.weights_path(stem).unlink(missing_ok=True)

    # ---------------------------------------------------------------- loading
    def last(self) -> str | None:
        """Stem named by the ``last`` pointer, or None."""
        pointer = self.dir / "last"
        if not pointer.is_file():
            return None
        stem = pointer.read_text().strip()
        return stem or None

    def load(self, stem: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """(weights, state tensors, state JSON) of ``stem`` (default: ``last``)."""
        stem = stem or self.last()
        if stem is None:
            raise MaskRCNNError(f"{self.dir}: no checkpoint to resume from (no 'last' pointer); start a new run instead of --resume")
        wpath, spath = self.weights_path(stem), self.state_path(stem)
        for p in (wpath, spath):
            if not p.is_file():
                raise MaskRCNNError(f"{p}: checkpoint file missing; resume from another run or remove {self.dir / 'last'}")
        try:
            meta = read_safetensors_metadata(spath)
            state = json.loads(meta["state"])
            return load_file(wpath), load_file(spath), state
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise MaskRCNNError(f"{spath}: unreadable checkpoint ({exc}); resume from an earlier checkpoint") from None

"""Training checkpoints: atomic, pickle-free, keep-last-K plus best.

Layout inside a run directory::

    checkpoints/epoch_0003.safetensors        model weights (+ config YAML in the metadata)
    checkpoints/epoch_0003.state.safetensors  optimizer tensors, RNG states; JSON of scalars
    checkpoints/step_000123.safetensors       a mid-epoch save (Ctrl-C / SIGTERM), same pair
    checkpoints/last                          text: the stem of the newest complete pair
    best.safetensors                          weights with the best validation metric

Every file is written with :func:`maskrcnn.utils.files.atomic_write` (a temporary name in the same
folder, flushed, ``fsync``-ed and moved over the target), so a crash or a full disk leaves either
the old or the new file, never a torn one. The state file is written before the weights and the ``last`` pointer after
both, so ``last`` always names a complete pair. Nothing is pickled: tensors go to safetensors and
every other value to JSON in the safetensors metadata (key ``"state"``).
"""

from __future__ import annotations

import json
import math
import random
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..errors import first_line
from ..utils.files import atomic_write, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_KEY",
    "TRAIN_MODEL_PREFIX",
    "train_model_tensors",
    "save_safetensors_atomic",
    "read_safetensors_header",
    "read_safetensors_metadata",
    "load_safetensors",
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
#: state-file tensors of the raw training weights when the weights file holds their moving average (``ema_decay``)
TRAIN_MODEL_PREFIX = "train_model/"


def train_model_tensors(state_tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The raw training weights a state file holds beside their moving average (by parameter name;
    empty when the run had no ``ema_decay``)."""
    n = len(TRAIN_MODEL_PREFIX)
    return {k[n:]: v for k, v in state_tensors.items() if k.startswith(TRAIN_MODEL_PREFIX)}


# --------------------------------------------------------------------------- files


def save_safetensors_atomic(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors`` file of ``tensors`` with string ``metadata``, written atomically
    (:func:`maskrcnn.utils.files.atomic_write`: a full disk is a one-line error, the old file stays)."""
    data = save(dict(tensors), metadata=dict(metadata or {}))
    atomic_write(path, lambda fh: fh.write(data))


#: Largest safetensors header read (the JSON of names, shapes and metadata); real ones are ~100 KB.
MAX_HEADER_BYTES = 64 << 20

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size without reading the tensors.

    Raises ``ValueError`` with a short reason (empty, truncated, not a safetensors file, a tensor
    outside the file) instead of allocating what a corrupt length field claims.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError("empty file")
    if size < 8:
        raise ValueError(f"truncated ({size} bytes)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError("not a safetensors file or truncated (its header length is larger than the file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a JSON object)")
    data_len, end = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise ValueError("not a safetensors file (metadata is not a string mapping)")
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            numel = math.prod(int(d) for d in info["shape"])
            width = _DTYPE_BYTES[info["dtype"]]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"not a safetensors file (bad entry for tensor {name!r})") from None
        if not 0 <= begin <= stop or stop - begin != numel * width:
            raise ValueError(f"not a safetensors file (bad offsets of tensor {name!r})")
        end = max(end, stop)
    if end > data_len:
        raise ValueError(f"truncated ({size} bytes; its tensors need {8 + n + end})")
    return header


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its (checked) header."""
    return dict(read_safetensors_header(path).get("__metadata__") or {})


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; ``ValueError`` with a short reason when it cannot be read."""
    read_safetensors_header(path)
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError (not an OSError)
        reason = first_line(exc)
        raise ValueError(f"unreadable safetensors file ({reason})") from None


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
        """Write the pair ``stem``, point ``last`` at it and prune old pairs; return the weights path.

        When a write fails (a full disk: :class:`maskrcnn.utils.files.OutputError`) the half-written
        pair is removed and ``last`` still names the previous complete pair.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"format": CHECKPOINT_FORMAT, "kind": "training_state", "state": json.dumps(state)}
        try:
            save_safetensors_atomic(self.state_path(stem), state_tensors, meta)
            save_safetensors_atomic(self.weights_path(stem), weights, {"format": CHECKPOINT_FORMAT, **weights_meta})
            atomic_write_text(self.dir / "last", stem + "\n")
        except BaseException:
            if stem != self.last():
                for p in (self.state_path(stem), self.weights_path(stem)):
                    p.unlink(missing_ok=True)
            raise
        self.prune()
        return self.weights_path(stem)

    def save_best(self, weights: Mapping[str, torch.Tensor], weights_meta: Mapping[str, str]) -> Path:
        """Write ``best.safetensors`` atomically."""
        save_safetensors_atomic(self.best_path, weights, {"format": CHECKPOINT_FORMAT, **weights_meta})
        return self.best_path

    def stems(self) -> list[str]:
        """Stems of every checkpoint file in the folder (complete pair or not), newest written first."""
        if not self.dir.is_dir():
            return []
        found: dict[str, float] = {}
        for p in self.dir.glob("*.safetensors"):
            if p.name.startswith("."):
                continue
            stem = p.name.removesuffix(".safetensors").removesuffix(".state")
            try:
                found[stem] = max(found.get(stem, 0.0), p.stat().st_mtime)
            except OSError:
                continue
        return sorted(found, key=lambda k: (found[k], k), reverse=True)

    def _saved(self) -> list[tuple[int, str]]:
        """(global step, stem) of every complete pair with a readable state header, oldest first."""
        out = []
        for stem in self.stems():
            if not (self.weights_path(stem).is_file() and self.state_path(stem).is_file()):
                continue
            try:
                step = int(json.loads(read_safetensors_metadata(self.state_path(stem))["state"])["global_step"])
            except (OSError, ValueError, KeyError, TypeError, struct.error):
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
    @property
    def last_path(self) -> Path:
        """The ``last`` pointer file."""
        return self.dir / "last"

    def read_last(self) -> str | None:
        """The text of the ``last`` pointer (None when missing); ``ValueError`` when it is not a stem."""
        pointer = self.last_path
        if not pointer.exists():
            return None
        try:
            with open(pointer, "rb") as fh:
                raw = fh.read(257)
            text = raw.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"unreadable ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        if not STEM_PATTERN.fullmatch(text):
            shown = text[:40] + ("..." if len(text) > 40 else "")
            raise ValueError(f"does not name a checkpoint ({shown!r}; expected e.g. epoch_0003)" if text else "empty")
        return text

    def last(self) -> str | None:
        """Stem named by the ``last`` pointer, or None (missing or not a checkpoint name)."""
        try:
            return self.read_last()
        except ValueError:
            return None

    def has_checkpoint(self) -> bool:
        """True when the run has a ``last`` pointer or any checkpoint file (usable or not)."""
        return self.last_path.exists() or bool(self.stems())

    def load(self, stem: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        """(weights, state tensors, state JSON) of ``stem`` (default: the newest readable pair, see
        :func:`maskrcnn.engine.resume.find_resume_point`; the trainer checks more before resuming)."""
        from .resume import find_resume_point, load_pair

        if stem is not None:
            return load_pair(self, stem, strict=False)
        point = find_resume_point(self, strict=False)
        return point.weights, point.tensors, point.state


#: Names of checkpoint pairs (what ``last`` may contain).
STEM_PATTERN = re.compile(r"(epoch_\d{4,}|step_\d{6,})")

"""Run directories: naming a new one, finding the one to resume, and what a run keeps of its inputs.

A run lives in ``<out_dir>/<name>_<YYYYmmdd-HHMMSS>/`` (Matterport's ``logs/<name><date>``) with
``config.yaml``, ``run.yaml`` (the inputs of ``maskrcnn train``: data paths, format, weights),
``metrics.jsonl``, ``checkpoints/``, ``best.safetensors`` and ``loss_curves.png``. With
``config.yaml`` and ``run.yaml`` a run resumes with ``--resume RUN_DIR`` and nothing else.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import MaskRCNNError, first_line
from ..utils.files import atomic_write_text

__all__ = [
    "RUN_INPUTS_FILE",
    "new_run_dir",
    "find_resume_dir",
    "resolve_resume",
    "write_run_files",
    "read_run_inputs",
    "run_config",
    "absolute_spec",
]

#: The file of a run's inputs (``data``, ``val_data``, ``format``, ``weights``).
RUN_INPUTS_FILE = "run.yaml"
_INPUT_KEYS = ("data", "val_data", "format", "weights")


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """A fresh, not yet existing run directory under ``out_dir`` (created)."""
    out = Path(out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"{name}_{stamp}"
    path, k = base, 1
    while path.exists():
        path = out / f"{name}_{stamp}_{k}"
        k += 1
    path.mkdir(parents=True)
    return path


def _has_checkpoint(run_dir: Path) -> bool:
    from .checkpoint import CheckpointManager

    return CheckpointManager(run_dir).has_checkpoint()


def _last_written(run_dir: Path) -> int:
    """When the run last wrote a checkpoint (ns; the newest of ``last`` and the checkpoint files)."""
    times = [0]
    for p in [run_dir / "checkpoints" / "last", *(run_dir / "checkpoints").glob("*.safetensors")]:
        try:
            times.append(p.stat().st_mtime_ns)
        except OSError:
            continue
    return max(times)


def find_resume_dir(out_dir: str | Path, name: str | None = None) -> Path | None:
    """The run under ``out_dir`` (of ``name`` when given) that wrote a checkpoint most recently."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    runs = [p for p in out.iterdir() if p.is_dir() and (name is None or p.name.startswith(f"{name}_")) and _has_checkpoint(p)]
    if not runs:
        return None
    return max(runs, key=_last_written)


def resolve_resume(resume: str | Path | None, out_dir: str | Path, name: str | None) -> Path | None:
    """The run directory to resume: ``None`` (new run), ``"auto"`` (latest of ``name``, or of any name
    when ``name`` is None; None when there is none) or a path.

    A path may be a run directory or any file inside it (e.g. a checkpoint).
    """
    if resume is None:
        return None
    if str(resume) == "auto":
        return find_resume_dir(out_dir, name)
    path = Path(resume)
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not path.is_dir():
        raise MaskRCNNError(f"--resume {resume}: no such run directory; pass a folder under {out_dir} or 'auto'")
    if not _has_checkpoint(path):
        raise MaskRCNNError(f"--resume {path}: the run has no checkpoint yet (no checkpoints/last); start a new run")
    return path


# --------------------------------------------------------------------------- what a run keeps


def absolute_spec(spec: str | None) -> str | None:
    """``spec`` as an absolute path when it names an existing file or folder (a run can be resumed
    from any working directory); other specs (``shapes:500``, ``coco``) unchanged."""
    if spec is None or not os.path.exists(spec):
        return spec
    return os.path.abspath(spec)


def write_run_files(run_dir: str | Path, config: Any, inputs: Mapping[str, Any] | None = None,
                    compare: bool = False) -> list[str]:
    """Write ``config.yaml`` (and ``run.yaml`` of ``inputs`` when given) atomically.

    With ``compare`` (a resumed run), returns the config fields that differ from the
    ``config.yaml`` already there (empty when it is missing or unreadable).
    """
    from ..config import Config

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    changed: list[str] = []
    if compare and path.is_file():
        try:
            old = Config.from_yaml(path).model_dump()
        except (MaskRCNNError, OSError, UnicodeDecodeError, ValueError):
            old = {}
        changed = [k for k, v in config.model_dump().items() if old.get(k, v) != v]
    atomic_write_text(path, config.to_yaml())
    if inputs is not None:
        record = {k: inputs.get(k) for k in _INPUT_KEYS}
        header = "# inputs of `maskrcnn train`; `maskrcnn train --resume RUN_DIR` reads them\n"
        atomic_write_text(run_dir / RUN_INPUTS_FILE, header + yaml.safe_dump(record, sort_keys=False))
    return changed


def read_run_inputs(run_dir: str | Path) -> tuple[dict[str, Any], str | None]:
    """``(inputs, problem)``: the run's ``run.yaml`` (keys ``data``, ``val_data``, ``format``, ``weights``)
    and why it could not be read (None when it was, or when the run has none)."""
    path = Path(run_dir) / RUN_INPUTS_FILE
    if not path.is_file():
        return {}, None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        return {}, f"{path}: unreadable ({type(exc).__name__})"
    if not isinstance(data, dict) or any(not (v is None or isinstance(v, str)) for v in data.values()):
        return {}, f"{path}: not a mapping of input names to paths"
    return {k: data.get(k) for k in _INPUT_KEYS}, None


def run_config(run_dir: str | Path) -> tuple[Any, str | None]:
    """``(config, note)`` of a run to resume: its ``config.yaml``, or, when that file is missing or
    unreadable, the config stored in its newest readable checkpoint (``note`` says so).

    Raises a one-line :class:`MaskRCNNError` when neither is usable.
    """
    from ..config import Config
    from .checkpoint import CONFIG_KEY, CheckpointManager, read_safetensors_metadata

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    try:
        return Config.from_yaml(path), None
    except (MaskRCNNError, OSError, UnicodeDecodeError, ValueError) as exc:
        problem = first_line(exc)
        if not path.is_file():
            problem = f"{path}: missing"
        elif not problem.startswith(str(path)):
            problem = f"{path}: unreadable ({problem})"
    manager = CheckpointManager(run_dir)
    for stem in manager.stems():
        weights = manager.weights_path(stem)
        try:
            text = read_safetensors_metadata(weights)[CONFIG_KEY]
            config = Config.create(**yaml.safe_load(text))
        except (OSError, ValueError, KeyError, TypeError, MaskRCNNError, yaml.YAMLError):
            continue
        return config, f"{problem}; using the config stored in {weights} (config.yaml is rewritten)"
    raise MaskRCNNError(f"{problem}; no checkpoint of the run holds a readable config either; "
                        f"restore config.yaml or pass --config")

"""Run directories: naming a new one, finding the one to resume.

A run lives in ``<out_dir>/<name>_<YYYYmmdd-HHMMSS>/`` (Matterport's ``logs/<name><date>``) with
``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``best.safetensors`` and
``loss_curves.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MaskRCNNError

__all__ = ["new_run_dir", "find_resume_dir", "resolve_resume"]


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
    return (run_dir / "checkpoints" / "last").is_file()


def find_resume_dir(out_dir: str | Path, name: str) -> Path | None:
    """The most recently updated run of ``name`` under ``out_dir`` that has a checkpoint."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    runs = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(f"{name}_") and _has_checkpoint(p)]
    if not runs:
        return None
    return max(runs, key=lambda p: (p / "checkpoints" / "last").stat().st_mtime_ns)


def resolve_resume(resume: str | Path | None, out_dir: str | Path, name: str) -> Path | None:
    """The run directory to resume: ``None`` (new run), ``"auto"`` (latest of ``name``, if any) or a path.

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

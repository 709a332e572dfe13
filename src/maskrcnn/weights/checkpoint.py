"""Our checkpoints: safetensors with the config (in the file's metadata, or a folder with config.yaml)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import Tensor, nn

from ..config import Config, ConfigError, parse_yaml
from ..errors import WeightsError, first_line
from ..utils.files import atomic_write, fsync_path
from .files import check_finite, check_weights_file

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
        raise WeightsError(f"{file}: not a readable safetensors file ({first_line(exc, limit=160)}); the checkpoint is corrupt "
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


"""Configuration presets shipped with the package (YAML files loadable with ``Config.from_yaml``).

``preset_path("shapes_demo")`` is the path of ``shapes_demo.yaml``; ``load_preset(name)`` the
:class:`~maskrcnn.config.Config` it describes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["PRESETS", "preset_path", "load_preset"]

#: Names of the shipped presets.
PRESETS: tuple[str, ...] = ("shapes_demo", "nuclei")


def preset_path(name: str) -> Path:
    """Path of the preset ``name`` (``"shapes_demo"`` or ``"shapes_demo.yaml"``)."""
    from ..config import ConfigError

    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return Path(str(resources.files(__name__).joinpath(f"{stem}.yaml")))


def load_preset(name: str):  # -> Config (import kept lazy)
    """The :class:`~maskrcnn.config.Config` of the preset ``name``."""
    from ..config import Config

    return Config.from_yaml(preset_path(name))

"""One-line ``AttributeError``s for Matterport names that have no counterpart here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def module_getattr(module: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``mrcnn.<part>.<name>: not available here; <what to use>`` for the
    names in ``table``, Python's usual message for any other."""
    part = module.rsplit(".", 1)[-1]

    def __getattr__(name: str) -> Any:
        if name in table:
            raise AttributeError(f"mrcnn.{part}.{name}: not available here; {table[name]}")
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__

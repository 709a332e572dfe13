"""Argument types shared by every command (``type=`` of ``argparse``).

Each type turns the text of a flag into a checked value or raises
:class:`argparse.ArgumentTypeError`, so a bad value (``--score 2``, ``--score nan``,
``--batch-size 0``, ``--minutes -5``) is a usage error of that flag before anything runs:
``maskrcnn detect: error: argument --score: a probability from 0 to 1 (e.g. 0.5), not '2'``.
NaN and infinity are refused by every number type.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["probability", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "port",
           "tta_views", "add_tta_argument", "tta_overrides"]


def _number(text: str, kind: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{kind} (e.g. {example}), not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{kind} (e.g. {example}), not {text!r}: NaN and infinity are not allowed")
    return value


def _integer(text: str, kind: str, example: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{kind} (e.g. {example}), not {text!r}") from None


def _checked(name: str, parse: Callable[[str, str, str], Any], kind: str, example: str,
             ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then require ``ok(value)``; errors say ``kind`` and ``example``."""

    def convert(text: str) -> Any:
        value = parse(text, kind, example)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{kind} (e.g. {example}), not {text!r}")
        return value

    convert.__name__ = convert.__qualname__ = name
    convert.__doc__ = f"Argparse type: {kind}."
    return convert


#: A finite number in ``[0, 1]`` (score and IoU thresholds).
probability = _checked("probability", _number, "a probability from 0 to 1", "0.5", lambda v: 0.0 <= v <= 1.0)
#: A whole number ``>= 1`` (batch sizes, steps, counts, threads, tile sizes).
positive_int = _checked("positive_int", _integer, "a whole number, at least 1", "2", lambda v: v >= 1)
#: A whole number ``>= 0`` (seeds, overlaps, pixel areas).
non_negative_int = _checked("non_negative_int", _integer, "a whole number, at least 0", "0", lambda v: v >= 0)
#: A finite number ``> 0`` (minutes, ratios).
positive_float = _checked("positive_float", _number, "a number above 0", "30", lambda v: v > 0)
#: A finite number ``>= 0``.
non_negative_float = _checked("non_negative_float", _number, "a number, at least 0", "0.1", lambda v: v >= 0)
#: A TCP port number from 1 to 65535.
port = _checked("port", _integer, "a TCP port from 1 to 65535", "8000", lambda v: 1 <= v <= 65535)


def tta_views(text: str) -> dict[str, list]:
    """``--tta``: comma-separated named sets of views (``hflip``, ``flips``, ``dihedral``), single views
    and scales written ``x1.25``; returns the config fields ``tta_views`` and ``tta_scales``."""
    from ..modeling.tta import TTA_PRESETS, TTA_VIEWS

    views: list[str] = []
    scales: list[float] = []
    for token in (t.strip() for t in text.split(",")):
        scale = None
        if token[:1] == "x":
            try:
                scale = float(token[1:])
            except ValueError:
                pass
        if scale is not None and math.isfinite(scale) and scale > 0 and scale != 1 and scale not in scales:
            scales.append(scale)
        elif token in TTA_PRESETS or token in TTA_VIEWS:
            views += [v for v in TTA_PRESETS.get(token, [token]) if v not in views]
        else:
            raise argparse.ArgumentTypeError(
                f"{token!r} in {text!r}: use {', '.join(TTA_PRESETS)} (named sets), views from {', '.join(TTA_VIEWS)} "
                "or scales such as x1.25 (not x1), comma-separated, e.g. dihedral or flips,x1.25")
    return {"tta_views": views, "tta_scales": scales}


def add_tta_argument(p: argparse.ArgumentParser) -> None:
    """``--tta VIEWS`` of ``detect`` and ``evaluate`` (:func:`tta_overrides` turns it into ``load()`` overrides)."""
    p.add_argument("--tta", type=tta_views, metavar="VIEWS",
                   help="test-time augmentation: also detect on these views of each image and fuse them: hflip, "
                        "flips (hflip, vflip, rot180), dihedral (all 8 flips and rotations: microscopy, aerial images), "
                        "single views, or scales such as x1.25, comma-separated; one more pass per view")


def tta_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``load()`` overrides of ``--tta``: ``tta_views`` and ``tta_scales``; none without it."""
    return dict(getattr(args, "tta", None) or {})

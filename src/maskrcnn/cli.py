"""The ``maskrcnn`` command line: ``maskrcnn <command> ...``.

Each command lives in ``maskrcnn.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; flags share the checked types of :mod:`maskrcnn.commands.args`.

What the user sees when something goes wrong is decided here, in one place:

* a user error (:class:`maskrcnn.errors.MaskRCNNError`) prints ``error: <one line>``, exit 2;
* ``--device`` of every command is checked first (:func:`maskrcnn.engine.runtime.resolve_device`);
* a command whose module needs a package that is not installed is listed as unavailable and,
  when called, says which package is missing (the other commands still work); any other import
  error of a command is a bug and is raised with its traceback;
* an :class:`OSError` about a path the user gave (permission denied, a folder where a file is
  expected, no space left, read-only file system ...) prints one line naming the path, exit 2.
  ``MASKRCNN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from .errors import MaskRCNNError, one_line, os_error_message, user_os_error

COMMANDS = ["detect", "train", "evaluate", "demo", "convert", "check_data", "plan", "tune", "config", "export", "serve"]

#: pip names of import names that differ (for the "missing package" message).
_PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "cv2": "opencv-python",
              "faster_coco_eval": "faster-coco-eval", "google": "protobuf"}


def missing_package(exc: ModuleNotFoundError) -> str | None:
    """``"package 'x' is not installed (pip install x)"`` when ``exc`` is about a third-party
    package; None when it is about this package itself (a bug, not a missing dependency)."""
    top = (exc.name or "").split(".")[0]
    if not top or top == "maskrcnn":
        return None
    return f"the package {top!r} is not installed; install it with: pip install {_PIP_NAMES.get(top, top)}"


def load_commands() -> tuple[dict[str, ModuleType], dict[str, str]]:
    """``({name: module}, {cli-name: why it is unavailable})`` of every command in :data:`COMMANDS`."""
    modules: dict[str, ModuleType] = {}
    unavailable: dict[str, str] = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"maskrcnn.commands.{name}")
        except ModuleNotFoundError as exc:
            why = missing_package(exc)
            if why is None:
                raise
            unavailable[name.replace("_", "-")] = why
    return modules, unavailable


def build_parser(commands: tuple[dict[str, ModuleType], dict[str, str]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrcnn", description="Mask R-CNN instance segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules, unavailable = commands if commands is not None else load_commands()
    for module in modules.values():
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    for name, why in unavailable.items():
        sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modules, unavailable = load_commands()
    called = next((a for a in argv if not a.startswith("-")), None)
    if called in unavailable:
        print(f"error: maskrcnn {called} is unavailable: {unavailable[called]}", file=sys.stderr)
        return 2
    args = build_parser((modules, unavailable)).parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from .engine.runtime import resolve_device

            resolve_device(args.device)  # fail before any work: a typo, or cuda without a GPU
        return int(args._run(args) or 0)
    except MaskRCNNError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        why = missing_package(exc)
        if why is None or os.environ.get("MASKRCNN_DEBUG"):
            raise
        print(f"error: maskrcnn {args.command} needs a package: {why}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not user_os_error(exc) or os.environ.get("MASKRCNN_DEBUG"):
            raise
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``maskrcnn`` command line: ``maskrcnn <command> ...``.

Each command lives in ``maskrcnn.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``. User errors (:class:`maskrcnn.errors.MaskRCNNError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MaskRCNNError

COMMANDS = ["detect", "train", "evaluate", "demo", "convert", "check_data", "plan", "config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrcnn", description="Mask R-CNN instance segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"maskrcnn.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"maskrcnn.commands.{name}":
                continue  # command not shipped in this build
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MaskRCNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

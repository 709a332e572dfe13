"""``maskrcnn config [--describe] [--config C] [--set k=v ...]``: print a validated config as YAML."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("config", help="print the (validated) config as YAML, or every field with its doc")
    p.add_argument("--config", help="config YAML to start from (default: the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--describe", action="store_true", help="list every field: default, unit and description")
    return p


def run(args: argparse.Namespace) -> int:
    from ..config import Config

    if args.describe:
        print(Config.describe())
        return 0
    config = Config.from_yaml(args.config) if args.config else Config()
    print(config.with_overrides(args.set).to_yaml(), end="")
    return 0

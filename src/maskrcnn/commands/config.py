"""``maskrcnn config [--describe] [--config C | --from-pipeline P [--num-images N]] [--set k=v ...]``:
print a validated config as YAML.

``--from-pipeline pipeline.config`` maps a TF Object Detection API pipeline onto the defaults
(:mod:`maskrcnn.compat.tfod.pipeline`); what it approximated and every field it did not map are
written as ``#`` comments at the top of the YAML (still a valid config file), and counted on stderr.
"""

from __future__ import annotations

import argparse
import sys

from .args import positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("config", help="print the (validated) config as YAML, or every field with its doc")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", help="config YAML to start from (default: the defaults)")
    source.add_argument("--from-pipeline", metavar="PIPELINE.config",
                        help="start from a TF Object Detection API pipeline.config (what has no equivalent is listed)")
    p.add_argument("--num-images", type=positive_int, default=None, metavar="N",
                   help="with --from-pipeline: training images, to turn num_steps into epochs (default: the records "
                        "of train_input_reader are counted when they are on disk)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--describe", action="store_true", help="list every field: default, unit and description")
    return p


def run(args: argparse.Namespace) -> int:
    from ..config import Config, ConfigError

    if args.describe:
        print(Config.describe())
        return 0
    if args.num_images is not None and not args.from_pipeline:
        raise ConfigError("--num-images: only used with --from-pipeline; drop it or pass --from-pipeline pipeline.config")
    if args.from_pipeline:
        from ..compat.tfod.pipeline import config_from_pipeline

        mapping = config_from_pipeline(args.from_pipeline, num_images=args.num_images)
        text = mapping.config.with_overrides(args.set).to_yaml()
        print("\n".join([f"# from {args.from_pipeline} (maskrcnn config --from-pipeline)", *mapping.comment_lines(), text]),
              end="")
        print(f"{args.from_pipeline}: mapped {len(mapping.mapped)} config fields; {len(mapping.unmapped)} pipeline fields "
              f"without an equivalent and {len(mapping.notes)} notes are listed as comments at the top", file=sys.stderr)
        return 0
    config = Config.from_yaml(args.config) if args.config else Config()
    print(config.with_overrides(args.set).to_yaml(), end="")
    return 0

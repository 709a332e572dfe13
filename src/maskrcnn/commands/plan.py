"""``maskrcnn plan --config C [--memory 8GiB] [--device cuda|cpu] [--write C2]``: make training fit in memory.

Measures the peak memory of real training steps of the config (synthetic images of the config's
input size with ``max_gt_instances`` instances each, every configuration in a fresh process) and,
when it is above the budget, measures each memory lever, ranks them by memory saved per accuracy
cost, and proposes the cheapest combination that fits, measured. ``--write C2`` saves it as a
config file. See :mod:`maskrcnn.planning` for what is measured and how estimates are made.
"""

from __future__ import annotations

import argparse
import sys

from .args import non_negative_float, positive_int

__all__ = ["add_parser", "run"]

#: :data:`maskrcnn.planning.LEVER_KEYS`, here so that ``maskrcnn --help`` does not import torch
LEVER_NAMES = ("checkpointing", "micro_batch", "amp", "mini_masks", "rois", "gt_instances", "frozen_stages", "crop",
               "image_size")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``plan``."""
    p = subparsers.add_parser(
        "plan",
        help="measure a config's training memory and propose the cheapest settings that fit a budget",
        description="Measure the peak memory of training steps (CUDA: max allocated; CPU: peak RSS above the "
                    "process after imports), each configuration in a fresh process, and, over budget, rank the memory "
                    "levers by memory saved per accuracy cost and propose the cheapest measured config that fits.",
    )
    p.add_argument("--config", "-c", required=True, help="YAML config to plan for")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field first (repeatable)")
    p.add_argument("--memory", "-m", default=None, metavar="SIZE",
                   help="memory budget, e.g. 8GiB, 16GB (default: the GPU's memory, or the RAM available now on CPU)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--write", "-w", metavar="C2", help="write the recommended config to this YAML file")
    p.add_argument("--headroom", type=non_negative_float, default=0.10,
                   help="fraction of the budget to leave free (default 0.10)")
    p.add_argument("--steps", type=positive_int, default=2, help="training steps per measurement (default 2)")
    p.add_argument("--image-size", metavar="HxW", help="size of the synthetic source images (default: a 4:3 photo "
                   "with short side image_min_dim)")
    p.add_argument("--instances", type=positive_int, default=None,
                   help="instances per image of your data (default: max_gt_instances, the worst case)")
    p.add_argument("--levers", metavar="A,B", help=f"only these levers ({', '.join(LEVER_NAMES)})")
    p.add_argument("--explore", action="store_true", help="measure every lever even when the config fits")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads of each measurement (CPU)")
    return p


def _image_size(text: str | None) -> tuple[int, int] | None:
    from ..config import ConfigError

    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise ConfigError(f"--image-size {text!r}: expected HxW, e.g. 800x1067") from None
    if h < 32 or w < 32:
        raise ConfigError(f"--image-size {text!r}: both sides must be at least 32 px")
    return h, w


def run(args: argparse.Namespace) -> int:
    from ..config import Config, ConfigError
    from ..planning import format_bytes, plan_memory
    from ..utils.files import atomic_write_text, ensure_output_file

    config = Config.from_yaml(args.config)
    if args.write:
        ensure_output_file(args.write, flag="--write")
    if args.overrides:
        config = config.with_overrides(args.overrides)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available here; use --device cpu")
    elif device != "cpu":
        raise ConfigError(f"--device {device!r}: use cuda, cuda:N or cpu")
    if not 0.0 <= args.headroom < 0.9:
        raise ConfigError("--headroom: a fraction between 0 and 0.9, e.g. 0.1")
    levers = [s.strip() for s in args.levers.split(",") if s.strip()] if args.levers else None

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    plan = plan_memory(config, args.memory, device, headroom=args.headroom, steps=max(1, args.steps),
                       image_size=_image_size(args.image_size), instances=args.instances, threads=args.threads,
                       levers=levers, explore=args.explore, log=log)
    print(plan.table())
    if args.write:
        if plan.recommended is None:
            print(f"not written: nothing tried fits {format_bytes(plan.target)}", file=sys.stderr)
            return 1
        header = [f"# written by `maskrcnn plan` from {args.config} for {format_bytes(plan.budget)} on {device}"]
        header += [f"# changed: {k}: {old} -> {new}" for k, old, new in plan.diff()] or ["# unchanged: the config fits"]
        path = atomic_write_text(args.write, "\n".join(header) + "\n" + plan.recommended.to_yaml())
        print(f"written: {path}")
    return 0 if plan.fits else 1

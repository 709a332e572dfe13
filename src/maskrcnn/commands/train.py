"""``maskrcnn train --config C [--set k=v ...] [--data D] [--val-data V] [--weights W] [--resume RUN_DIR|auto] [--out RUNS_DIR]``.

Trains on a dataset in any supported format (``--data``, format detected or ``--format``), or
on synthetic shapes (``--data shapes:500``). Multi-GPU: ``torchrun --nproc_per_node N -m
maskrcnn.cli train ...``. Ctrl-C or SIGTERM saves a checkpoint and stops; ``--resume RUN_DIR``
(or ``auto``) continues exactly where it stopped. Exit status 0 when finished, 130 when stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .args import positive_float

__all__ = ["add_parser", "run", "load_training_data", "pretrained_model"]

_SHAPES = re.compile(r"^shapes(?::(\d+))?$")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``."""
    p = subparsers.add_parser(
        "train",
        help="train a model on a dataset (resumable, multi-GPU with torchrun)",
        description="Train Mask R-CNN. Runs go to RUNS_DIR/<name>_<date>/ (config.yaml, metrics.jsonl, "
                    "checkpoints/, best.safetensors, loss_curves.png).",
    )
    p.add_argument("--config", "-c", help="YAML config (default with --resume RUN_DIR: the run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set epochs=24 --set learning_rate=0.01 (repeatable)")
    p.add_argument("--minutes", type=positive_float, default=None, metavar="M",
                   help="train for M minutes of wall-clock time (the schedule is fitted to the steps that fit; "
                        "same as --set max_train_minutes=M)")
    p.add_argument("--data", "-d", help="training dataset: annotation file or folder, or shapes[:N] for synthetic data")
    p.add_argument("--val-data", help="validation dataset (same kinds as --data)")
    p.add_argument("--format", "-f", default=None, help="annotation format of --data/--val-data (default: detected)")
    p.add_argument("--weights", "-w", metavar="W",
                   help="start from these weights: coco, coco-v2, one of our checkpoints or a torchvision .pth "
                        "(class layers of another class count are re-initialised); ignored with --resume")
    p.add_argument("--resume", metavar="RUN_DIR|auto", help="continue a run: its directory, or 'auto' for the latest run of this name")
    p.add_argument("--out", "-o", default="runs", metavar="RUNS_DIR", help="folder of run directories (default: runs)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: when stderr is a terminal; else one line per epoch)")
    return p


def load_training_data(spec: str, format: str | None, seed: int) -> Any:
    """A prepared dataset from a path (any supported format) or ``shapes[:N]``."""
    m = _SHAPES.match(spec)
    if m and not Path(spec).exists():
        from ..data.shapes import ShapesDataset

        return ShapesDataset(int(m.group(1) or 500), seed=seed)
    from ..data.formats import load_dataset
    from ..data.problems import summary_lines

    dataset = load_dataset(spec, format=format)
    for line in summary_lines(dataset.problems, spec):  # what loading skipped or repaired
        print(line, file=sys.stderr)
    return dataset


def _resolve_config(args: argparse.Namespace) -> Any:
    from ..config import Config, ConfigError

    if args.config:
        config = Config.from_yaml(args.config)
    elif args.resume and args.resume != "auto" and (Path(args.resume) / "config.yaml").is_file():
        config = Config.from_yaml(Path(args.resume) / "config.yaml")
    else:
        raise ConfigError("--config: required (a YAML file; `maskrcnn config` writes one), except with --resume RUN_DIR")
    config = config.with_overrides(args.overrides) if args.overrides else config
    if getattr(args, "minutes", None) is not None:
        config = config.with_overrides([f"max_train_minutes={args.minutes}"])
    return config


def _fit_classes(config: Any, dataset: Any, spec: str) -> Any:
    """Check the dataset's class count against the config; take its class names when unset."""
    from ..config import ConfigError

    n = int(getattr(dataset, "num_classes", 0) or 0)
    if n and n != config.num_classes:
        raise ConfigError(f"num_classes={config.num_classes} but {spec} has {n} classes including background; "
                          f"pass --set num_classes={n}")
    names = list(getattr(dataset, "class_names", []) or [])
    if config.class_names is None and len(names) == config.num_classes:
        config = config.replace(class_names=names)
    return config


def pretrained_model(config: Any, spec: str) -> tuple[Any, Any]:
    """``(config, model)`` with the weights ``spec`` loaded for fine-tuning.

    The architecture and backbone must match the weights; ``frozen_bn_eps`` follows the weights'
    convention when the config leaves it unset; class layers of another class count and ``conv1``
    of another channel count are adapted by :func:`maskrcnn.weights.load_into`.
    """
    from .. import weights as W
    from ..modeling import build_model

    resolved = W.resolve_weights(spec)
    config = resolved.fit(config, ("architecture", "backbone"))
    model = build_model(config)
    W.load_into(model, resolved.state_dict, source=f"--weights {spec}", reinit_classes=True, log=lambda m: print(m, file=sys.stderr))
    return config, model


def run(args: argparse.Namespace) -> int:
    """Build config and datasets, train, print where the results are; 130 when stopped early."""
    from ..engine import train
    from ..errors import MaskRCNNError

    config = _resolve_config(args)
    if not args.data:
        raise MaskRCNNError("--data: required; pass an annotation file or dataset folder (or shapes:500)")
    train_ds = load_training_data(args.data, args.format, config.seed)
    config = _fit_classes(config, train_ds, args.data)
    val_ds = None
    if args.val_data:
        val_ds = load_training_data(args.val_data, args.format, config.seed + 1)
        _fit_classes(config, val_ds, args.val_data)
    model = None
    if args.weights and not args.resume:
        config, model = pretrained_model(config, args.weights)
    result = train(config, train_ds, val_ds, out_dir=args.out, resume=args.resume, model=model,
                   device=args.device,
                   progress=sys.stderr.isatty() if args.progress is None else args.progress)
    print(f"run: {result.run_dir}")
    if result.best_checkpoint is not None:
        print(f"best: {result.best_checkpoint} ({result.best_metric} {result.best_value:.4f})")
    if result.last_checkpoint is not None:
        print(f"last: {result.last_checkpoint}")
    if result.interrupted:
        print(f"stopped; continue with: maskrcnn train --resume {result.run_dir}")
        return 130
    return 0

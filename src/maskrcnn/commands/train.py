"""``maskrcnn train --config C [--set k=v ...] [--data D] [--val-data V] [--weights W] [--resume RUN_DIR|auto] [--out RUNS_DIR]``.

Trains on a dataset in any supported format (``--data``, format detected or ``--format``), or
on synthetic shapes (``--data shapes:500``). Multi-GPU: ``torchrun --nproc_per_node N -m
maskrcnn.cli train ...``. Ctrl-C or SIGTERM saves a checkpoint and stops; ``--resume RUN_DIR``
(or ``auto``) continues exactly where it stopped. Exit status 0 when finished, 130 when stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import MaskRCNNError
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
    p.add_argument("--config", "-c", help="YAML config or preset name (nuclei, shapes_demo); with --resume it only picks "
                                          "which run 'auto' continues: a run keeps its own config.yaml (change fields with --set)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set epochs=24 --set learning_rate=0.01 (repeatable)")
    p.add_argument("--minutes", type=positive_float, default=None, metavar="M",
                   help="train for M minutes of wall-clock time (the schedule is fitted to the steps that fit; "
                        "same as --set max_train_minutes=M); the run fills the time unless you set epochs "
                        "(--set epochs=N or in your config file), then it ends at whichever comes first")
    p.add_argument("--data", "-d", help="training dataset: annotation file or folder, or shapes[:N] for synthetic data "
                                        "(with --resume: the run's, recorded in RUN_DIR/run.yaml; a path given overrides it)")
    p.add_argument("--val-data", help="validation dataset (same kinds as --data; with --resume: the run's)")
    p.add_argument("--format", "-f", default=None, help="annotation format of --data/--val-data (default: detected)")
    p.add_argument("--weights", "-w", metavar="W",
                   help="start from these weights: coco, coco-v2, imagenet (the ResNet body only, of --set backbone), one "
                        "of our checkpoints, a torchvision Mask R-CNN .pth or a ResNet backbone .pth (class layers of "
                        "another class count are re-initialised); ignored with --resume")
    p.add_argument("--resume", metavar="RUN_DIR|auto", help="continue a run with nothing else: its directory, or 'auto' for "
                                                          "the latest run in --out (of --config's name when given)")
    p.add_argument("--out", "-o", default="runs", metavar="RUNS_DIR", help="folder of run directories (default: runs)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress bars (default: when stderr is a terminal; else one line per epoch)")
    return p


def load_training_data(spec: str, format: str | None, seed: int) -> Any:
    """A prepared dataset from a path (any supported format) or ``shapes[:N]``."""
    m = _SHAPES.match(spec)
    if m and not Path(spec).exists():
        from ..data.synthetic import ShapesDataset

        return ShapesDataset(int(m.group(1) or 500), seed=seed)
    from ..data.formats import load_dataset
    from ..data.problems import summary_lines

    dataset = load_dataset(spec, format=format)
    for line in summary_lines(dataset.problems, spec):  # what loading skipped or repaired
        print(line, file=sys.stderr)
    return dataset


def _resolve_config(args: argparse.Namespace) -> Any:
    """The config of a new run: ``--config`` with ``--set`` and ``--minutes`` applied."""
    from ..config import Config, ConfigError

    if not args.config:
        raise ConfigError("--config: required to start a run (a YAML file or a preset: nuclei, shapes_demo; "
                          "`maskrcnn config` writes one); to continue a run pass --resume RUN_DIR or --resume auto")
    return _apply_overrides(Config.from_yaml(args.config), args)


def _apply_overrides(config: Any, args: argparse.Namespace) -> Any:
    config = config.with_overrides(args.overrides) if args.overrides else config
    if getattr(args, "minutes", None) is not None:
        config = config.with_overrides([f"max_train_minutes={args.minutes}"])
    return config


def _note(message: str) -> None:
    """A line for the user, printed by one process only under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- --minutes


#: With a time budget and no explicit ``epochs``, the run is allowed this many epochs at least
#: as long as the budget would last at a step of :data:`FASTEST_STEP_S` seconds (at most
#: :data:`MAX_FILL_EPOCHS`): more than any real run fits, so the budget decides the length.
FASTEST_STEP_S = 0.01
MAX_FILL_EPOCHS = 10_000


def epochs_set_explicitly(args: argparse.Namespace) -> bool:
    """True when the user chose ``epochs``: ``--set epochs=N`` or an ``epochs:`` line in their own
    ``--config`` file (a shipped preset's ``epochs`` is its default length, not a choice)."""
    import yaml

    from ..configs import PRESETS, preset_path

    if any(item.split("=", 1)[0].strip() == "epochs" for item in args.overrides):
        return True
    if not args.config:
        return False
    path = Path(args.config)
    if not path.is_file() or path.resolve() in {preset_path(p).resolve() for p in PRESETS}:
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # Config.from_yaml reported the file already; never reached
    return isinstance(data, dict) and "epochs" in data


def fit_epochs_to_budget(config: Any, explicit: bool, num_images: int, world_size: int = 1) -> tuple[Any, str | None]:
    """``(config, message)``: with ``max_train_minutes`` and ``epochs`` not set by the user, ``epochs``
    raised so that the time budget decides the run's length; the message says which limit applies."""
    minutes = config.max_train_minutes
    if not minutes:
        return config, None
    if explicit:
        return config, (f"length: {config.epochs} epochs or {minutes:g} min, whichever ends first (epochs set "
                        f"explicitly; leave it out to let the time budget alone decide)")
    per_step = config.images_per_gpu * config.grad_accumulation * max(1, world_size)
    steps = max(1, math.ceil(max(1, num_images) / per_step))
    fill = max(config.epochs, min(MAX_FILL_EPOCHS, math.ceil(minutes * 60.0 / (steps * FASTEST_STEP_S))))
    return config.replace(epochs=fill), (f"length: the time budget of {minutes:g} min (epochs not set: the run "
                                         f"fills the budget, up to {fill} epochs; --set epochs=N to cap it)")


# --------------------------------------------------------------------------- --resume


def _resume_dir(args: argparse.Namespace) -> Path | None:
    """The run to continue, or None (a new run; ``--resume auto`` without a run to continue)."""
    from ..config import Config
    from ..engine.rundir import resolve_resume

    if not args.resume:
        return None
    name = None
    if args.resume == "auto" and args.config:
        name = _apply_overrides(Config.from_yaml(args.config), args).name
    elif args.resume == "auto":
        names = [item.split("=", 1)[1].strip() for item in args.overrides if item.split("=", 1)[0].strip() == "name"]
        name = names[-1] if names else None
    found = resolve_resume(args.resume, args.out, name)
    if found is None:
        which = f"of {name!r} " if name else ""
        if not (args.config and args.data):
            raise MaskRCNNError(f"--resume auto: no run {which}with a checkpoint in {args.out}; pass --out with the "
                                "folder of your runs, or --config and --data to start a new run")
        _note(f"--resume auto: no run {which}with a checkpoint in {args.out}; starting a new run")
    return found


def _resume_config(args: argparse.Namespace, run_dir: Path) -> Any:
    """The run's own config (``--set`` / ``--minutes`` applied); ``--config`` only picks the run."""
    from ..config import Config
    from ..engine.rundir import run_config

    config, note = run_config(run_dir)
    if note:
        _note(note)
    if args.config:
        given = Config.from_yaml(args.config).model_dump()
        differ = [k for k, v in config.model_dump().items()
                  if given.get(k) != v and not (k == "class_names" and given.get(k) is None)]  # names: from the data
        if differ:
            _note(f"--config {args.config}: differs from the run's config.yaml in {', '.join(differ[:6])}"
                  f"{', ...' if len(differ) > 6 else ''}; the run continues with its own config "
                  "(change a field with --set KEY=VALUE)")
    return _apply_overrides(config, args)


def _resume_inputs(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The run's recorded inputs; paths given on the command line override them (with a note)."""
    from ..engine.rundir import RUN_INPUTS_FILE, absolute_spec, read_run_inputs

    stored, problem = read_run_inputs(run_dir)
    if problem:
        _note(f"{problem}; pass --data (and --val-data, --format) to resume")
    inputs = dict(stored)
    for key, flag in (("data", "--data"), ("val_data", "--val-data"), ("format", "--format")):
        given = getattr(args, key)
        value = given if key == "format" else absolute_spec(given)
        if given is None:
            continue
        if stored.get(key) is not None and stored[key] != value:
            _note(f"{flag} {given}: overrides the run's {key.replace('_', '-')} {stored[key]}")
        inputs[key] = value
    if args.weights and args.weights != stored.get("weights"):
        _note(f"--weights {args.weights}: ignored with --resume (the run continues from its checkpoint)")
    if not inputs.get("data"):
        raise MaskRCNNError(f"--data: required; the run {run_dir} does not record its data ({RUN_INPUTS_FILE} is "
                            "missing or unreadable); pass the training data path")
    return inputs


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
    of another channel count are adapted by :func:`maskrcnn.weights.load_into`. Backbone-only
    weights (``imagenet``: the ImageNet ResNet of ``config.backbone``; a ResNet ``.pth``) fill the
    ResNet body; everything else starts as when training from scratch.
    """
    from ..errors import WeightsError
    from ..weights import is_matterport
    from ..weights.start import model_from_weights

    if is_matterport(spec):  # before reading it: Matterport's network does not train here
        from ..modeling.matterport import TRAINING_UNSUPPORTED

        raise WeightsError(f"--weights {spec}: {TRAINING_UNSUPPORTED}")
    return model_from_weights(spec, config, log=lambda m: print(m, file=sys.stderr), source=f"--weights {spec}")


def run(args: argparse.Namespace) -> int:
    """Build config and datasets, train, print where the results are; 130 when stopped early."""
    from ..engine import train
    from ..engine.rundir import absolute_spec
    from ..utils.files import disk_full_as_error, ensure_output_dir

    resume_dir = _resume_dir(args)
    if resume_dir is not None:
        ensure_output_dir(resume_dir, flag="--resume")
        config = _resume_config(args, resume_dir)
        inputs = _resume_inputs(args, resume_dir)
    else:
        config = _resolve_config(args)
        if not args.data:
            raise MaskRCNNError("--data: required; pass an annotation file or dataset folder (or shapes:500)")
        ensure_output_dir(args.out, flag="--out")
        inputs = {"data": absolute_spec(args.data), "val_data": absolute_spec(args.val_data), "format": args.format,
                  "weights": absolute_spec(args.weights)}
    train_ds = load_training_data(inputs["data"], inputs.get("format"), config.seed)
    config = _fit_classes(config, train_ds, inputs["data"])
    val_ds = None
    if inputs.get("val_data"):
        val_ds = load_training_data(inputs["val_data"], inputs.get("format"), config.seed + 1)
        _fit_classes(config, val_ds, inputs["val_data"])
    model = None
    if resume_dir is None:
        config, length = fit_epochs_to_budget(config, epochs_set_explicitly(args), len(train_ds),
                                              int(os.environ.get("WORLD_SIZE", "1")))
        if length:
            _note(length)
        if args.weights:
            config, model = pretrained_model(config, args.weights)
    with disk_full_as_error(resume_dir or args.out):
        result = train(config, train_ds, val_ds, out_dir=args.out if resume_dir is None else resume_dir.parent,
                       resume=resume_dir, model=model, device=args.device, run_inputs=inputs,
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

"""``maskrcnn tune --config C --data D --val-data V --trials N --minutes-per-trial M``: hyperparameter search.

Each trial trains the config with the trial's values for ``M`` minutes and is scored (and pruned
early) on the validation mask AP; ``best.yaml`` and ``trials.md`` in ``--out`` hold the best config
and one row per trial; ``history.png``, ``slices.png`` and ``importances.png`` plot the study.
``--storage sqlite:///study.db`` (default: ``study.db`` in ``--out``) makes
the search resumable (run the same command again) and shareable by several processes or machines.
Needs Optuna: ``pip install 'maskrcnn[tune]'``. See :mod:`maskrcnn.tuning`.
"""

from __future__ import annotations

import argparse
import sys

from .args import positive_float, positive_int

__all__ = ["add_parser", "run"]

SAMPLERS = ("tpe", "random", "grid")  # maskrcnn.tuning.study.SAMPLERS, here so that --help does not import it


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tune``."""
    p = subparsers.add_parser(
        "tune", help="search hyperparameters (Optuna): time-budgeted trials scored on validation mask AP",
        description="Train the config once per trial with values from a search space (learning rate, weight decay, "
                    "anchor scales, RoIs per image, augmentation, mask loss; --space to change it), each for "
                    "--minutes-per-trial, pruning trials whose validation mask AP falls behind; writes best.yaml, "
                    "trials.md and plots of the study (history, slices, importances) to --out. Resumable and parallel "
                    "through --storage.")
    p.add_argument("--config", "-c", required=True, help="base YAML config or preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (repeatable)")
    p.add_argument("--data", "-d", required=True, help="training dataset (as maskrcnn train --data)")
    p.add_argument("--val-data", required=True, help="validation dataset: trials are scored on its mask AP")
    p.add_argument("--format", "-f", default=None, help="annotation format of --data/--val-data (default: detected)")
    p.add_argument("--trials", type=positive_int, required=True, help="finished trials the study should have")
    p.add_argument("--minutes-per-trial", type=positive_float, required=True, metavar="M",
                   help="training time of each trial in minutes (its max_train_minutes)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL, e.g. sqlite:///study.db (default: study.db in --out); share one "
                        "database between machines to run trials in parallel")
    p.add_argument("--study-name", default=None, help="study name in the storage (default: the config's name)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (Bayesian, default), random or grid")
    p.add_argument("--space", default=None, metavar="YAML",
                   help="search space changes: `field: [choices]`, `field: {low: , high: , log: true}` or "
                        "`field: null` (drops a default parameter)")
    p.add_argument("--out", "-o", default="tune", metavar="DIR", help="output folder (default: tune)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return p


def run(args: argparse.Namespace) -> int:
    """Load data, run the study, print the table and where the best config is."""
    from ..config import Config
    from ..tuning import default_space, read_space, tune
    from ..utils.files import ensure_output_dir
    from .train import _fit_classes, fit_epochs_to_budget, load_training_data

    config = Config.from_yaml(args.config)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    space = read_space(args.space, config) if args.space else default_space(config)
    ensure_output_dir(args.out, flag="--out")
    train_ds = load_training_data(args.data, args.format, config.seed)
    config = _fit_classes(config, train_ds, args.data)
    val_ds = load_training_data(args.val_data, args.format, config.seed + 1)
    _fit_classes(config, val_ds, args.val_data)
    print("search space:\n  " + "\n  ".join(p.describe() for p in space), file=sys.stderr)

    def configure(cfg: Config) -> Config:  # each trial's epochs fill its time budget, as maskrcnn train --minutes
        explicit = any(item.split("=", 1)[0].strip() == "epochs" for item in args.overrides)
        return fit_epochs_to_budget(cfg, explicit, len(train_ds))[0]

    result = tune(config, train_ds, val_ds, trials=args.trials, minutes_per_trial=args.minutes_per_trial,
                  out_dir=args.out, space=space, storage=args.storage, sampler=args.sampler,
                  study_name=args.study_name, device=args.device, configure=configure)
    print(result.table.read_text(), end="")
    if result.best_config is None:
        print(f"no trial completed; see {result.table}", file=sys.stderr)
        return 1
    print(f"best: trial {result.best_trial}, mask AP {result.best_value:.4f}; config: {result.best_yaml}")
    if result.plots:
        print("plots: " + ", ".join(str(p) for p in result.plots))
    return 0

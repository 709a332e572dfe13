"""``maskrcnn tune``: hyperparameter search on Optuna (:mod:`.study`) over a space of config fields (:mod:`.space`)."""

from .space import Param, default_space, read_space
from .study import ReportToTrial, TuneResult, tune

__all__ = ["Param", "default_space", "read_space", "tune", "TuneResult", "ReportToTrial"]

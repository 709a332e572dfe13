"""``maskrcnn plan``: measure a config's training memory and make it fit a budget.

* :mod:`.measure`: peak memory of real training steps (:class:`maskrcnn.engine.TrainStep`), each
  configuration in a fresh child process (:func:`measure_peak`);
* :mod:`.levers`: the config changes that lower the peak and their accuracy cost;
* :mod:`.peak_model`: estimates of combinations fitted to this machine's measurements;
* :mod:`.search`: the planner (:func:`plan_memory`);
* :mod:`.report`: the plan's table and byte units.
"""

from .levers import LEVER_KEYS, LEVERS, Lever, Setting, apply_state, lever_settings, state_label
from .measure import Measurement, batch_features, measure_peak, source_size
from .peak_model import PeakModel, frozen_share, parameter_bytes, static_bytes, trainable_bytes
from .report import GiB, MemoryPlan, MiB, Row, format_bytes, format_plan, parse_bytes
from .search import default_budget, plan_memory

__all__ = ["LEVER_KEYS", "LEVERS", "Lever", "Setting", "apply_state", "lever_settings", "state_label", "Measurement",
           "batch_features", "measure_peak", "source_size", "PeakModel", "frozen_share", "parameter_bytes",
           "static_bytes", "trainable_bytes", "GiB", "MemoryPlan", "MiB", "Row", "format_bytes", "format_plan",
           "parse_bytes", "default_budget", "plan_memory"]

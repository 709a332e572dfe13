"""Training engine: trainer, optimizer and schedules, atomic checkpoints, samplers, distributed.

Entry point: :func:`train` (``maskrcnn train`` and the demo use it) or :class:`Trainer`.
"""

from .guard import NonFiniteLossError
from .trainer import LOSS_TERMS, TrainResult, Trainer, train

__all__ = ["LOSS_TERMS", "NonFiniteLossError", "TrainResult", "Trainer", "train"]

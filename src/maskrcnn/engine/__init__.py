"""Training engine: the training step, the loop and its hooks, optimizer and schedules, atomic
checkpoints, samplers, distributed.

Entry point: :func:`train` (``maskrcnn train`` and ``maskrcnn demo`` use it) or :class:`Trainer`;
your own behaviour goes in a :class:`HookBase` passed as ``train(..., hooks=[...])``.
:class:`TrainStep` is the one optimizer step (the trainer and ``maskrcnn plan`` run it).
"""

from .guard import NonFiniteLossError
from .hooks import HookBase, Stop, ThreadTuning
from .step import StepOutput, TrainStep
from .trainer import TrainResult, Trainer, train

__all__ = ["HookBase", "NonFiniteLossError", "Stop", "StepOutput", "ThreadTuning", "TrainResult", "TrainStep",
           "Trainer", "train"]

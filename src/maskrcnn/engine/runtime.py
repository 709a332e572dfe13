"""Process-level settings of a run: mixed precision, determinism, seeding, stop signals."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..config import ConfigError

__all__ = ["resolve_amp", "determinism", "seed_everything", "StopRequest"]


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for ``Config.amp`` on ``device``."""
    cuda = device.type == "cuda"
    bf16_ok = (not cuda) or torch.cuda.is_bf16_supported()
    if amp == "none" or (amp == "auto" and not cuda):
        return None, False
    if amp == "auto":
        return (torch.bfloat16, False) if bf16_ok else (torch.float16, True)
    if amp == "bf16":
        if not bf16_ok:
            raise ConfigError("amp=bf16: this GPU has no bfloat16 support; use amp=fp16 or amp=auto")
        return torch.bfloat16, False
    if not cuda:
        raise ConfigError("amp=fp16 needs a CUDA GPU; use amp=bf16 or amp=none on CPU")
    return torch.float16, True


@contextlib.contextmanager
def determinism(deterministic: bool) -> Iterator[None]:
    """Deterministic algorithms for the run (``Config.deterministic``); global flags restored after."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

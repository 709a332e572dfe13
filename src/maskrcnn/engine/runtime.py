"""Process-level settings of a run: the device, mixed precision, determinism, seeding, stop signals."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError

__all__ = ["resolve_device", "resolve_amp", "cpu_has_fast_bf16", "determinism", "seed_everything", "StopRequest"]


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The :class:`torch.device` that ``spec`` names, checked to exist on this machine.

    ``None`` or ``"auto"``: ``cuda`` when a GPU is available, else ``cpu``. ``"cuda"`` keeps no
    index (the current device, as under ``torchrun``); ``"cuda:N"`` must be an existing GPU.
    Anything else (a typo, ``cuda`` without a GPU or a CUDA build) is a one-line
    :class:`ConfigError` naming the value and the fix, not torch's RuntimeError at first use.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(spec).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {str(spec)!r}: not a device name; use cpu, cuda or cuda:N (N = GPU index)") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {str(spec)!r}: {why} on this machine; use --device cpu (or install a "
                              "CUDA build of PyTorch on a machine with an NVIDIA GPU)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {str(spec)!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1}); "
                              "use one of those or cpu")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise ConfigError(f"device {str(spec)!r}: {dev.type} is not supported or not available here; use cpu, cuda or cuda:N")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (x86 AVX512-BF16 or AMX-BF16, ARM BF16).

    Without them bf16 autocast is emulated and several times slower than fp32 (measured 8x on an
    AVX2 machine). Decided from torch's own CPU capability (x86 needs its AVX512 kernels) and the
    flags in ``/proc/cpuinfo``; False whenever either is unknown.
    """
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        flags = set(re.findall(r"[\w.]+", Path("/proc/cpuinfo").read_text(errors="replace")))
    except (OSError, RuntimeError, AttributeError):
        return False
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        return capability.startswith("AVX512") and bool(flags & {"avx512_bf16", "amx_bf16"})
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return False


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

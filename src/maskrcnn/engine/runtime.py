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

__all__ = ["resolve_device", "resolve_amp", "resolve_fast_dtype", "autocast", "use_channels_last", "cpu_has_fast_bf16",
           "determinism", "seed_everything", "StopRequest"]


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


#: environment variable that overrides :func:`cpu_has_fast_bf16` (``1`` / ``0``)
CPU_BF16_ENV = "MASKRCNN_CPU_BF16"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (x86 AVX512-BF16 or AMX-BF16, ARM BF16).

    Without them bf16 autocast is emulated and several times slower than fp32 (measured 8x on an
    AVX2 machine). Decided from torch's own CPU capability (x86 needs its AVX512 kernels) and the
    flags in ``/proc/cpuinfo``; False whenever either is unknown. The environment variable
    ``MASKRCNN_CPU_BF16`` overrides the detection: ``1`` (say yes, e.g. where ``/proc`` is hidden),
    ``0`` (say no: ``amp: auto`` and fast mode stay fp32; the test suite sets it so that it runs
    the same code on every CPU).
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
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


def resolve_amp(amp: str, device: torch.device, *, field: str = "amp",
                off: str = "none") -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for ``Config.amp`` on ``device``.

    ``auto``: bf16 on a CUDA GPU that supports it, else fp16 with a grad scaler; bf16 on a CPU
    with native bf16 instructions (:func:`cpu_has_fast_bf16`); None (fp32) on any other device,
    where bf16 would be emulated and several times slower. ``bf16`` is honoured on any CPU
    (emulated where not native: slow but correct); ``fp16`` needs CUDA. ``field`` and ``off``
    name the config field and its fp32 value in errors (``Config.fast_dtype`` uses ``fp32``).
    """
    cuda = device.type == "cuda"
    bf16_ok = (not cuda) or torch.cuda.is_bf16_supported()
    if amp in ("none", off):
        return None, False
    if amp == "auto":
        if cuda:
            return (torch.bfloat16, False) if bf16_ok else (torch.float16, True)
        return (torch.bfloat16, False) if device.type == "cpu" and cpu_has_fast_bf16() else (None, False)
    if amp == "bf16":
        if not bf16_ok:
            raise ConfigError(f"{field}=bf16: this GPU has no bfloat16 support; use {field}=fp16 or {field}=auto")
        return torch.bfloat16, False
    if not cuda:
        raise ConfigError(f"{field}=fp16 needs a CUDA GPU; use {field}=bf16 or {field}={off} on CPU")
    return torch.float16, True


def resolve_fast_dtype(fast_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of fast mode's dense layers (``Config.fast_dtype``) on ``device``; None: fp32.

    The same rule as ``amp`` (:func:`resolve_amp`): ``auto`` is bf16 where the hardware has it
    natively (CUDA, or a CPU with AVX512-BF16 / AMX / ARM BF16), fp16 on a GPU without bf16,
    fp32 elsewhere; ``bf16`` forces it on any CPU (emulated where not native); ``fp32`` never
    casts.
    """
    return resolve_amp(fast_dtype, device, field="fast_dtype", off="fp32")[0]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is None.

    Under it the convolutions, linear layers and matmuls run in ``dtype``; the model casts its head
    outputs back to fp32 (``.float()``) before box decoding, NMS, losses and mask probabilities,
    and torchvision's RoIAlign and NMS compute in fp32 under autocast.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(module: torch.nn.Module, amp_dtype: torch.dtype | None) -> torch.nn.Module:
    """Convert ``module``'s 4-d weights to channels-last (NHWC) in place when training under autocast
    (``amp_dtype`` not None), and return it.

    oneDNN's bf16 convolutions (AMX, AVX512-BF16) and cuDNN's tensor-core kernels want NHWC: a
    convolution whose weight is channels-last produces channels-last activations, so the whole
    backbone, FPN and heads run in that layout. Measured on an AMX CPU for R50-FPN backbone+FPN:
    bf16 contiguous 1.15 s, bf16 channels-last 0.24 s. In fp32 the layout is left alone (the
    planner's and the trainer's fp32 runs are unchanged). Call it before wrapping in DDP.
    """
    if amp_dtype is not None:
        module.to(memory_format=torch.channels_last)
    return module


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

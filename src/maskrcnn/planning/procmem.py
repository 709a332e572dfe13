"""The process's own memory, read from the Linux kernel: resident size and its high-water mark.

Used by the measuring child of :mod:`.measure` on CPU: ``VmHWM`` (the counter behind
``getrusage(RUSAGE_SELF).ru_maxrss``) can be reset through ``/proc/self/clear_refs`` (Linux >= 4.0)
so a training step's own peak is read exactly, where sampling the RSS misses short spikes.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys

__all__ = ["status_kib", "rss", "malloc_trim", "prefault_files", "reset_hwm", "hwm"]


def status_kib(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where unreadable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss() -> int:
    """Resident size of this process in bytes."""
    kib = status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def malloc_trim() -> None:
    """Ask glibc to return its free heap pages to the system (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def prefault_files() -> None:
    """Make every page of the file-backed mappings (shared libraries) resident now, so that library
    code the training steps run later does not count as training memory: the peak then measures
    the heap (anonymous memory) a step adds, whether the process was forked or started afresh.
    Uses ``madvise(MADV_POPULATE_READ)`` (Linux >= 5.14); elsewhere nothing is done."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as fh:
            lines = fh.readlines()
    except (OSError, AttributeError):
        return
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/") or "r" not in parts[1]:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        madvise(lo, hi - lo, 22)  # MADV_POPULATE_READ; failures (old kernels, holes) are ignored


def reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return status_kib("VmHWM") is not None


def hwm(reset_ok: bool) -> int:
    """The resident high-water mark in bytes: since the last :func:`reset_hwm` when ``reset_ok``,
    else over the process's life (``ru_maxrss``)."""
    if reset_ok:
        kib = status_kib("VmHWM")
        if kib is not None:
            return kib * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) * (1 if sys.platform == "darwin" else 1024)


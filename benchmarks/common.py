"""Shared helpers of the benchmarks: threads, test photos, timing, peak memory, FLOPs and peak matmul rate.

Peak memory
-----------
* CPU: the peak resident set size *added* by one call. Before the call, garbage is collected and
  glibc is asked to return free heap pages (``malloc_trim(0)``), so the resident size is the live
  data; then the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and read
  back after the call (``VmHWM`` in ``/proc/self/status``): ``peak = VmHWM - VmRSS(before)``. This
  is exact (the kernel tracks the maximum), needs no child process, and lets both models be
  measured interleaved in one process. Where the high-water mark cannot be reset (not Linux, or
  no permission), a thread samples the RSS with psutil every millisecond instead (may miss spikes
  shorter than that).
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the call (tensors, not the caching allocator's reserve).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "set_threads", "photos", "sync", "Timer", "PeakMemory", "matmul_peak_gflops", "count_flops", "median",
    "machine_info", "cpu_info", "cpu_line", "format_table", "agreement",
]


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


def photos(short_side: int, count: int) -> list[np.ndarray]:
    """``count`` real RGB photographs from scikit-image (coffee 400x600, astronaut 512x512, chelsea
    300x451, rocket 427x640, repeated if needed), resized (bilinear) so the short side is ``short_side``."""
    from PIL import Image
    from skimage import data

    names = ["coffee", "astronaut", "chelsea", "rocket"]
    out = []
    for i in range(count):
        a = getattr(data, names[i % len(names)])()
        h, w = a.shape[:2]
        s = short_side / min(h, w)
        size = (round(w * s), round(h * s))
        out.append(np.array(Image.fromarray(a).resize(size, Image.BILINEAR)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class Timer:
    """Wall time of a module's forward calls (e.g. the backbone inside a full detection call).

    CPU: ``perf_counter`` around the forward; CUDA: events, read after the enclosing call synchronised.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self._pending: list[Any] = []
        self._start: Any = None
        self.seconds = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._start

    def take(self) -> float:
        """Seconds accumulated since the last ``take`` (call after synchronising)."""
        for start, end in self._pending:
            self.seconds += start.elapsed_time(end) / 1000
        self._pending.clear()
        s, self.seconds = self.seconds, 0.0
        return s

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False
    except KeyError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory a block adds (bytes in ``.peak``); see the module doc."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.method = ("cuda max_memory_allocated" if device.type == "cuda"
                       else "VmHWM reset" if _can_reset_hwm() else "psutil RSS sampling (1 ms)")

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - before
            return
        _malloc_trim()
        if self.method == "VmHWM reset":
            before = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            yield
            self.peak = max(0, _status_kib("VmHWM") - before) * 1024
            return
        import psutil

        proc = psutil.Process()
        before = proc.memory_info().rss
        top = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                top[0] = max(top[0], proc.memory_info().rss)
                time.sleep(0.001)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
        self.peak = max(0, max(top[0], proc.memory_info().rss) - before)


def matmul_peak_gflops(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Measured fp32 matmul rate (GFLOP/s, best of ``repeats``) of an ``n x n`` product: the machine's
    practical dense peak for the current thread count (TF32 disabled on CUDA)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def count_flops(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of ``module(x)`` for ``x`` of ``shape``, counted by ``FlopCounterMode`` on the meta device
    (shapes only: nothing is computed). Counts convolutions and matmuls (2 per multiply-add)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta")
    x = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return int(counter.get_total_flops())


#: CPU flags that decide which kernels run (fp32 AVX2 / AVX-512, bf16 native or emulated)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16", "avx512_fp16", "bf16")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, the flags of :data:`CPU_FLAGS` it has, torch's kernel capability and
    whether ``amp: auto`` / fast mode use bf16 on it (``maskrcnn.engine.runtime.cpu_has_fast_bf16``)."""
    import re
    from pathlib import Path

    from maskrcnn.engine.runtime import cpu_has_fast_bf16

    info: dict[str, Any] = {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": []}
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if model:
            info["cpu_model"] = model.group(1).strip()
        flags = set(re.findall(r"[\w.]+", text))
        info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    with contextlib.suppress(AttributeError, RuntimeError):
        info["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    info["native_bf16"] = cpu_has_fast_bf16()
    return info


def cpu_line() -> str:
    """One line naming the CPU, its flags and what bf16 means on it (for the benchmarks' headers)."""
    c = cpu_info()
    bf16 = "native bf16: amp auto and fast mode use bf16" if c["native_bf16"] else \
        "no native bf16: amp auto and fast mode stay fp32 (forced bf16 is emulated)"
    return (f"CPU: {c['cpu_model']}, flags {' '.join(c['cpu_flags']) or '?'}, torch kernels "
            f"{c.get('torch_cpu_capability', '?')}; {bf16}")


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": threads, "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            **cpu_info()}
    with contextlib.suppress(Exception):
        import torchvision

        info["torchvision"] = torchvision.__version__
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def agreement(reference: list[Any], other: list[Any], score: float = 0.5) -> dict[str, Any]:
    """How far ``other``'s detections agree with ``reference``'s (per image, ``Detections`` with numpy
    ``boxes [N, 4]`` (x1, y1, x2, y2 pixels), ``class_ids [N]``, ``scores [N]``, bool ``masks [N, H, W]``),
    both kept at ``scores >= score``: each reference detection is matched to the other's detection of
    the same class with the highest box IoU (none when no same-class box overlaps). Returns the counts
    (``reference``, ``other``, ``matched``) and the mean box and mask IoU over the reference's
    detections, an unmatched one counting 0 (both 1.0 when the reference has none)."""
    from torchvision.ops import box_iou

    n_ref = n_other = matched = 0
    box_ious: list[float] = []
    mask_ious: list[float] = []
    for e, f in zip(reference, other):
        ke = e.scores >= score
        kf = f.scores >= score
        eb = torch.as_tensor(e.boxes[ke], dtype=torch.float32)
        fb = torch.as_tensor(f.boxes[kf], dtype=torch.float32)
        el, fl = e.class_ids[ke], f.class_ids[kf]
        em, fm = e.masks[ke], f.masks[kf]
        n_ref += len(eb)
        n_other += len(fb)
        iou = box_iou(eb, fb) if len(eb) and len(fb) else torch.zeros(len(eb), len(fb))
        for i in range(len(eb)):
            cand = torch.where(torch.as_tensor(fl == el[i]), iou[i], torch.zeros_like(iou[i]))
            if len(fb) == 0 or cand.max() <= 0:
                box_ious.append(0.0)
                mask_ious.append(0.0)
                continue
            j = int(cand.argmax())
            matched += 1
            box_ious.append(float(cand[j]))
            inter = np.logical_and(em[i], fm[j]).sum()
            union = np.logical_or(em[i], fm[j]).sum()
            mask_ious.append(float(inter / union) if union else 1.0)
    return {"reference": n_ref, "other": n_other, "matched": matched,
            "mean_box_iou": float(np.mean(box_ious)) if box_ious else 1.0,
            "mean_mask_iou": float(np.mean(mask_ious)) if mask_ious else 1.0}

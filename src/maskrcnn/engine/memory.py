"""Peak memory of training steps, and a planner that makes a config fit a memory budget.

Measurement (:func:`measure_peak`)
----------------------------------
Every measurement runs in a **fresh child process**, so the peak of one configuration never leaks
into another (a process never gives its heap back completely, and CUDA's caching allocator keeps
blocks). Children are forked from a small server process (``python -m maskrcnn.engine.memory
--server``) that has imported torch and the model code once and never runs any of it, so a
child starts in a fraction of a second instead of paying the imports (``isolation="exec"``
starts a new interpreter instead). The child builds the model of the config, prepares
``grad_accumulation`` (at most 2) loader batches of ``images_per_gpu`` synthetic images through
the real data pipeline (:class:`SyntheticInstances`: a 4:3 image of the config's input size with
``max_gt_instances`` instance masks), creates the optimizer state (momentum buffers, as every step
after the first has them), and runs ``steps`` training steps as
:class:`~maskrcnn.engine.trainer.Trainer` does: autocast per ``amp``, the five weighted losses,
backward (accumulated over the micro-batches), gradient clipping, SGD with momentum, the scaler.

What "peak" means:

* CUDA: ``torch.cuda.max_memory_allocated()`` over the steps: every tensor of the run (weights,
  gradients, momentum, activations, the batch). Not included: the CUDA context (~0.3-0.6 GiB)
  and blocks the caching allocator keeps reserved; the latter is reported as ``overhead``.
* CPU: the kernel's resident-set high-water mark (``VmHWM``, the counter behind
  ``getrusage(RUSAGE_SELF).ru_maxrss``) minus the resident size right after the imports. Before
  the baseline is read, garbage is collected, glibc returns free heap (``malloc_trim``) and the
  pages of the mapped libraries are made resident (``madvise(MADV_POPULATE_READ)``), so library
  code the steps run does not count: the peak is the memory training adds (weights, gradients,
  momentum, activations, temporaries, the batch), as on CUDA. The high-water mark is reset
  (``/proc/self/clear_refs``) before each step, so the peak is the steps' own; where that is not
  allowed the lifetime ``ru_maxrss`` is used (imports and model building peak lower). The kernel
  counter is exact, where sampling the RSS (psutil every few ms) misses the short spikes of large
  convolution and RoIAlign temporaries. Memory glibc keeps without using it is counted: it is
  taken from the machine. Data-loader workers are separate processes and not included.

The planner (:func:`plan_memory`, ``maskrcnn plan``)
----------------------------------------------------
Measures the base config; over budget, measures each lever of :data:`LEVERS` at its first setting
(:func:`lever_settings`), ranks the levers by accuracy cost per byte saved, fits a
:class:`PeakModel` to those measurements, searches the cheapest combination whose estimate fits
and measures it, step by step. Every peak in the plan is measured; estimates only choose what to
measure (and are shown next to the measurement). ``benchmarks/memory_levers.py`` measures every
setting and combination the model can estimate and reports the estimation error.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import Config, ConfigError
from ..data.dataset import Dataset
from ..errors import MaskRCNNError
from .runtime import cpu_has_fast_bf16

__all__ = [
    "SyntheticInstances",
    "source_size",
    "Measurement",
    "measure_peak",
    "batch_features",
    "synthetic_batches",
    "Setting",
    "Lever",
    "LEVERS",
    "LEVER_KEYS",
    "lever_settings",
    "apply_state",
    "trainable_bytes",
    "frozen_share",
    "PeakModel",
    "Row",
    "MemoryPlan",
    "plan_memory",
    "default_budget",
    "format_plan",
    "parse_bytes",
    "format_bytes",
]

GiB = 1024 ** 3
MiB = 1024 ** 2


# ============================================================================ synthetic data


class SyntheticInstances(Dataset):
    """``count`` images of ``height x width`` with ``instances`` random instance masks each.

    Instances are filled ellipses and rectangles with sides log-uniform between 8 px and 40 % of
    the short side (COCO-like: many small objects, a few large ones), placed anywhere (they may
    overlap and be cut by the border), with classes ``1..num_classes-1``. The image is noise plus
    the instances in random colours. Image ``i`` is a function of ``(seed, i)``.
    """

    def __init__(self, count: int, height: int, width: int, instances: int, num_classes: int,
                 channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.height, self.width, self.instances = int(height), int(width), int(instances)
        self.channels, self.seed = int(channels), int(seed)
        for i in range(1, num_classes):
            self.add_class("synthetic", i, f"class{i}")
        for i in range(int(count)):
            self.add_image("synthetic", image_id=i, path=None, height=self.height, width=self.width)
        self.prepare()

    def image_reference(self, image_id: int) -> str:
        return f"synthetic:{image_id}"

    def _spec(self, image_id: int) -> tuple[np.random.Generator, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(image_id)])
        h, w, n = self.height, self.width, self.instances
        lo, hi = math.log(8), math.log(max(9.0, 0.4 * min(h, w)))
        sides = np.exp(rng.uniform(lo, hi, size=(n, 2)))
        cy = rng.uniform(0, h, size=n)
        cx = rng.uniform(0, w, size=n)
        kind = rng.integers(0, 2, size=n)
        cls = rng.integers(1, max(2, self.num_classes), size=n)
        spec = np.stack([cy, cx, sides[:, 0], sides[:, 1], kind, cls], 1)
        return rng, spec

    def load_image(self, image_id: int) -> np.ndarray:
        rng, spec = self._spec(image_id)
        image = rng.integers(0, 256, size=(self.height, self.width, self.channels), dtype=np.uint8)
        masks, _ = self.load_mask(image_id)
        colours = rng.integers(0, 256, size=(len(spec), self.channels), dtype=np.uint8)
        for i in range(masks.shape[2]):
            image[masks[:, :, i]] = colours[i]
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        _, spec = self._spec(image_id)
        h, w = self.height, self.width
        masks = np.zeros((h, w, len(spec)), dtype=bool)
        for i, (cy, cx, sh, sw, kind, _) in enumerate(spec):
            y0, y1 = max(0, int(cy - sh / 2)), min(h, int(math.ceil(cy + sh / 2)))
            x0, x1 = max(0, int(cx - sw / 2)), min(w, int(math.ceil(cx + sw / 2)))
            if y1 <= y0 or x1 <= x0:
                continue
            if kind == 0:
                masks[y0:y1, x0:x1, i] = True
            else:
                r, c = np.mgrid[y0:y1, x0:x1]
                masks[y0:y1, x0:x1, i] = ((r + 0.5 - cy) / (sh / 2)) ** 2 + ((c + 0.5 - cx) / (sw / 2)) ** 2 <= 1.0
        return masks, spec[:, 5].astype(np.int32)


def source_size(config: Config) -> tuple[int, int]:
    """Size ``(H, W)`` of the synthetic source images for ``config``: a 4:3 landscape photo whose
    short side is ``image_min_dim`` (long side at most ``image_max_dim`` where the mode has one),
    i.e. the largest training input a typical photo gives with this config."""
    h = int(config.image_min_dim)
    w = int(round(h * 4 / 3))
    if config.image_resize_mode in ("minmax", "square"):
        w = max(h, min(w, int(config.image_max_dim)))
    return h, w


# ============================================================================ measurement


@dataclass
class Measurement:
    """One measured configuration (all sizes in bytes).

    Attributes:
        peak: peak training memory (see the module doc: CUDA max allocated; CPU peak RSS minus
            the RSS after imports). ``None`` when the run failed.
        model: memory of the built model on the device (weights and buffers) as part of ``peak``.
        overhead: not counted in ``peak``: CPU the RSS after imports; CUDA max reserved minus max
            allocated.
        step_seconds: median wall time of an optimizer step after the first.
        trainable: bytes of trainable parameters (their gradients and momentum each take as much).
        pixels: pixels of the padded batch (one image; the batch is ``images_per_gpu`` of them).
        instances: mean GT instances per image after the pipeline.
        method: how the peak was taken.
        error: why the run failed (``"out of memory: ..."``, a crash), else None.
    """

    peak: int | None
    model: int = 0
    overhead: int = 0
    step_seconds: float = float("nan")
    trainable: int = 0
    pixels: int = 0
    instances: float = 0.0
    device: str = "cpu"
    method: str = ""
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None
    step_peaks: list[int] = field(default_factory=list)

    @property
    def oom(self) -> bool:
        return self.error is not None and self.error.startswith("out of memory")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_peak(
    config: Config,
    device: str = "cpu",
    *,
    steps: int = 2,
    image_size: tuple[int, int] | None = None,
    instances: int | None = None,
    threads: int | None = None,
    timeout: float | None = 1800.0,
    isolation: str = "forkserver",
) -> Measurement:
    """Peak memory of ``steps`` training steps of ``config`` on ``device``, in a fresh child process.

    Args:
        image_size: ``(H, W)`` of the synthetic source images (default :func:`source_size`).
        instances: instances per source image (default ``config.max_gt_instances``).
        threads: torch threads of the child (default: torch's default).
        timeout: seconds before the child is killed (the measurement then has an ``error``).
        isolation: ``"forkserver"`` (default): the child is forked from a server process that has
            imported torch once, which saves the imports (seconds) per measurement; ``"exec"``:
            ``python -m maskrcnn.engine.memory`` (a new interpreter).
    """
    spec = {
        "config": config.model_dump(),
        "device": device,
        "steps": max(1, int(steps)),
        "image_size": list(image_size or source_size(config)),
        "instances": int(config.max_gt_instances if instances is None else instances),
        "threads": threads,
    }
    if isolation not in ("forkserver", "exec"):
        raise ValueError(f"isolation={isolation!r}: use 'forkserver' or 'exec'")
    with tempfile.TemporaryDirectory(prefix="maskrcnn_plan_") as tmp:
        spec_path, out_path, err_path = Path(tmp) / "spec.json", Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        spec_path.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        if isolation == "forkserver" and hasattr(os, "fork"):
            code, stderr = _SERVER.run(spec_path, out_path, err_path, timeout)  # type: ignore[assignment]
            if code is None:
                return Measurement(None, device=device, error=f"timed out after {timeout:.0f} s")
        else:
            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            try:
                done = subprocess.run([sys.executable, "-m", "maskrcnn.engine.memory", str(spec_path), str(out_path)],
                                      capture_output=True, text=True, timeout=timeout, env=env)
            except subprocess.TimeoutExpired:
                return Measurement(None, device=device, error=f"timed out after {timeout:.0f} s")
            code, stderr = done.returncode, done.stderr or ""
        seconds = time.perf_counter() - t0
        if out_path.is_file():
            m = Measurement(**json.loads(out_path.read_text()))
            m.seconds = seconds
            return m
        if code < 0:
            sig = -code
            why = "killed (SIGKILL: the system ran out of memory?)" if sig == 9 else f"killed by signal {sig}"
            return Measurement(None, device=device, error=why, seconds=seconds)
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        return Measurement(None, device=device, error=f"crashed: {tail[-1] if tail else f'exit status {code}'}",
                           seconds=seconds)


class _ForkServer:
    """A helper process (``python -m maskrcnn.engine.memory --server``) that imports torch and the
    model code once and, per measurement, forks a child that measures and exits. Each child is a
    fresh process (its own heap, high-water mark and CUDA context) that does not pay the imports;
    the server itself never runs torch code, so forking it is safe. It ends with this process
    (end of its stdin), and with Ctrl-C (same process group)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.child: int | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            import atexit

            env = dict(os.environ)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self.proc = subprocess.Popen([sys.executable, "-m", "maskrcnn.engine.memory", "--server"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True, env=env)
            atexit.register(self.stop)
        return self.proc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        self._kill_child()
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _kill_child(self) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child, 9)
            self.child = None

    def run(self, spec: Path, out: Path, err: Path, timeout: float | None) -> tuple[int | None, str]:
        """Exit code of the measuring child (None: timed out and killed) and its stderr."""
        for _ in range(2):  # a server that died in between is started again
            proc = self._start()
            try:
                proc.stdin.write(json.dumps({"spec": str(spec), "out": str(out), "err": str(err)}) + "\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            except OSError:
                self.stop()
                continue
            try:
                code = self._wait(proc, timeout)
            finally:
                self.child = None
            if code == -999:
                return 1, "the measurement server ended unexpectedly"
            return code, err.read_text(errors="replace") if err.is_file() else ""
        return 1, "the measurement server could not be started"

    def _wait(self, proc: subprocess.Popen, timeout: float | None) -> int | None:
        import select

        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([proc.stdout], [], [], wait)
            if not ready:  # too long: end the child; the server reports its exit and goes on
                self._kill_child()
                deadline, timed_out = None, True
                continue
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                self.stop()
                return -999
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "pid" in msg:
                self.child = int(msg["pid"])
                if timed_out:
                    self._kill_child()
            elif "code" in msg:
                return None if timed_out else int(msg["code"])


_SERVER = _ForkServer()


def _serve() -> int:
    """The server loop of :class:`_ForkServer`: one JSON request per line on stdin."""
    import torch  # noqa: F401 - imported once, before any fork

    from ..modeling import build_model  # noqa: F401
    from ..data import pipeline  # noqa: F401
    from . import optim, runtime, trainer  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the measuring child
            code = 1
            try:
                fd = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                code = _child_main([req["spec"], req["out"]])
            except BaseException:  # noqa: BLE001 - reported through the exit code and stderr
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


# ---------------------------------------------------------------------------- child side


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _prefault_files() -> None:
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


def _reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _hwm(reset_ok: bool) -> int:
    if reset_ok:
        kib = _status_kib("VmHWM")
        if kib is not None:
            return kib * 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru) * (1 if sys.platform == "darwin" else 1024)


def synthetic_batches(config: Config, image_size: tuple[int, int], instances: int, n_batches: int) -> list[Any]:
    """``n_batches`` loader batches (``images_per_gpu`` images each) of :class:`SyntheticInstances`
    through the real training pipeline (resize, augmentation, crops, mini-masks, GT cap)."""
    from ..data.pipeline import TrainingDataset, collate

    ipg = config.images_per_gpu
    ds = SyntheticInstances(ipg * n_batches, image_size[0], image_size[1], instances, config.num_classes,
                            config.image_channel_count, seed=config.seed)
    td = TrainingDataset(ds, config, train=True, seed=config.seed, skip_errors=False)
    return [collate([td[b * ipg + i] for i in range(ipg)]) for b in range(n_batches)]


def batch_features(config: Config, image_size: tuple[int, int] | None = None, instances: int | None = None) -> dict[str, float]:
    """``pixels`` (padded, per image) and ``instances`` (GT per image after the pipeline) of the
    synthetic training images of ``config``: the first two, as a measurement uses them, computed in
    this process without a model (cached; independent of the batch layout)."""
    from ..data.pipeline import TrainingDataset, collate

    size = tuple(image_size or source_size(config))
    n = int(config.max_gt_instances if instances is None else instances)
    key = (json.dumps(_feature_fields(config), sort_keys=True), size, n)
    if key not in _FEATURE_CACHE:
        ds = SyntheticInstances(2, size[0], size[1], n, config.num_classes, config.image_channel_count, seed=config.seed)
        td = TrainingDataset(ds, config, train=True, seed=config.seed, skip_errors=False)
        _FEATURE_CACHE[key] = _features_of([collate([td[i]]) for i in range(2)], config)
    return dict(_FEATURE_CACHE[key])


_FEATURE_CACHE: dict[Any, dict[str, float]] = {}


def _feature_fields(config: Config) -> dict[str, Any]:
    d = config.model_dump()
    keep = ("seed", "num_classes", "image_channel_count", "image_resize_mode", "image_min_dim", "image_max_dim",
            "image_min_scale", "size_divisibility", "max_gt_instances", "aug_hflip", "aug_vflip", "aug_rot90",
            "aug_scale_jitter", "aug_crop", "aug_min_area")
    return {k: d[k] for k in keep}


def _features_of(batches: list[Any], config: Config) -> dict[str, float]:
    div = config.size_divisibility
    pixels, inst, n = [], 0, 0
    for b in batches:
        h = math.ceil(max(int(i.shape[1]) for i in b.images) / div) * div
        w = math.ceil(max(int(i.shape[2]) for i in b.images) / div) * div
        pixels.append(h * w)
        inst += sum(int(t["labels"].numel()) for t in b.targets)
        n += len(b.images)
    return {"pixels": float(max(pixels)), "instances": inst / max(1, n)}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in the child process: build, prepare, train ``steps`` steps, report (see the module doc)."""
    import torch

    from ..modeling import build_model
    from .optim import build_optimizer, select_trainable, set_train_mode
    from .runtime import resolve_amp
    from .trainer import LOSS_TERMS, unprefixed

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = Config(**spec["config"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    steps = int(spec["steps"])
    micro = min(config.grad_accumulation, 2)
    torch.manual_seed(config.seed)

    gc.collect()
    _malloc_trim()
    process_rss = _rss()
    if not cuda:
        _prefault_files()
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        method = "cuda max_memory_allocated"
    else:
        base = _rss()
        method = ""

    amp_dtype, use_scaler = resolve_amp(config.amp, device)
    model = build_model(config)
    select_trainable(model, config)
    model.to(device)
    set_train_mode(model, config.train_bn)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() * p.element_size() for p in params)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    weights = torch.ones(len(LOSS_TERMS), device=device)  # the heads apply Config.loss_weights
    if cuda:
        torch.cuda.synchronize(device)
        model_bytes = torch.cuda.memory_allocated(device) - base
    else:
        gc.collect()
        _malloc_trim()
        model_bytes = _rss() - base

    # optimizer state exists from the start (as in every step after the trainer's first), so the
    # first measured step is already a steady-state step: momentum buffers created by a step of
    # zero gradients at learning rate 0 (weights unchanged)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    if not cuda:
        gc.collect()
        _malloc_trim()
    batches = synthetic_batches(config, tuple(spec["image_size"]), int(spec["instances"]), micro)
    feats = _features_of(batches, config)

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    peak, times, step_peaks = 0, [], []
    reset_ok = False
    for step in range(steps):
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
        else:
            _malloc_trim()
            reset_ok = _reset_hwm()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for b in batches:
            images = [im.to(device) for im in b.images]
            targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in b.targets]
            with autocast():
                losses = unprefixed(model(images, targets))
            total = (torch.stack([losses[k].float() for k in LOSS_TERMS]) * weights).sum()
            scaler.scale(total / micro).backward()
            del images, targets, losses, total
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        max_norm = config.gradient_clip_norm if config.gradient_clip_norm is not None else float("inf")
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        if cuda:
            step_peaks.append(int(torch.cuda.max_memory_allocated(device) - base))
        else:
            step_peaks.append(int(_hwm(reset_ok) - base))
            peak = max(peak, step_peaks[-1])
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
        overhead = torch.cuda.max_memory_reserved(device) - torch.cuda.max_memory_allocated(device)
    else:
        method = ("VmHWM reset before each step" if reset_ok else "ru_maxrss") + " minus RSS after imports (libraries resident)"
        overhead = process_rss
    return {
        "peak": int(peak), "model": int(model_bytes), "overhead": int(overhead),
        "step_seconds": float(statistics.median(times[1:] if len(times) > 1 else times)),
        "trainable": int(trainable), "pixels": int(feats["pixels"]), "instances": float(feats["instances"]),
        "device": str(device), "method": method, "steps": steps, "step_peaks": step_peaks,
    }


def _child_main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    import torch

    try:
        result = _child(spec)
    except torch.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        result = {"peak": None, "device": spec["device"], "error": f"out of memory: {first[:200]}",
                  "model": 0, "overhead": int(peak or 0)}
    out_path.write_text(json.dumps(result))
    return 0


# ============================================================================ levers


#: Accuracy cost unit: rough loss of mask AP points on COCO-like data, from the literature and common
#: practice (Detectron2/torchvision ablations, Matterport defaults). They only order the levers;
#: "none" means the same model is trained (only slower).
@dataclass(frozen=True)
class Setting:
    """One setting of a lever, as config changes relative to the base config.

    Attributes:
        lever: the lever's key (see :data:`LEVERS`).
        level: 1 for the first step away from the base config, 2 for the next, ...
        changes: the config fields this setting sets (absolute values).
        label: what a person reads, e.g. ``train_rois_per_image 512 -> 256``.
        cost: accuracy cost of this setting (rough mask AP points, cumulative along the lever).
        cost_note: the cost in words.
    """

    lever: str
    level: int
    changes: dict[str, Any] = field(hash=False, compare=False)
    label: str = ""
    cost: float = 0.0
    cost_note: str = ""


@dataclass(frozen=True)
class Lever:
    key: str
    title: str
    doc: str


#: The memory levers in the order of their accuracy cost (cheapest first); see :func:`lever_settings`.
LEVERS: tuple[Lever, ...] = (
    Lever("checkpointing", "gradient checkpointing",
          "gradient_checkpointing: the backbone stages' activations are recomputed in the backward pass; the same "
          "model is trained, steps take longer. Cost: none."),
    Lever("micro_batch", "micro-batches",
          "images_per_gpu halved, grad_accumulation doubled: the same total batch and learning rate in more, smaller "
          "passes. Cost: none with frozen BatchNorm (the default); with train_bn the statistics come from fewer "
          "images (~1 AP per halving)."),
    Lever("amp", "mixed precision",
          "amp: bf16 autocast (CUDA: auto = bf16, or fp16 with a grad scaler on GPUs without bf16); weights, "
          "losses and the optimizer stay fp32. Cost: ~0.1 AP. Slow on CPUs without bf16 units."),
    Lever("mini_masks", "mini-masks",
          "use_mini_mask: GT masks stored cropped to their box at mini_mask_shape (56x56, Matterport's default). "
          "Cost: ~0.2 AP (detail of large objects' targets)."),
    Lever("rois", "RoIs per image",
          "train_rois_per_image halved (512 -> 256 -> 128 -> 64): fewer sampled RoIs for the box and mask heads. "
          "Cost: ~0.2 / 0.6 / 1.5 AP (Matterport trains with 200)."),
    Lever("gt_instances", "GT instances per image",
          "max_gt_instances halved: images with more instances lose some for that step (they count as background). "
          "Cost: data-dependent; ~0 when images have fewer instances than the cap, ~0.3 / 1 AP on crowded data."),
    Lever("frozen_stages", "frozen stages",
          "layers all -> 3+ -> 4+ -> 5+ -> heads: early backbone stages are not trained (no gradients, momentum or "
          "saved activations). Cost with pretrained weights: ~0.3 (3+ is torchvision's fine-tuning default) / 1 / "
          "2.5 / 5 AP; never freeze a backbone trained from scratch."),
    Lever("crop", "crop training",
          "aug_crop: random crops of 3/4, then 1/2 of the resized image's sides; objects keep their scale, each step "
          "sees less context. Cost: ~0.8 / 2.5 AP."),
    Lever("image_size", "smaller images",
          "image_min_dim / image_max_dim x 0.8, 0.64, 0.5: small objects lose resolution. Cost: ~1.5 / 4 / 7 AP."),
)

LEVER_KEYS = tuple(lv.key for lv in LEVERS)
_TITLES = {lv.key: lv.title for lv in LEVERS}


def _round_to(x: float, m: int, lo: int | None = None) -> int:
    return max(lo if lo is not None else m, int(round(x / m)) * m)


def lever_settings(config: Config, device: str = "cpu", instances: int | None = None,
                   image_size: tuple[int, int] | None = None) -> dict[str, list[Setting]]:
    """The settings of every lever applicable to ``config``, each list ordered by growing saving and cost."""
    from ..data.resize import compute_scale

    c = config
    out: dict[str, list[Setting]] = {}
    if not c.gradient_checkpointing:
        out["checkpointing"] = [Setting("checkpointing", 1, {"gradient_checkpointing": True},
                                        "gradient_checkpointing: true", 0.0, "none (slower steps)")]
    ipg, acc = c.images_per_gpu, c.grad_accumulation
    divisors = [d for d in range(ipg - 1, 0, -1) if ipg % d == 0]
    if divisors:
        settings = []
        for i, d in enumerate(divisors, start=1):
            halvings = math.log2(ipg / d)
            cost = round(1.0 * halvings, 2) if c.train_bn else 0.0
            note = f"~{cost:g} AP (BatchNorm over fewer images)" if c.train_bn else "none (frozen BatchNorm)"
            settings.append(Setting("micro_batch", i, {"images_per_gpu": d, "grad_accumulation": acc * ipg // d},
                                    f"images_per_gpu {ipg} -> {d}, grad_accumulation {acc} -> {acc * ipg // d}", cost, note))
        out["micro_batch"] = settings
    if c.amp == "none":
        amp = "auto" if device.startswith("cuda") else "bf16"
        out["amp"] = [Setting("amp", 1, {"amp": amp}, f"amp: {amp}", 0.1, "~0.1 AP")]
    if not c.use_mini_mask:
        out["mini_masks"] = [Setting("mini_masks", 1, {"use_mini_mask": True, "mini_mask_shape": [56, 56]},
                                     "use_mini_mask: true (56x56)", 0.2, "~0.2 AP")]
    r, settings = c.train_rois_per_image, []
    for i, (frac, cost) in enumerate(((0.5, 0.2), (0.25, 0.6), (0.125, 1.5)), start=1):
        new = int(r * frac)
        if new < 32:
            break
        settings.append(Setting("rois", i, {"train_rois_per_image": new}, f"train_rois_per_image {r} -> {new}", cost, f"~{cost:g} AP"))
    if settings:
        out["rois"] = settings
    n = c.max_gt_instances if instances is None else min(int(instances), c.max_gt_instances)
    settings = []
    for i, (frac, cost) in enumerate(((0.5, 0.3), (0.25, 1.0)), start=1):
        new = int(c.max_gt_instances * frac)
        if new < 8 or new >= n:
            continue
        settings.append(Setting("gt_instances", len(settings) + 1, {"max_gt_instances": new},
                                f"max_gt_instances {c.max_gt_instances} -> {new}", cost, f"data-dependent, ~{cost:g} AP if crowded"))
    if settings:
        out["gt_instances"] = settings
    order = ["all", "3+", "4+", "5+", "heads"]
    costs = {"3+": 0.3, "4+": 1.0, "5+": 2.5, "heads": 5.0}
    if c.layers in order and c.layers != "heads":
        start = order.index(c.layers)
        out["frozen_stages"] = [Setting("frozen_stages", i, {"layers": lay}, f"layers {c.layers} -> {lay}",
                                        costs[lay] - costs.get(c.layers, 0.0),
                                        f"~{costs[lay] - costs.get(c.layers, 0.0):g} AP (pretrained weights)")
                                for i, lay in enumerate(order[start + 1:], start=1)]
    h, w = image_size or source_size(c)
    mode = c.image_resize_mode
    if mode != "crop" and c.aug_crop is None:
        _, (sh, sw) = compute_scale(h, w, mode, c.image_min_dim, c.image_max_dim, c.image_min_scale)
        if mode == "square":
            sh = sw = c.image_max_dim
        settings = []
        for i, (frac, cost) in enumerate(((0.75, 0.8), (0.5, 2.5)), start=1):
            ch, cw = _round_to(sh * frac, 32, 64), _round_to(sw * frac, 32, 64)
            if ch >= sh and cw >= sw:
                continue
            settings.append(Setting("crop", len(settings) + 1, {"aug_crop": [ch, cw]}, f"aug_crop: [{ch}, {cw}] of {sh}x{sw}",
                                    cost, f"~{cost:g} AP"))
        if settings:
            out["crop"] = settings
    settings = []
    for i, (frac, cost) in enumerate(((0.8, 1.5), (0.64, 4.0), (0.5, 7.0)), start=1):
        if mode == "minmax":
            ch = {"image_min_dim": _round_to(c.image_min_dim * frac, 32), "image_max_dim": _round_to(c.image_max_dim * frac, 32)}
            label = f"image_min_dim/max_dim {c.image_min_dim}/{c.image_max_dim} -> {ch['image_min_dim']}/{ch['image_max_dim']}"
        elif mode == "square":
            new = _round_to(c.image_max_dim * frac, 64)
            ch = {"image_max_dim": new, "image_min_dim": min(c.image_min_dim, new)}
            label = f"image_max_dim {c.image_max_dim} -> {new} (square)"
        elif mode == "crop":
            new = _round_to(c.image_min_dim * frac, c.size_divisibility)
            ch = {"image_min_dim": new}
            label = f"crop size image_min_dim {c.image_min_dim} -> {new}"
        else:
            break  # none / pad64 never shrink an image
        if all(getattr(c, k) == v for k, v in ch.items()):
            continue
        settings.append(Setting("image_size", len(settings) + 1, ch, label, cost, f"~{cost:g} AP"))
    if settings:
        out["image_size"] = settings
    return out


State = dict[str, int]  # lever key -> level (0 = as in the base config)


def apply_state(config: Config, settings: dict[str, list[Setting]], state: State) -> Config:
    """``config`` with the chosen level of each lever applied (validated)."""
    changes: dict[str, Any] = {}
    for key in LEVER_KEYS:
        level = state.get(key, 0)
        if level:
            changes.update(settings[key][level - 1].changes)
    return config.replace(**changes) if changes else config


def state_cost(settings: dict[str, list[Setting]], state: State) -> float:
    return sum(settings[k][lv - 1].cost for k, lv in state.items() if lv)


def short_label(setting: Setting) -> str:
    """A few words for a setting: ``1 img/pass``, ``256 RoIs``, ``layers 3+``, ``crop 192x256`` ..."""
    ch = setting.changes
    if "gradient_checkpointing" in ch:
        return "checkpointing"
    if "images_per_gpu" in ch:
        return f"{ch['images_per_gpu']} img/pass"
    if "amp" in ch:
        return f"amp {ch['amp']}"
    if "use_mini_mask" in ch:
        return "mini-masks"
    if "train_rois_per_image" in ch:
        return f"{ch['train_rois_per_image']} RoIs"
    if "max_gt_instances" in ch:
        return f"{ch['max_gt_instances']} GT"
    if "layers" in ch:
        return f"layers {ch['layers']}"
    if "aug_crop" in ch:
        return f"crop {ch['aug_crop'][0]}x{ch['aug_crop'][1]}"
    if "image_max_dim" in ch:
        return f"images {ch.get('image_min_dim', '')}/{ch['image_max_dim']}"
    if "image_min_dim" in ch:
        return f"crop size {ch['image_min_dim']}"
    return setting.label


def _time_penalty(seconds: float, base_seconds: float, weight: float) -> float:
    """``weight`` per doubling of the step time beyond 1.5x (smaller slowdowns are within the noise
    of timing on a shared machine, and checkpointing's usual +30 % is its only, acceptable, cost)."""
    if not (base_seconds > 0 and math.isfinite(seconds) and seconds > 0):
        return 0.0
    return weight * max(0.0, math.log2(seconds / base_seconds) - math.log2(1.5))


def state_label(settings: dict[str, list[Setting]], state: State) -> str:
    parts = [settings[k][lv - 1].label for k in LEVER_KEYS if (lv := state.get(k, 0))]
    return ", ".join(parts) if parts else "base config"


# ============================================================================ peak model


@lru_cache(maxsize=4)
def _model_facts(arch_json: str) -> tuple[tuple[tuple[str, int, bool], ...], dict[str, float]]:
    """Parameter table ``(name, bytes, is_norm)`` and the cumulative activation share of the frozen
    backbone prefix of each ``layers`` preset, for the architecture fields in ``arch_json``."""
    import torch

    from ..modeling import build_model

    cfg = Config(**json.loads(arch_json))
    model = build_model(cfg)
    norm: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            norm.update(f"{mod_name}.{p}" for p, _ in mod.named_parameters(recurse=False))
    table = tuple((n, p.numel() * p.element_size(), n in norm) for n, p in model.named_parameters())
    body = model.backbone.body
    counts: dict[str, int] = {}
    hooks = []
    groups = {"conv1": "stem", "bn1": "stem", "relu": "stem", "maxpool": "stem",
              "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
    for name, child in body.named_children():
        group = groups.get(name)
        if group is None:
            continue
        for leaf in child.modules():
            if next(leaf.children(), None) is None:
                hooks.append(leaf.register_forward_hook(
                    lambda m, i, o, g=group: counts.__setitem__(g, counts.get(g, 0) + o.numel())))
    body.eval()
    with torch.no_grad():
        body(torch.zeros(1, cfg.image_channel_count, 128, 128))
    for hk in hooks:
        hk.remove()
    total = max(1, sum(counts.values()))
    acc, shares = 0.0, {"all": 0.0}
    for group, preset in (("stem", None), ("layer1", "3+"), ("layer2", "4+"), ("layer3", "5+"), ("layer4", "heads")):
        acc += counts.get(group, 0) / total
        if preset:
            shares[preset] = acc
    return table, shares


def _arch_json(config: Config) -> str:
    keep = ("backbone", "architecture", "backbone_width", "fpn_channels", "image_channel_count", "num_classes",
            "pool_size", "mask_pool_size", "box_head_dim", "mask_head_channels", "mask_head_convs", "train_bn",
            "rpn_anchor_ratios", "frozen_bn_eps")
    d = config.model_dump()
    return json.dumps({k: d[k] for k in keep}, sort_keys=True)


def trainable_bytes(config: Config) -> int:
    """Bytes of the parameters ``config.layers`` / ``train_bn`` leave trainable (their gradients and
    momentum take as much each); as :func:`maskrcnn.engine.optim.select_trainable` selects them."""
    table, _ = _model_facts(_arch_json(config))
    pattern = re.compile(config.layer_regex())
    return sum(b for name, b, is_norm in table if pattern.search(name) and (config.train_bn or not is_norm))


def frozen_share(config: Config) -> float:
    """Share of the backbone body's activations in the stages ``config.layers`` freezes (0 for ``all``)."""
    _, shares = _model_facts(_arch_json(config))
    return shares.get(config.layers, 0.0)


#: how each lever's effect is carried to settings and combinations that are not measured
_VARIABLE = {
    "micro_batch": "images per pass",
    "rois": "RoIs per image",
    "gt_instances": "GT instances per image",
    "image_size": "pixels per image",
    "crop": "pixels per image",
    "frozen_stages": "frozen activation share",
}


class PeakModel:
    """Estimate of the peak of a combination of lever settings from measured single-lever probes.

    ``peak(c) = model + 2 * trainable(c) + V0 * prod_i f_i(c)``

    * ``model`` (measured weights) and ``trainable(c)`` (exact, from the parameter names the layer
      selection keeps; each trainable parameter has a gradient and a momentum buffer) form the
      static part; ``V0 = peak(base) - static(base)`` is the base config's variable part
      (activations, temporaries, the batch, allocator overhead).
    * Each lever ``i`` scales the variable part by the factor its probe measured (the base config
      with only that lever at its first setting): ``f_i = V_i / V0``.
    * Settings further along a lever are linear in the lever's natural variable ``x`` (images per
      pass, RoIs per image, GT instances per image, pixels per image), through the base and the
      probe: ``f_i(x) = 1 - (1 - f_i) * (x0 - x) / (x0 - x1)``: memory of activations grows
      linearly in each of them. Frozen stages follow ``f = f_1 ** (share / share_1)`` in the share
      of backbone activations the frozen stages hold (counted once with forward hooks).
      Pixels and instances of a candidate are those of its synthetic images through the pipeline
      (:func:`batch_features`, no model needed), so smaller images and crops are estimated from
      their pixels, and the instances crops cut away through the GT line.
    * Factors multiply: a lever that removes a fraction of the variable part removes that fraction
      of what the others leave. This is exact for levers acting on the same memory (images per
      pass, pixels and checkpointing all scale the backbone's activations) and overestimates the
      peak (the safe side) when two levers remove large disjoint parts.

    Step time is estimated the same way from the probes' step times. ``calibrate`` rescales later
    estimates by a measured candidate's ratio. The planner measures what it recommends; the
    benchmark ``benchmarks/memory_levers.py`` measures every estimate it can make.
    """

    def __init__(self, base_config: Config, base: Measurement, probes: dict[str, tuple[Setting, Config, Measurement]],
                 features: Callable[[Config], dict[str, float]]) -> None:
        if base.peak is None:
            raise ValueError("PeakModel needs a measured base config")
        self.base_config = base_config
        self.features = features
        self.model_bytes = base.model
        self.static0 = self.static(base_config)
        self.v0 = max(1.0, float(base.peak) - self.static0)
        self.t0 = base.step_seconds if math.isfinite(base.step_seconds) and base.step_seconds > 0 else 1.0
        self.f0 = features(base_config)
        self.scale = 1.0
        self.factors: dict[str, tuple[float, float]] = {}  # key -> (memory factor, time factor) of the probe
        self.x1: dict[str, float] = {}  # key -> the probe's variable (numeric levers)
        self._first_frozen = "3+"
        for key, (_, cfg, m) in probes.items():
            if m.peak is None:
                continue
            if key == "frozen_stages":
                self._first_frozen = cfg.layers
            f = max(0.02, (m.peak - self.static(cfg)) / self.v0)
            tf = m.step_seconds / self.t0 if math.isfinite(m.step_seconds) and m.step_seconds > 0 else 1.0
            self.factors[key] = (f, tf)
            x1 = self._x(key, cfg, features(cfg))
            if x1 is not None and abs(x1 - self._x0(key)) > 1e-9:
                self.x1[key] = x1

    def static(self, config: Config) -> float:
        return float(self.model_bytes + 2 * trainable_bytes(config))

    def _x(self, key: str, config: Config, feats: dict[str, float]) -> float | None:
        """The natural variable of a numeric lever (None for the others)."""
        if key == "micro_batch":
            return float(config.images_per_gpu)
        if key == "rois":
            return float(config.train_rois_per_image)
        if key == "gt_instances":
            return feats["instances"]
        if key in ("image_size", "crop"):
            return feats["pixels"]
        return None

    def _x0(self, key: str) -> float:
        return self._x(key, self.base_config, self.f0) or 0.0

    def _linear(self, key: str, x: float, time: bool = False) -> float:
        """Factor of lever ``key`` at variable ``x``: the line through (x0, 1) and the probe."""
        f1 = self.factors[key][1 if time else 0]
        x0, x1 = self._x0(key), self.x1[key]
        return max(0.05, 1.0 - (1.0 - f1) * (x0 - x) / (x0 - x1))

    def _factor(self, key: str, config: Config, feats: dict[str, float], time: bool = False) -> float:
        if key not in self.factors:
            return 1.0
        if key == "frozen_stages":
            share0 = frozen_share(self.base_config)
            share1 = frozen_share(self.base_config.replace(layers=self._first_frozen))
            f1 = self.factors[key][1 if time else 0]
            return f1 ** ((frozen_share(config) - share0) / (share1 - share0)) if share1 > share0 else f1
        if key in self.x1:
            x = self._x(key, config, feats)
            return self._linear(key, x, time) if x is not None else 1.0
        return self.factors[key][1 if time else 0]

    def estimate(self, config: Config, state: State) -> tuple[float, float]:
        """``(peak bytes, step seconds)`` estimated for ``config`` (the base with ``state`` applied)."""
        feats = self.features(config)
        f = t = 1.0
        for key in LEVER_KEYS:
            if state.get(key) and key not in ("image_size", "crop"):
                f *= self._factor(key, config, feats)
                t *= self._factor(key, config, feats, time=True)
        pf, pt = self._pixel_factor(config, feats, state)
        return self.static(config) + self.v0 * f * pf * self.scale, self.t0 * t * pt

    def _pixel_factor(self, config: Config, feats: dict[str, float], state: State) -> tuple[float, float]:
        """Smaller images and crops: linear in the batch's pixels (the image-size probe's line, or
        the crop probe's when only crops apply), times the GT line for the instances crops cut away."""
        image, crop = bool(state.get("image_size")), bool(state.get("crop"))
        if not image and not crop:
            return 1.0, 1.0
        law = "crop" if (crop and not image and "crop" in self.x1) else "image_size"
        if law not in self.x1:
            law = "crop" if "crop" in self.x1 else ""
        if not law:
            return 1.0, 1.0
        f, t = self._linear(law, feats["pixels"]), self._linear(law, feats["pixels"], time=True)
        if law == "image_size" and crop and "gt_instances" in self.x1 and not state.get("gt_instances"):
            f *= self._linear("gt_instances", feats["instances"])
        return f, t

    def calibrate(self, config: Config, state: State, measured: Measurement) -> None:
        """Rescale later estimates so that ``config`` estimates to its measured peak."""
        if measured.peak is None:
            return
        est, _ = self.estimate(config, state)
        var_est = est - self.static(config)
        var_meas = measured.peak - self.static(config)
        if var_est > 0 and var_meas > 0:
            self.scale *= var_meas / var_est


# ============================================================================ the planner


@dataclass
class Row:
    """One line of the plan's table: a configuration, its peak (measured or estimated) and its cost."""

    label: str
    state: State
    peak: float | None
    measured: bool
    kind: str = "probe"  # base | probe | path | recommended
    estimate: float | None = None
    seconds: float = float("nan")
    cost: float = 0.0
    cost_note: str = ""
    error: str | None = None


@dataclass
class MemoryPlan:
    """What :func:`plan_memory` found. ``recommended`` is the cheapest measured config that fits
    (``config`` itself when it fits), or None when nothing tried fits."""

    config: Config
    device: str
    budget: int
    target: int
    headroom: float
    base: Measurement
    rows: list[Row]
    recommended: Config | None
    recommended_state: State
    fits: bool
    settings: dict[str, list[Setting]]
    image_size: tuple[int, int]
    instances: int
    steps: int
    notes: list[str] = field(default_factory=list)

    def diff(self) -> list[tuple[str, Any, Any]]:
        """``(field, base value, recommended value)`` of every changed field."""
        if self.recommended is None:
            return []
        a, b = self.config.model_dump(), self.recommended.model_dump()
        return [(k, a[k], b[k]) for k in a if a[k] != b[k]]

    def estimate_errors(self) -> list[tuple[str, float, float]]:
        """``(label, estimate, measured)`` of the rows whose peak was estimated before being measured."""
        return [(r.label, r.estimate, r.peak) for r in self.rows
                if r.measured and r.estimate is not None and r.peak is not None]

    def table(self) -> str:
        return format_plan(self)


def default_budget(device: str) -> int:
    """The device's memory: CUDA total memory; CPU the memory available now."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[1])
    import psutil

    return int(psutil.virtual_memory().available)


def _key(state: State) -> str:
    return json.dumps({k: v for k, v in sorted(state.items()) if v})


def plan_memory(
    config: Config,
    budget: int | str | None = None,
    device: str = "cpu",
    *,
    headroom: float = 0.10,
    steps: int = 2,
    image_size: tuple[int, int] | None = None,
    instances: int | None = None,
    threads: int | None = None,
    levers: list[str] | None = None,
    explore: bool = False,
    max_rounds: int = 4,
    time_weight: float = 0.5,
    measure: Callable[[Config], Measurement] | None = None,
    log: Callable[[str], None] | None = None,
) -> MemoryPlan:
    """Measure ``config`` and, when its peak is above ``budget * (1 - headroom)``, find the cheapest
    combination of lever settings that fits.

    1. The base config is measured (:func:`measure_peak`). If it fits (and not ``explore``), done.
    2. Probes: the base with each lever at its first setting (:func:`lever_settings`) is measured.
    3. Ranking: the levers are ordered by ``(accuracy cost + time_weight * log2(step time ratio /
       1.5)) / memory saved`` (:func:`_time_penalty`; free levers first, the largest saving among
       them).
    4. Search: the cheapest combination of settings (accuracy cost plus the time term) whose
       estimated peak (:class:`PeakModel`) fits, by a cost-ordered search over all combinations
       (cheap: estimates need no run).
    5. The combination is built up lever by lever in ranking order and every step is measured
       (the estimate made before is kept in the table's ``est.`` column; no peak in the plan is an
       estimate); the first step that fits is the recommendation. If none does, the estimates are
       rescaled by the measurement and the search runs again (at most ``max_rounds`` rounds).

    Args:
        budget: bytes or a size string (``"8GiB"``); default :func:`default_budget`.
        headroom: fraction of the budget left free (allocator fragmentation, CUDA context, larger
            images or more instances than the synthetic ones).
        levers: keys of :data:`LEVERS` to consider (default all).
        measure: ``config -> Measurement`` (default :func:`measure_peak` with the arguments above).
        log: progress messages (default: none).
    """
    log = log or (lambda msg: None)
    size = tuple(image_size or source_size(config))
    n_inst = int(config.max_gt_instances if instances is None else instances)
    if measure is None:
        def measure(cfg: Config) -> Measurement:
            return measure_peak(cfg, device, steps=steps, image_size=size, instances=n_inst, threads=threads)  # type: ignore[arg-type]
    budget_b = parse_bytes(budget) if budget is not None else default_budget(device)
    target = int(budget_b * (1.0 - headroom))
    settings = lever_settings(config, device, n_inst, size)  # type: ignore[arg-type]
    if levers is not None:
        unknown = [k for k in levers if k not in LEVER_KEYS]
        if unknown:
            raise ConfigError(f"--levers {unknown[0]!r}: unknown lever; choose from {', '.join(LEVER_KEYS)}")
        settings = {k: v for k, v in settings.items() if k in levers}
    notes: list[str] = []
    if "amp" in settings and not device.startswith("cuda") and not cpu_has_fast_bf16():
        del settings["amp"]
        notes.append("amp left out: this CPU has no bf16 instructions (bf16 autocast is emulated, several times slower)")
    for key, options in list(settings.items()):  # drop settings that make an invalid config
        valid = []
        for opt in options:
            try:
                config.replace(**opt.changes)
            except ConfigError:
                break
            valid.append(opt)
        if valid:
            settings[key] = valid
        else:
            del settings[key]

    def features(cfg: Config) -> dict[str, float]:
        return batch_features(cfg, size, n_inst)  # type: ignore[arg-type]

    measured: dict[str, Measurement] = {}

    def run(cfg: Config, state: State, label: str) -> Measurement:
        k = _key(state)
        if k in measured:
            return measured[k]
        log(f"measuring {label} ...")
        m = measure(cfg)
        measured[k] = m
        if m.peak is not None:
            log(f"  peak {format_bytes(m.peak)}, {m.step_seconds:.2f} s/step ({m.seconds:.0f} s)")
        else:
            log(f"  failed: {m.error}")
        return m

    base = run(config, {}, "the base config")
    if base.peak is None and not base.oom:
        raise MaskRCNNError(f"measuring the base config on {device} failed: {base.error}")
    rows = [Row("base config", {}, base.peak, True, "base", seconds=base.step_seconds, error=base.error)]
    plan = MemoryPlan(config, device, budget_b, target, headroom, base, rows, None, {}, False, settings,
                      size, n_inst, steps, notes)  # type: ignore[arg-type]
    fits_base = base.peak is not None and base.peak <= target
    if fits_base:
        plan.recommended, plan.fits = config, True
        if not explore:
            return plan

    probes: dict[str, tuple[Setting, Config, Measurement]] = {}
    for key in LEVER_KEYS:
        if key not in settings:
            continue
        first = settings[key][0]
        cfg = apply_state(config, settings, {key: 1})
        m = run(cfg, {key: 1}, first.label)
        probes[key] = (first, cfg, m)
        rows.append(Row(first.label, {key: 1}, m.peak, True, "probe", seconds=m.step_seconds, cost=first.cost,
                        cost_note=first.cost_note, error=m.error))
    _rank_probes(plan, time_weight)
    if fits_base:
        return plan
    if base.peak is None:
        return _plan_without_base(plan, probes, run)

    model = PeakModel(config, base, probes, features)
    rank_order = [r.state and next(iter(r.state)) for r in rows if r.kind == "probe"]
    best: tuple[State, Measurement] | None = None
    tried: list[Row] = []  # measured candidates of earlier rounds that did not fit
    chain_rows: list[Row] = []
    failed: set[str] = set()
    for _ in range(max_rounds):
        state = _search(model, config, settings, target, time_weight, failed)
        if state is None:
            break
        order = sorted((k for k in state if state[k]), key=lambda k: rank_order.index(k) if k in rank_order else 99)
        chain = [{k: state[k] for k in order[: i + 1]} for i in range(len(order))]
        chain_rows = []
        for i, st in enumerate(chain):
            cfg = apply_state(config, settings, st)
            est, _ = model.estimate(cfg, st)
            added = settings[order[i]][st[order[i]] - 1].label
            label = added if i == 0 else f"+ {added}"
            m = run(cfg, st, state_label(settings, st))  # every combination shown is measured; the estimate only chose it
            single = len(st) == 1 and st[next(iter(st))] == 1  # a probe: measured before, no estimate
            chain_rows.append(Row(label, dict(st), m.peak, True, "path", estimate=None if single else est,
                                  seconds=m.step_seconds, cost=state_cost(settings, st), error=m.error))
            if m.peak is not None and m.peak <= target:
                best = (dict(st), m)
                break
        if best is not None:
            break
        last = chain_rows[-1]  # did not fit: keep it in the table, rescale the estimates, search again
        short = " + ".join(short_label(settings[k][v - 1]) for k, v in last.state.items() if v)
        tried.append(Row(f"(did not fit) {short}", last.state, last.peak, True, "path",
                         estimate=last.estimate, seconds=last.seconds, cost=last.cost, error=last.error))
        chain_rows = []
        failed.add(_key(state))
        if m.peak is not None:
            model.calibrate(cfg, state, m)
    shown = {_key(r.state) for r in chain_rows}
    rows += [r for r in tried if _key(r.state) not in shown] + chain_rows
    if best is not None:
        plan.recommended_state = best[0]
        plan.recommended = apply_state(config, settings, best[0])
        plan.fits = True
    else:
        plan.notes.append("nothing tried fits the budget: raise --memory, lower --headroom, or use a smaller backbone "
                          "or smaller images than the levers reach")
    return plan


def _rank(cost: float, saving: float, seconds: float, base_seconds: float, time_weight: float) -> tuple[float, float]:
    """Order of levers: accuracy cost (plus :func:`_time_penalty`) per byte saved, then the larger
    saving; levers that save nothing come last."""
    if saving <= 0:
        return (math.inf, -saving)
    return ((cost + _time_penalty(seconds, base_seconds, time_weight)) / saving, -saving)


def _rank_probes(plan: MemoryPlan, time_weight: float) -> None:
    """Sort the single-lever rows by :func:`_rank` (the table's order)."""
    base = plan.base
    probes = [r for r in plan.rows if r.kind == "probe"]
    others = [r for r in plan.rows if r.kind != "probe"]

    def rank(r: Row) -> tuple[float, float]:
        if r.peak is None or base.peak is None:
            return (math.inf, math.inf)
        return _rank(r.cost, base.peak - r.peak, r.seconds, base.step_seconds, time_weight)

    probes.sort(key=rank)
    plan.rows[:] = [r for r in others if r.kind == "base"] + probes + [r for r in others if r.kind != "base"]


def _search(model: PeakModel, config: Config, settings: dict[str, list[Setting]], target: int,
            time_weight: float, exclude: set[str]) -> State | None:
    """The cheapest combination whose estimate fits: cost-ordered (uniform-cost) search over the
    lever settings, cost = accuracy cost + ``time_weight`` per doubling of the estimated step time;
    among equal costs fewer changes, then the lower estimate. Combinations in ``exclude`` (measured
    and found too big) are passed over."""
    import heapq
    import itertools

    tie = itertools.count()

    def evaluate(st: State) -> tuple[float, float] | None:
        try:
            cfg = apply_state(config, settings, st)
        except ConfigError:
            return None
        est, secs = model.estimate(cfg, st)
        return state_cost(settings, st) + _time_penalty(secs, model.t0, time_weight), est

    start: State = {}
    c0, e0 = evaluate(start)  # type: ignore[misc]
    heap = [(c0, 0, e0, next(tie), start)]
    seen = {_key(start)}
    while heap:
        _, n, est, _, st = heapq.heappop(heap)
        if est <= target and _key(st) not in exclude and st:
            return st
        for key, options in settings.items():
            level = st.get(key, 0)
            if level >= len(options):
                continue
            nxt = {**st, key: level + 1}
            k = _key(nxt)
            if k in seen:
                continue
            seen.add(k)
            scored = evaluate(nxt)
            if scored is not None:
                heapq.heappush(heap, (scored[0], n + 1, scored[1], next(tie), nxt))
    return None


def _plan_without_base(plan: MemoryPlan, probes: dict[str, tuple[Setting, Config, Measurement]],
                       run: Callable[[Config, State, str], Measurement]) -> MemoryPlan:
    """The base config ran out of memory: apply levers cumulatively in order of cost, measuring
    each combination, until one fits."""
    settings, config, target = plan.settings, plan.config, plan.target
    order = sorted(settings, key=lambda k: (settings[k][0].cost, LEVER_KEYS.index(k)))
    state: State = {}
    for key in order:
        for level in range(1, len(settings[key]) + 1):
            state = {**state, key: level}
            cfg = apply_state(config, settings, state)
            m = run(cfg, state, state_label(settings, state))
            plan.rows.append(Row(state_label(settings, state), dict(state), m.peak, True, "path", seconds=m.step_seconds,
                                 cost=state_cost(settings, state), error=m.error))
            if m.peak is not None and m.peak <= target:
                plan.recommended_state, plan.recommended, plan.fits = dict(state), cfg, True
                return plan
            if m.peak is not None:
                break  # runs now: go on with the next lever
    plan.notes.append("nothing tried fits the budget")
    return plan


# ---------------------------------------------------------------------------- report


def _cost_text(row: Row, settings: dict[str, list[Setting]]) -> str:
    if row.kind == "base":
        return "-"
    if row.kind == "probe":
        return row.cost_note
    applied = [settings[k][v - 1] for k, v in row.state.items() if v]
    if all(s.cost == 0 for s in applied):
        return "none"
    return f"~{row.cost:.2g} AP"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table a person reads in seconds, with the recommended config diff."""
    c, b = plan.config, plan.base
    out = []
    out.append(f"memory plan on {plan.device}: {c.backbone}, {plan.image_size[0]}x{plan.image_size[1]} px synthetic images "
               f"with {plan.instances} instances, {c.images_per_gpu} image(s) per pass x {c.grad_accumulation} accumulation")
    how = ("CUDA max allocated" if plan.device.startswith("cuda") else
           f"peak RSS above the process after imports ({format_bytes(b.overhead)}, not counted)")
    out.append(f"budget {format_bytes(plan.budget)}: fits when peak <= {format_bytes(plan.target)} ({plan.headroom:.0%} headroom); "
               f"peak = {how}, {plan.steps} steps per configuration, each in a fresh process")
    out.append("")
    w = min(64, max([len(r.label) for r in plan.rows] + [20]) + 4)
    head = f"    {'lever / setting':<{w}}{'peak':>10} {'est.':>10} {'saving':>10}  {'accuracy cost':<36}{'s/step':>8}"
    out.append(head)
    base_peak = b.peak
    rec_key = _key(plan.recommended_state) if plan.fits and plan.recommended_state else None
    section, n = None, 0
    for r in plan.rows:
        if r.kind != section:
            if r.kind == "probe":
                out.append("  single levers, best first (accuracy cost per byte saved):")
            elif r.kind == "path":
                out.append("  the cheapest combination that fits, built up in ranking order:")
            section = r.kind
        if r.kind == "probe":
            n += 1
            lead = f"{n:>2}. "
        elif r.kind == "path":
            lead = "-> " if (rec_key is not None and r.measured and _key(r.state) == rec_key) else "   "
            lead = " " + lead
        else:
            lead = "    "
        label = r.label if len(r.label) <= w - 1 else r.label[: w - 4] + "..."
        if r.peak is None:
            peak, saving = "failed", "-"
        else:
            peak = ("" if r.measured else "~") + format_bytes(r.peak)
            saving = "-" if r.kind == "base" or base_peak is None else format_bytes(base_peak - r.peak)
        est = format_bytes(r.estimate) if (r.estimate is not None and r.measured) else ""
        secs = "-" if not math.isfinite(r.seconds) else ("" if r.measured else "~") + f"{r.seconds:.2f}"
        fit = "" if r.peak is None else ("  fits" if r.peak <= plan.target else "")
        lead = lead if len(lead) == 4 else lead[:4]
        out.append(f"{lead}{label:<{w}}{peak:>10} {est:>10} {saving:>10}  {_cost_text(r, plan.settings):<36}{secs:>8}{fit}")
        if r.error and r.peak is None:
            out.append(f"    {'':<{w}}({r.error})")
    errs = plan.estimate_errors()
    if errs:
        worst = max(abs(e - m) / m for _, e, m in errs)
        out.append(f"  (est. = the estimate that chose the combination, made before measuring it; largest error {worst:.1%})")
    out.append("")
    if plan.fits and not plan.diff():
        out.append(f"the config fits: peak {format_bytes(b.peak)} <= {format_bytes(plan.target)}; nothing to change")
    elif plan.fits:
        m_rows = [r for r in plan.rows if r.measured and r.peak is not None and _key(r.state) == _key(plan.recommended_state)]
        peak = m_rows[-1].peak if m_rows else None
        out.append(f"recommended: {state_label(plan.settings, plan.recommended_state)}")
        out.append(f"  measured peak {format_bytes(peak)} <= {format_bytes(plan.target)}, accuracy cost "
                   f"{_cost_text(Row('', plan.recommended_state, None, True, 'path', cost=state_cost(plan.settings, plan.recommended_state)), plan.settings)}; "
                   "config changes:")
        for k, old, new in plan.diff():
            out.append(f"    {k}: {old} -> {new}")
    out.extend(plan.notes)
    return "\n".join(out)


# ============================================================================ units


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
          "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1024, "mib": MiB, "gib": GiB, "tib": 1024 ** 4}


def parse_bytes(text: str | int | float) -> int:
    """``"8GiB"``, ``"8 GB"``, ``"7.5g"``, ``"512MiB"``, ``12e9`` -> bytes (``G``/``GB`` are decimal, ``GiB`` binary)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"--memory {text!r}: expected a size such as 8GiB, 16GB or 7.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float | None) -> str:
    """Bytes as ``1.23 GiB`` / ``456 MiB``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    return f"{sign}{n / MiB:.0f} MiB"


if __name__ == "__main__":
    sys.exit(_serve() if sys.argv[1:] == ["--server"] else _child_main(sys.argv[1:]))

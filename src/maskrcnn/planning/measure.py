"""Peak memory of real training steps, each configuration in a fresh child process.

Every measurement runs in a **fresh child process**, so the peak of one configuration never leaks
into another (a process never gives its heap back completely, and CUDA's caching allocator keeps
blocks). Children are forked from a small server process (``python -m maskrcnn.planning.measure
--server``) that has imported torch and the model code once and never runs any of it, so a
child starts in a fraction of a second instead of paying the imports (``isolation="exec"``
starts a new interpreter instead). The child builds the model of the config, prepares
``grad_accumulation`` (at most 2) loader batches of ``images_per_gpu`` synthetic images through
the real data pipeline (:class:`maskrcnn.data.synthetic.SyntheticInstances`: a 4:3 image of the
config's input size with ``max_gt_instances`` instance masks), creates the optimizer state (as
every step after the first has it) and the weight average of ``ema_decay``, and runs ``steps`` optimizer steps of
:class:`maskrcnn.engine.step.TrainStep`, the very step the trainer runs (autocast per ``amp``,
the sum of the model's losses, backward accumulated over the batches, clipping, the optimizer,
the scaler).

What "peak" means:

* CUDA: ``torch.cuda.max_memory_allocated()`` over the steps: every tensor of the run (weights,
  gradients, optimizer state, activations, the batch). Not included: the CUDA context
  (~0.3-0.6 GiB) and blocks the caching allocator keeps reserved; the latter is reported as
  ``overhead``.
* CPU: the kernel's resident-set high-water mark (``VmHWM``, :mod:`.procmem`) minus the resident
  size right after the imports. Before the baseline is read, garbage is collected, glibc returns
  free heap (``malloc_trim``) and the pages of the mapped libraries are made resident
  (``madvise(MADV_POPULATE_READ)``), so library code the steps run does not count: the peak is
  the memory training adds, as on CUDA. The high-water mark is reset before each step, so the
  peak is the steps' own; where that is not allowed the lifetime ``ru_maxrss`` is used. Memory
  glibc keeps without using it is counted: it is taken from the machine. Data-loader workers
  are separate processes and not included. What the CPU kernels allocate (oneDNN picks other
  kernels, with other workspaces, on AVX2 and on AVX-512/AMX machines) is part of the peak: a
  measurement is of this machine; :mod:`.peak_model` fits its terms to this machine's probes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from . import procmem

__all__ = ["Measurement", "measure_peak", "source_size", "synthetic_batches", "batch_features"]

#: the module the server and ``isolation="exec"`` children run
_MODULE = "maskrcnn.planning.measure"


def source_size(config: Config) -> tuple[int, int]:
    """Size ``(H, W)`` of the synthetic source images for ``config``: a 4:3 landscape photo whose
    short side is ``image_min_dim`` (long side at most ``image_max_dim`` where the mode has one),
    i.e. the largest training input a typical photo gives with this config."""
    h = int(config.image_min_dim)
    w = int(round(h * 4 / 3))
    if config.image_resize_mode in ("minmax", "square"):
        w = max(h, min(w, int(config.image_max_dim)))
    return h, w


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
            ``python -m maskrcnn.planning.measure`` (a new interpreter).
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
                done = subprocess.run([sys.executable, "-m", _MODULE, str(spec_path), str(out_path)],
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
    """A helper process (``python -m maskrcnn.planning.measure --server``) that imports torch and the
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
            self.proc = subprocess.Popen([sys.executable, "-m", _MODULE, "--server"],
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

    from ..data import pipeline, synthetic  # noqa: F401
    from ..engine import optim, runtime, step  # noqa: F401
    from ..modeling import build_model  # noqa: F401

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

def synthetic_batches(config: Config, image_size: tuple[int, int], instances: int, n_batches: int) -> list[Any]:
    """``n_batches`` loader batches (``images_per_gpu`` images each) of :class:`SyntheticInstances`
    through the real training pipeline (resize, augmentation, crops, mini-masks, GT cap)."""
    from ..data.pipeline import TrainingDataset, collate
    from ..data.synthetic import SyntheticInstances

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
    from ..data.synthetic import SyntheticInstances

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

    from ..engine.ema import ModelEMA
    from ..engine.optim import build_optimizer, select_trainable, set_train_mode
    from ..engine.runtime import resolve_amp, use_channels_last
    from ..engine.step import TrainStep
    from ..modeling import build_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = Config(**spec["config"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed)

    gc.collect()
    procmem.malloc_trim()
    process_rss = procmem.rss()
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        procmem.prefault_files()
        base = procmem.rss()

    amp_dtype, use_scaler = resolve_amp(config.amp, device)
    model = build_model(config)
    select_trainable(model, config)
    use_channels_last(model.to(device), amp_dtype)  # as the trainer does
    set_train_mode(model, config.train_bn)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, config)
    step = TrainStep(model, optimizer, device, params=params, amp_dtype=amp_dtype, clip_norm=config.gradient_clip_norm,
                     scaler=torch.amp.GradScaler(device.type, enabled=use_scaler))
    ema = ModelEMA(model, config.ema_decay, config.ema_warmup_steps) if config.ema_decay else None  # as the trainer keeps
    model_bytes = _allocated(device, base)
    _create_optimizer_state(optimizer, params)
    if not cuda:
        gc.collect()
        procmem.malloc_trim()
    batches = synthetic_batches(config, tuple(spec["image_size"]), int(spec["instances"]), min(config.grad_accumulation, 2))
    feats = _features_of(batches, config)

    times, step_peaks, reset_ok = [], [], False
    for _ in range(int(spec["steps"])):
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
        else:
            procmem.malloc_trim()
            reset_ok = procmem.reset_hwm()
        t0 = time.perf_counter()
        step([(b, 1.0) for b in batches])
        if ema is not None:
            ema.update(model)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        step_peaks.append(int(torch.cuda.max_memory_allocated(device) - base) if cuda else int(procmem.hwm(reset_ok) - base))
    if cuda:
        peak, method = torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated"
        overhead = torch.cuda.max_memory_reserved(device) - torch.cuda.max_memory_allocated(device)
    else:
        peak, overhead = max(step_peaks), process_rss
        method = ("VmHWM reset before each step" if reset_ok else "ru_maxrss") + " minus RSS after imports (libraries resident)"
    return {
        "peak": int(peak), "model": int(model_bytes), "overhead": int(overhead),
        "step_seconds": float(statistics.median(times[1:] if len(times) > 1 else times)),
        "trainable": int(sum(p.numel() * p.element_size() for p in params)), "pixels": int(feats["pixels"]),
        "instances": float(feats["instances"]), "device": str(device), "method": method, "steps": len(times),
        "step_peaks": step_peaks,
    }


def _allocated(device: Any, base: int) -> int:
    """Memory added since ``base``: CUDA allocated, or the CPU resident size after a trim."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device) - base)
    gc.collect()
    procmem.malloc_trim()
    return int(procmem.rss() - base)


def _create_optimizer_state(optimizer: Any, params: list) -> None:
    """The optimizer's state exists from the start (as in every step after the trainer's first), so
    the first measured step is already a steady-state step: buffers created by a step of zero
    gradients at learning rate 0 (weights unchanged)."""
    import torch

    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr


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


if __name__ == "__main__":
    sys.exit(_serve() if sys.argv[1:] == ["--server"] else _child_main(sys.argv[1:]))

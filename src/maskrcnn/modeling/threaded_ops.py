"""torchvision's single-threaded CPU kernels spread over torch's intra-op threads.

On CPU, torchvision's ``roi_align`` (forward and backward) and ``nms`` run on one core however
many threads torch has, and in a training step of a small network they are a large share of the
time (the ``nuclei`` preset on 2 cores: RoIAlign backward ~24 %, the RPN's NMS ~17 %, profiled
with py-spy; docs/performance.md). Their kernels release the GIL, so Python threads run them side
by side:

* :func:`roi_align` splits the RoIs into one chunk per thread. Each pooled value depends only on
  its own RoI, so the forward output is bit-identical to torchvision's; the backward sums one
  gradient per chunk, which differs from torchvision's only in the order of the additions (fp32
  rounding). In training (a gradient to compute) with a fixed sampling grid and enough pooled
  values it is instead two sparse products (:mod:`.roi_align_sparse`, ``embedding_bag`` with
  per-sample weights: forward and backward together 3x faster than torchvision's kernels at the
  nuclei preset's size, and no copy of a channels-last map to NCHW), equal to torchvision's to
  fp32 rounding both ways.
* :func:`map_images` runs a per-image function (the RPN's selection with its NMS) for the images
  of a batch side by side; results are identical and in order.

Both fall back to the plain call with one thread (``torch.get_num_threads() == 1``, as the engine
sets on a busy machine, :mod:`maskrcnn.engine.threads`), on other devices, while tracing
(export) and when there is too little work; :func:`disabled` turns them off (tests compare both).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

from . import roi_align_sparse

__all__ = ["roi_align", "map_images", "disabled", "threads_for"]

T = TypeVar("T")
R = TypeVar("R")

MIN_ROIS_PER_THREAD = 16  # below this, thread hand-off costs more than it saves
#: Pooled values (RoIs x channels x bins) from which training pools with the sparse products: on
#: one core, forward and backward of 150 RoIs x 64 channels x 7x7 take 7.6 ms there against 25 ms in
#: torchvision's kernels, of 70 x 8 x 7x7 2.5 ms against 1.1 ms (the weights' bookkeeping, a few
#: dozen small tensor ops, costs more than the kernels).
MIN_SPARSE_VALUES = 1 << 17
_state = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0  # a forked child (a data-loader worker) gets its own pool: the parent's threads are not in it
_pool_lock = threading.Lock()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block (this thread), every op here runs as the plain single call."""
    old = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = old


def _plain(device: torch.device) -> bool:
    """Whether the ops here must be the plain calls: another device, tracing, or :func:`disabled`."""
    return device.type != "cpu" or getattr(_state, "off", False) or torch.jit.is_tracing() or torch.jit.is_scripting()


def threads_for(device: torch.device, work: int, min_per_thread: int = 1) -> int:
    """Threads to split ``work`` items over on ``device``: torch's intra-op thread count (at most
    ``work // min_per_thread``) on CPU; 1 elsewhere, while tracing, or when disabled."""
    if _plain(device):
        return 1
    return max(1, min(torch.get_num_threads(), work // max(1, min_per_thread)))


def _executor(workers: int) -> ThreadPoolExecutor:
    """The process's one pool, with at least ``workers`` threads (it grows, never multiplies)."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            # a replaced pool's threads exit once it is garbage-collected (after any map in progress)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskrcnn-op")
            _pool_size, _pool_pid = workers, os.getpid()
        return _pool


def map_images(fn: Callable[[T], R], items: Sequence[T], device: torch.device) -> list[R]:
    """``[fn(x) for x in items]``, run side by side on CPU threads when there are several items.
    ``fn`` must not depend on the other items' results (per-image work)."""
    n = threads_for(device, len(items))
    if n <= 1:
        return [fn(x) for x in items]
    grad, kind = torch.is_grad_enabled(), device.type
    amp, amp_dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)

    def run(x: T) -> R:  # a worker thread runs with the caller's (thread-local) grad and autocast modes
        _state.off = True  # and never splits again (a pool thread waiting on its own pool could deadlock)
        with torch.set_grad_enabled(grad), torch.autocast(kind, dtype=amp_dtype, enabled=amp):
            return fn(x)

    return list(_executor(n).map(run, items))


class _ChunkedRoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign kernels run on ``len(chunks)`` threads, one chunk of RoIs each."""

    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, bounds: tuple[int, ...], scale: float, size: tuple[int, int],
                sampling_ratio: int, aligned: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(rois)
        ctx.args = (bounds, scale, size, sampling_ratio, aligned, tuple(x.shape))
        chunks = [rois[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        op = torch.ops.torchvision.roi_align
        outs = _executor(len(chunks)).map(lambda r: op(x, r, scale, size[0], size[1], sampling_ratio, aligned), chunks)
        return torch.cat(list(outs), 0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (rois,) = ctx.saved_tensors
        bounds, scale, size, sampling_ratio, aligned, (b, c, h, w) = ctx.args
        grad = grad.contiguous()
        op = torch.ops.torchvision._roi_align_backward
        parts = [(rois[a:e], grad[a:e]) for a, e in zip(bounds[:-1], bounds[1:])]
        grads = list(_executor(len(parts)).map(
            lambda p: op(p[1], p[0], scale, size[0], size[1], b, c, h, w, sampling_ratio, aligned), parts))
        total = grads[0]
        for g in grads[1:]:
            total = total.add_(g)
        return total, None, None, None, None, None, None


class _SparseRoIAlign(torch.autograd.Function):
    """RoIAlign as the sparse products of :mod:`.roi_align_sparse`; the weights are computed once for
    both directions. The gradient comes back in the features' memory layout."""

    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, scale: float, size: tuple[int, int], sampling_ratio: int,
                aligned: bool) -> Tensor:  # noqa: D102
        pixel, weight = roi_align_sparse.sample_weights(rois, scale, size, sampling_ratio, aligned, x.shape[2], x.shape[3])
        ctx.save_for_backward(pixel, weight)
        ctx.shape = tuple(x.shape)
        ctx.channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return roi_align_sparse.pool(x, pixel, weight, size)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        pixel, weight = ctx.saved_tensors
        out = roi_align_sparse.scatter(grad, pixel, weight, ctx.shape)
        return (out if ctx.channels_last else out.contiguous()), None, None, None, None, None


def roi_align(x: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """torchvision's ``roi_align(x [B, C, H, W], rois [K, 5] (batch index, x1, y1, x2, y2 in input
    pixels), ...) -> [K, C, S, S]``, split over CPU threads, or in training the sparse products
    (see the module doc). As torchvision under autocast, the pooling runs in fp32 and the result
    has ``x``'s dtype."""
    k = rois.shape[0]
    n = threads_for(x.device, k, MIN_ROIS_PER_THREAD)
    sparse = (not _plain(x.device) and x.is_floating_point() and sampling_ratio > 0 and x.requires_grad
              and torch.is_grad_enabled() and k * x.shape[1] * output_size[0] * output_size[1] >= MIN_SPARSE_VALUES)
    if not sparse and (n <= 1 or not x.is_floating_point()):
        return tv_roi_align(x, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                            aligned=aligned)
    dtype = x.dtype
    work = x if dtype in (torch.float32, torch.float64) else x.float()
    with torch.autocast(x.device.type, enabled=False):
        if sparse:  # the features' layout as it is: channels-last needs no copy
            out = _SparseRoIAlign.apply(work, rois.to(work.dtype), float(spatial_scale), tuple(output_size),
                                        int(sampling_ratio), bool(aligned))
        else:
            bounds = tuple(k * i // n for i in range(n + 1))
            out = _ChunkedRoIAlign.apply(work.contiguous(), rois.to(work.dtype).contiguous(), bounds,
                                         float(spatial_scale), tuple(output_size), int(sampling_ratio), bool(aligned))
    return out.to(dtype)

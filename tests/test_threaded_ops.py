"""torchvision's single-threaded CPU kernels split over threads (maskrcnn.modeling.threaded_ops):
same values as the plain calls, and the OpenMP default set by ``import maskrcnn``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from maskrcnn.modeling import threaded_ops
from maskrcnn.modeling.poolers import MultiLevelRoIAlign


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _rois(n: int, batch: int = 2, size: float = 60.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 2 + torch.rand(n, 2, generator=g) * 30
    idx = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


def test_threads_follow_torch_device_work_and_disabled(two_threads):
    cpu = torch.device("cpu")
    assert threaded_ops.threads_for(cpu, 100, 16) == 2
    assert threaded_ops.threads_for(cpu, 20, 16) == 1  # too little work for two
    assert threaded_ops.threads_for(torch.device("meta"), 100) == 1
    with threaded_ops.disabled():
        assert threaded_ops.threads_for(cpu, 100) == 1
    assert threaded_ops.threads_for(cpu, 100) == 2
    torch.set_num_threads(1)
    assert threaded_ops.threads_for(cpu, 100) == 1


@pytest.mark.parametrize("aligned,sampling", [(False, 2), (True, 0)])
def test_roi_align_equals_torchvision_forward_exactly_and_backward_to_rounding(two_threads, aligned, sampling):
    x = torch.randn(2, 8, 32, 40, generator=torch.Generator().manual_seed(1), requires_grad=True)
    rois = _rois(70)
    w = torch.randn(70, 8, 7, 7, generator=torch.Generator().manual_seed(2))
    ref = tv_roi_align(x, rois, (7, 7), 0.5, sampling, aligned)
    (ref * w).sum().backward()
    g_ref, x.grad = x.grad.clone(), None
    out = threaded_ops.roi_align(x, rois, (7, 7), 0.5, sampling, aligned)
    (out * w).sum().backward()
    assert torch.equal(out, ref)  # every pooled value depends on its own RoI only
    torch.testing.assert_close(x.grad, g_ref, rtol=1e-5, atol=1e-5)  # two partial sums added
    assert x.grad.abs().sum() > 1  # the RoIs do reach the features


def test_roi_align_gradient_is_the_derivative(two_threads):
    x = torch.randn(2, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    rois = _rois(40, size=8.0).double()
    rois[:, 3:] = rois[:, 3:].clamp(max=11.0)

    def f(t):
        return threaded_ops.roi_align(t, rois, (3, 3), 1.0, 2, False)

    assert threaded_ops.threads_for(x.device, 40, threaded_ops.MIN_ROIS_PER_THREAD) == 2
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


def test_roi_align_under_bf16_autocast_matches_torchvision(two_threads):
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _rois(48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = tv_roi_align(x, rois, (5, 5), 0.25, 2, False)
        out = threaded_ops.roi_align(x, rois, (5, 5), 0.25, 2, False)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


def test_multilevel_pooler_same_with_and_without_threads(two_threads):
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(2, 4, 64 // s, 64 // s, generator=g) for s in (1, 2, 4, 8)]
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 3 + [[4.0, 4.0, 250.0, 200.0]]).repeat(12, 1) * 0.25 * (i + 1)
             for i in range(2)]
    pooler = MultiLevelRoIAlign(7, 2, strides=(4, 8, 16, 32))
    out = pooler(feats, boxes)
    with threaded_ops.disabled():
        ref = pooler(feats, boxes)
    assert out.shape == (96, 4, 7, 7)
    assert torch.equal(out, ref)


def test_map_images_keeps_order_grad_and_autocast_modes(two_threads):
    def probe(i: int):
        return i * i, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), threaded_ops.threads_for(
            torch.device("cpu"), 100)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = threaded_ops.map_images(probe, list(range(5)), torch.device("cpu"))
    # the caller's modes reach the worker threads, which never split again
    assert got == [(i * i, False, True, 1) for i in range(5)]
    got = threaded_ops.map_images(probe, [3], torch.device("cpu"))  # one item: run here
    assert got == [(9, True, False, 2)]


def test_rpn_proposals_same_with_and_without_threads(two_threads):
    from maskrcnn.config import Config
    from maskrcnn.modeling import build_model

    cfg = Config(num_classes=2, backbone="resnet18", backbone_width=8, fpn_channels=16, image_min_dim=64,
                 image_max_dim=64, rpn_anchor_scales=[8, 16, 32, 64, 128])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(list(images))
        with threaded_ops.disabled():
            ref = model(list(images))
    assert len(out) == 2
    for a, b in zip(out, ref):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_import_sets_the_openmp_spin_default_unless_the_user_did():
    code = "import os, maskrcnn, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1000", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "5"}, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "5", out.stderr


def test_one_pool_per_process_whatever_the_split():
    """RoIAlign asks for up to torch's thread count, the RPN for one per image: the pool grows to
    the largest request and is reused, not rebuilt (new threads) whenever the count changes."""
    old = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        x = torch.randn(2, 4, 32, 32)
        pool = threaded_ops._executor(4)
        for _ in range(3):
            assert threaded_ops.map_images(lambda i: i + 1, [0, 1], torch.device("cpu")) == [1, 2]  # 2 threads
            out = threaded_ops.roi_align(x, _rois(64), (3, 3), 0.5, 2, False)  # 4 chunks
            assert torch.equal(out, tv_roi_align(x, _rois(64), (3, 3), 0.5, 2, False))
            assert threaded_ops._executor(2) is pool and threaded_ops._executor(4) is pool
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- RoIAlign as sparse products (training)


def _edge_rois(n: int, batch: int, width: float, height: float) -> torch.Tensor:
    """RoIs inside, across and beyond the map's borders, some of zero or sub-pixel size."""
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor([width * 0.1, height * 0.1])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([width / 2, height / 2])
    wh[:5] = 0.0  # degenerate: one point
    wh[5:10] = 0.3  # under a pixel
    idx = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


@pytest.mark.parametrize("aligned,sampling,size", [(False, 2, (7, 7)), (True, 2, (14, 14)), (False, 1, (5, 3)), (True, 3, (4, 6))])
def test_sparse_roi_align_equals_torchvision_kernels(aligned, sampling, size):
    from maskrcnn.modeling.roi_align_sparse import pool, sample_weights, scatter

    b, c, h, w, scale = 3, 16, 24, 36, 0.25
    rois = _edge_rois(90, b, w / scale, h / scale)
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(9))
    grad = torch.randn(90, c, *size, generator=torch.Generator().manual_seed(8))
    ref_out = tv_roi_align(x, rois, size, scale, sampling, aligned)
    ref_grad = torch.ops.torchvision._roi_align_backward(grad, rois, scale, size[0], size[1], b, c, h, w, sampling, aligned)
    pixel, weight = sample_weights(rois, scale, size, sampling, aligned, h, w)
    assert pixel.shape == weight.shape == (90 * size[0] * size[1], 4 * sampling * sampling)
    out = pool(x.contiguous(memory_format=torch.channels_last), pixel, weight, size)
    got = scatter(grad, pixel, weight, (b, c, h, w))
    assert out.shape == ref_out.shape and got.shape == ref_grad.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref_grad, rtol=1e-5, atol=1e-5)
    assert ref_grad.abs().sum() > 100 and (ref_grad == 0).any() and (ref_out == 0).any()  # on the map and beyond


@pytest.fixture
def sparse_calls(monkeypatch):
    """The number of gradients :func:`threaded_ops.roi_align` computed with the sparse product."""
    seen: list[int] = []
    real = threaded_ops.roi_align_sparse.scatter
    monkeypatch.setattr(threaded_ops.roi_align_sparse, "scatter", lambda *a: seen.append(1) or real(*a))
    return seen


def test_sparse_roi_align_gradient_is_the_derivative(two_threads, monkeypatch, sparse_calls):
    monkeypatch.setattr(threaded_ops, "MIN_SPARSE_VALUES", 0)
    x = torch.randn(2, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    rois = _edge_rois(24, 2, 12.0, 12.0).double()
    for aligned in (False, True):
        assert torch.autograd.gradcheck(lambda t: threaded_ops.roi_align(t, rois, (3, 2), 1.0, 2, aligned), (x,),
                                        eps=1e-6, atol=1e-6)
    assert sparse_calls  # the sparse product was the backward


def test_sparse_roi_align_in_training_under_bf16_channels_last(two_threads, monkeypatch, sparse_calls):
    x32 = torch.randn(2, 64, 32, 32, generator=torch.Generator().manual_seed(4))
    rois = _rois(64, size=100.0)
    outs, grads = [], []
    for sparse in (True, False):  # 64 RoIs x 64 channels x 7 x 7: the sparse products by default
        if not sparse:
            monkeypatch.setattr(threaded_ops, "MIN_SPARSE_VALUES", 1 << 40)
        x = x32.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = threaded_ops.roi_align(x, rois, (7, 7), 0.25, 2, False)
        (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        assert out.dtype == x.grad.dtype == torch.bfloat16 and len(sparse_calls) == 1
        outs.append(out.float())
        grads.append(x.grad.float())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-2, atol=1e-2)  # the same fp32 sums rounded to bf16
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-2, atol=1e-2)
    assert grads[0].abs().sum() > 10 and outs[0].abs().sum() > 10
    with torch.no_grad():  # inference: torchvision's kernel, bit for bit
        assert torch.equal(threaded_ops.roi_align(x32, rois, (7, 7), 0.25, 2, False),
                           tv_roi_align(x32, rois, (7, 7), 0.25, 2, False))
    assert len(sparse_calls) == 1


def test_sample_weights_need_a_fixed_grid():
    from maskrcnn.modeling.roi_align_sparse import sample_weights

    with pytest.raises(ValueError, match="sampling_ratio > 0"):
        sample_weights(_rois(3), 1.0, (7, 7), 0, False, 10, 10)

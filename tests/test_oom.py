"""Out-of-memory fallback of a training step (maskrcnn.engine.oom and its use in the trainer).

A fake model raises ``torch.OutOfMemoryError`` (the CUDA allocator's error type) whenever one
forward pass gets more than ``k`` images, which simulates a GPU that fits ``k`` images. Its losses
are means over images, so the gradient of a batch is well defined under splitting: the
accumulated gradient of the micro-batches must equal the full batch's gradient.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn.config import Config
from maskrcnn.engine import train
from maskrcnn.engine.oom import MicroBatchSplit, chunk_bounds, chunk_weights, is_oom, run_with_oom_fallback, split_batch
from maskrcnn.errors import MaskRCNNError

torch.set_num_threads(1)


class FakeOOM(RuntimeError):
    pass


def fake_oom(n: int) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.50 GiB (fake: {n} images per pass)")


# ============================================================================ the helper


def test_chunks_and_weights() -> None:
    assert chunk_bounds(5, None) == [(0, 5)]
    assert chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_weights(chunk_bounds(5, 2)) == [0.4, 0.4, 0.2]
    assert chunk_bounds(0, 2) == []
    assert is_oom(fake_oom(3)) and not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))


def test_step_is_split_until_it_fits_with_the_full_batch_gradient_and_remembered() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    k = 2  # passes of more than k images run out of memory
    attempts: list[int] = []

    def step(size: int | None) -> float:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for xs, ys, share in split_batch(list(x), list(y), size):
            attempts.append(len(xs))
            if len(xs) > k:
                raise fake_oom(len(xs))
            loss = F.cross_entropy(model(torch.stack(xs)), torch.stack(ys)) * share
            loss.backward()
            total += float(loss.detach())
        return total

    split, log = MicroBatchSplit(), []
    loss = run_with_oom_fallback(step, split, 7, on_split=lambda old, new, err: log.append((old, new, err)))
    got = [p.grad.clone() for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    full = F.cross_entropy(model(x), y)
    full.backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(float(full.detach()), rel=1e-5)
    # 7 -> 4 -> 2 images per pass; each reduction is reported with the allocator's message
    assert attempts[:2] == [7, 4] and attempts[2:] == [2, 2, 2, 1]
    assert [(o, n) for o, n, _ in log] == [(7, 4), (4, 2)] and "CUDA out of memory" in log[0][2]
    assert split.size == 2 and split.events == 2

    # the split is remembered: the next step starts with passes of 2, no new error
    attempts.clear()
    run_with_oom_fallback(step, split, 7, on_split=lambda *a: log.append(a))
    assert attempts == [2, 2, 2, 1] and len(log) == 2


def test_other_errors_pass_through_and_one_image_is_the_limit() -> None:
    split = MicroBatchSplit()

    def broken(size: int | None) -> None:
        raise FakeOOM("not an allocator error")

    with pytest.raises(FakeOOM):
        run_with_oom_fallback(broken, split, 4)
    assert split.size is None

    def never_fits(size: int | None) -> None:
        raise fake_oom(size or 4)

    with pytest.raises(MaskRCNNError, match="even with 1 image per forward pass.*maskrcnn plan"):
        run_with_oom_fallback(never_fits, split, 4)
    assert split.size == 1
    with pytest.raises(MaskRCNNError, match="several processes"):
        run_with_oom_fallback(never_fits, MicroBatchSplit(), 4, distributed=True)


# ============================================================================ in the trainer


class PerImageModel(nn.Module):
    """Tiny model with the real parameter layout whose five loss terms are means over images; a
    training forward pass with more than ``fits`` images raises ``torch.OutOfMemoryError``."""

    def __init__(self, fits: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Module()
        self.backbone.body = nn.Module()
        self.backbone.body.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.backbone.fpn = nn.Conv2d(4, 4, 1)
        self.rpn = nn.Module()
        self.rpn.head = nn.Conv2d(4, 5, 1)
        self.roi_heads = nn.Module()
        self.roi_heads.box = nn.Linear(4, 5)
        self.fits = fits
        self.pass_sizes: list[int] = []

    def forward(self, images, targets=None):  # noqa: ANN001, ANN201 - the model contract
        if self.training:
            self.pass_sizes.append(len(images))
            if self.fits is not None and len(images) > self.fits:
                raise fake_oom(len(images))
        x = torch.stack(images)
        f = self.backbone.fpn(F.relu(self.backbone.body.conv1(x)))
        r = self.rpn.head(f)
        fg = torch.stack([t["masks"].amax(0).float() for t in targets])
        per_image = F.binary_cross_entropy_with_logits(r[:, 0], fg, reduction="none").mean((1, 2))
        box = self.roi_heads.box(f.mean((2, 3)))
        labels = torch.stack([t["labels"][0] for t in targets])
        return {
            "loss_rpn_class": per_image.mean(),
            "loss_rpn_bbox": (r[:, 1:].mean((2, 3)) ** 2).sum(1).mean(),
            "loss_mrcnn_class": F.cross_entropy(box[:, :4], labels),
            "loss_mrcnn_bbox": (box[:, 4] ** 2).mean(),
            "loss_mrcnn_mask": (f ** 2).mean(),
        }


class Samples(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):  # noqa: ANN204
        rng = np.random.default_rng([5, i])
        masks = np.zeros((1, 12, 12), dtype=np.uint8)
        x, y = rng.integers(0, 6, size=2)
        masks[0, y:y + 5, x:x + 5] = 1
        return torch.from_numpy(rng.random((3, 12, 12), dtype=np.float32)), {
            "boxes": torch.tensor([[x, y, x + 5, y + 5]], dtype=torch.float32),
            "labels": torch.tensor([1 + i % 3]), "masks": torch.from_numpy(masks), "image_id": i, "orig_size": (12, 12)}


def _train(tmp: Path, name: str, model: nn.Module, **changes) -> tuple:  # noqa: ANN003
    cfg = Config.create(name=name, num_classes=4, images_per_gpu=4, epochs=1, learning_rate=0.05, base_batch_size=4,
                        warmup_iters=1, num_workers=0, seed=3, deterministic=True, validate_every=0, **changes)
    result = train(cfg, Samples(16), None, out_dir=tmp, run_dir=tmp / name, model=model, progress=False,
                   tensorboard=False, log_every=1, evaluate_fn=None)
    records = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    return result, records


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_survives_out_of_memory_with_the_same_weights(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              accumulation: int) -> None:
    ref_model = PerImageModel()
    ref, ref_records = _train(tmp_path, "ref", ref_model, grad_accumulation=accumulation)
    oom_model = PerImageModel(fits=1)
    got, records = _train(tmp_path, "oom", oom_model, grad_accumulation=accumulation)

    # no progress lost: same steps and images, and the same weights as the run that had memory
    assert got.global_step == ref.global_step == 4 // accumulation and not got.interrupted
    for (name, a), (_, b) in zip(ref_model.state_dict().items(), oom_model.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    train_ref = [r for r in ref_records if r["type"] == "train"]
    train_got = [r for r in records if r["type"] == "train"]
    assert [r["loss"] for r in train_got] == pytest.approx([r["loss"] for r in train_ref], rel=1e-5)

    # 4 -> 2 -> 1 images per pass during the first step, then 1 per pass for the rest of the run
    events = [r for r in records if r.get("event") == "oom_split"]
    assert [(e["previous_images_per_pass"], e["images_per_pass"]) for e in events] == [(4, 2), (2, 1)]
    assert all(e["step"] == 1 for e in events)
    assert "out of memory at step 1 (epoch 1) with 4 image(s) per forward pass" in events[0]["message"]
    assert "micro-batches of 2 image(s)" in events[0]["message"] and "same batch of 4 images" in events[0]["message"]
    assert "out of memory at step 1" in capsys.readouterr().err
    assert oom_model.pass_sizes[:2] == [4, 2] and set(oom_model.pass_sizes[2:]) == {1} and len(oom_model.pass_sizes) == 2 + 16
    assert ref_model.pass_sizes == [4] * 4

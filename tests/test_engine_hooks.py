"""User hooks through ``maskrcnn.engine.train(..., hooks=[...])`` and the one training step.

The stub model and samples of ``test_engine.py`` follow the model contract: train mode returns a
dict of weighted ``loss_*`` terms, which the step sums and reports by key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import StubSamples, make_model, read_jsonl, run_stub, tiny_config  # noqa: E402

from maskrcnn.engine import HookBase, TrainStep  # noqa: E402
from maskrcnn.structures import Batch  # noqa: E402
from maskrcnn.engine.optim import set_train_mode  # noqa: E402

torch.set_num_threads(1)


class Recorder(HookBase):
    """Records every call and the losses of every step."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.losses: list[dict[str, float]] = []
        self.steps: list[int] = []

    def before_train(self) -> None:
        self.calls.append("before_train")

    def before_epoch(self) -> None:
        self.calls.append(f"before_epoch {self.trainer.current_epoch}")

    def after_step(self) -> None:
        self.losses.append(dict(self.trainer.last_step.losses))
        self.steps.append(self.trainer.global_step)

    def after_epoch(self) -> None:
        self.calls.append(f"after_epoch {self.trainer.current_epoch} completed={self.trainer.epoch_completed}")

    def after_train(self) -> None:
        self.calls.append(f"after_train error={self.trainer.error is not None}")


class StopAt(HookBase):
    """Ends the run once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.global_step >= self.step:
            self.trainer.request_stop(f"enough after {self.step} steps")


def test_a_user_hook_sees_every_step_and_the_losses_the_run_logs(tmp_path: Path) -> None:
    recorder = Recorder()
    result = run_stub(tiny_config(epochs=2), tmp_path / "run", n=6, val=0, hooks=[recorder])
    assert result.global_step == 6 and recorder.steps == [1, 2, 3, 4, 5, 6]
    assert recorder.calls == ["before_train", "before_epoch 0", "after_epoch 0 completed=True", "before_epoch 1",
                              "after_epoch 1 completed=True", "after_train error=False"]
    keys = {"loss_rpn_class", "loss_rpn_bbox", "loss_mrcnn_class", "loss_mrcnn_bbox", "loss_mrcnn_mask", "loss"}
    assert all(set(seen) == keys for seen in recorder.losses)  # the model's keys, and their sum
    for seen in recorder.losses:
        assert seen["loss"] == pytest.approx(sum(v for k, v in seen.items() if k != "loss"), rel=1e-5)
    rows = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in rows] == recorder.steps  # log_every=1: one record per step
    for row, seen in zip(rows, recorder.losses):
        assert {k: row[k] for k in keys} == pytest.approx(seen, rel=1e-6)


def test_a_user_hook_ends_the_run_early_with_validation_and_a_checkpoint(tmp_path: Path) -> None:
    recorder = Recorder()
    result = run_stub(tiny_config(epochs=3), tmp_path / "run", n=10, val=4, hooks=[StopAt(7), recorder])
    assert result.global_step == 7 and result.stop_reason == "enough after 7 steps"
    assert not result.interrupted and not result.budget_reached and result.epochs_completed == 1
    assert recorder.calls[-2:] == ["after_epoch 1 completed=False", "after_train error=False"]
    # a stop that is not a signal validates and saves like the end of a run
    assert [h["step"] for h in result.history] == [5, 7]
    assert result.last_checkpoint == result.run_dir / "checkpoints" / "step_000007.safetensors"
    assert result.last_checkpoint.is_file() and result.best_checkpoint is not None


def test_a_failing_run_still_calls_after_train(tmp_path: Path) -> None:
    from maskrcnn.engine import NonFiniteLossError

    recorder = Recorder()
    with pytest.raises(NonFiniteLossError):
        run_stub(tiny_config(epochs=1), tmp_path / "run", model=make_model(nan_at=2), val=0, hooks=[recorder])
    assert recorder.steps == [1] and recorder.calls[-1] == "after_train error=True"


def test_the_step_accumulates_batches_into_the_gradient_of_their_union() -> None:
    samples = StubSamples(4)
    items = [samples[i] for i in range(4)]
    cfg = tiny_config()

    def run(batches: list[list[int]]) -> list[torch.Tensor]:
        model = make_model(use_rng=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        step = TrainStep(model, opt, "cpu", clip_norm=cfg.gradient_clip_norm)
        set_train_mode(model, train_bn=False)  # frozen BatchNorm: each image's loss is its own
        out = step([(Batch([items[i][0] for i in b], [items[i][1] for i in b]), 1.0) for b in batches])
        assert out.images == 4 and out.lr == 0.0 and set(out.losses) >= {"loss", "loss_mrcnn_mask"}
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, halves = run([[0, 1, 2, 3]]), run([[0, 1], [2, 3]])
    # losses that are means over images: the mean of two half-batch gradients is the whole batch's
    assert len(whole) == len(halves) > 10
    for a, b in zip(whole, halves):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

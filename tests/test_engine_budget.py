"""The optimizer choice (SGD / AdamW) and the wall-clock training budget (``max_train_minutes``).

The budget tests run the trainer on the stub model of ``test_engine.py`` under a fake clock that
advances exactly one second per forward pass, so step counts and learning rates are exact.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from maskrcnn.config import ConfigError
from maskrcnn.engine.budget import TimeBudget
from maskrcnn.engine.checkpoint import load_optimizer_state, optimizer_state, read_safetensors_metadata
from maskrcnn.engine.optim import build_optimizer, select_trainable
from maskrcnn.engine.trainer import Trainer
from test_engine import StubModel, StubSamples, make_model, read_jsonl, run_stub, tiny_config


class FakeClock:
    """``time.perf_counter`` replacement; :class:`TickingModel` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TickingModel(StubModel):
    """The stub model; every training forward pass takes one second of the fake clock."""

    def __init__(self, clock: FakeClock, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.clock = clock

    def forward(self, images, targets=None):  # noqa: ANN001, ANN201
        if self.training:
            self.clock.now += 1.0
        return super().forward(images, targets)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def ticking_model(clock: FakeClock) -> TickingModel:
    torch.manual_seed(0)
    return TickingModel(clock)


# ============================================================================ optimizer


def test_adamw_groups_rates_and_state_round_trip() -> None:
    cfg = tiny_config(optimizer="adamw", learning_rate=1e-3, base_batch_size=1, weight_decay=0.05)
    model = make_model()
    select_trainable(model, cfg)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(g["lr"] == pytest.approx(2e-3) for g in opt.param_groups)  # 1e-3 per image x 2 images
    assert "roi_heads.mask_norm.weight" in no_decay["names"] and "backbone.body.conv1.weight" in decay["names"]

    # one step equals torch's (fused) AdamW on the same groups
    ref_model = make_model()
    select_trainable(ref_model, cfg)
    ref = torch.optim.AdamW([{"params": [p for n, p in ref_model.named_parameters() if n in decay["names"]], "weight_decay": 0.05},
                             {"params": [p for n, p in ref_model.named_parameters() if n in no_decay["names"]], "weight_decay": 0.0}],
                            lr=2e-3, betas=(0.9, 0.999), fused=True)
    sample = StubSamples(2)
    images, targets = [sample[0][0], sample[1][0]], [sample[0][1], sample[1][1]]
    for m, o in ((model, opt), (ref_model, ref)):
        torch.manual_seed(5)
        m.train()
        sum(m(images, targets).values()).backward()
        o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n

    tensors, meta = optimizer_state(opt)
    assert any(k.endswith("/exp_avg_sq") for k in tensors)
    opt2 = build_optimizer(model, cfg)
    load_optimizer_state(opt2, tensors, json.loads(json.dumps(meta)))  # JSON, no pickle
    p0 = next(p for p in model.parameters() if p.requires_grad)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state[p0][key], opt.state[p0][key])
    assert tuple(opt2.param_groups[0]["betas"]) == (0.9, 0.999)


def test_optimizer_and_budget_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        tiny_config(optimizer="adam")
    with pytest.raises(ConfigError, match="max_train_minutes"):
        tiny_config(max_train_minutes=0)


# ============================================================================ budget


def test_time_budget_counts_steps_that_end_within_half_a_step(clock: FakeClock) -> None:
    b = TimeBudget(10.5)
    b.start()
    assert b.steps_left() == 1 and not b.exhausted()
    for k in range(1, 11):
        clock.now += 1.0
        b.step_done(1.0)
        assert b.steps_left() == 10 - k, k  # step 10 ends at 10 s, step 11 would end 0.5 s past the budget
    assert b.exhausted()
    # the median of the last 20 steps: one slow step does not change the estimate
    b2 = TimeBudget(100.0)
    b2.start()
    for s in (2.0, 2.0, 30.0, 2.0):
        clock.now += s
        b2.step_done(s)
    assert b2.step_seconds() == 2.0 and b2.steps_left() == math.ceil((100 - 36) / 2 + 0.5) - 1
    # earlier runs' time counts
    assert TimeBudget(60.0, spent=60.0).exhausted()


def test_trainer_stops_at_the_budget_with_a_fitted_cosine_schedule(tmp_path: Path, clock: FakeClock) -> None:
    cfg = tiny_config(max_train_minutes=10.5 / 60, epochs=5, lr_schedule="cosine", warmup_iters=0,
                      learning_rate=0.02, base_batch_size=2)
    result = run_stub(cfg, tmp_path / "run", model=ticking_model(clock), n=40, val=4)  # 20 steps per epoch
    assert result.global_step == 10 and result.budget_reached and not result.interrupted
    assert result.epochs_completed == 0
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    lrs = [r["lr"] for r in records if r.get("type") == "train"]
    expected = [0.02 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-9)  # the schedule ends with the budget, not after 5 epochs
    events = [r for r in records if r.get("event") == "time_budget"]
    assert len(events) == 1 and events[0]["step"] == 10
    val = [r for r in records if r.get("type") == "val"]
    assert len(val) == 1 and val[0]["step"] == 10  # validated at the end although the epoch was not over
    ckpt = tmp_path / "run" / "checkpoints" / "step_000010.safetensors"
    assert ckpt.is_file() and result.last_checkpoint == ckpt
    state = json.loads(read_safetensors_metadata(ckpt.with_name("step_000010.state.safetensors"))["state"])
    # 10 steps + the final validation (2 forward passes of the ticking model): all time counts
    assert state["budget"] == {"spent_s": pytest.approx(12.0), "step_s": 1.0}


def test_resumed_run_gets_only_the_time_that_is_left(tmp_path: Path, clock: FakeClock) -> None:
    cfg = tiny_config(max_train_minutes=10.5 / 60, epochs=5, lr_schedule="cosine", warmup_iters=0)
    run_dir = tmp_path / "run"
    first = run_stub(cfg, run_dir, model=ticking_model(clock), n=40, val=0)
    assert first.global_step == 10
    # the same budget: nothing left to train
    again = Trainer(cfg, StubSamples(40), None, out_dir=tmp_path, resume=run_dir, model=ticking_model(clock),
                    progress=False, tensorboard=False, evaluate_fn=None).fit()
    assert again.global_step == 10 and again.budget_reached
    # a larger budget: 15.5 s in all, 10 s spent -> 5 more steps
    more = Trainer(cfg.replace(max_train_minutes=15.5 / 60), StubSamples(40), None, out_dir=tmp_path, resume=run_dir,
                   model=ticking_model(clock), progress=False, tensorboard=False, evaluate_fn=None).fit()
    assert more.global_step == 15 and more.budget_reached


def test_budget_longer_than_the_epochs_finishes_the_epochs(tmp_path: Path, clock: FakeClock) -> None:
    cfg = tiny_config(max_train_minutes=1000 / 60, epochs=2)
    result = run_stub(cfg, tmp_path / "run", model=ticking_model(clock), n=10, val=0)
    assert result.global_step == 10 and result.epochs_completed == 2 and not result.budget_reached
    assert (tmp_path / "run" / "checkpoints" / "epoch_0002.safetensors").is_file()

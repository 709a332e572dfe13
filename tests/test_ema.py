"""The moving average of the weights (``ema_decay``): its arithmetic, what the trainer validates and
saves, exact resume, and the config and TF pipeline fields that set it."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import StubSamples, make_model, tiny_config  # noqa: E402

from maskrcnn.config import Config, ConfigError  # noqa: E402
from maskrcnn.engine import train  # noqa: E402
from maskrcnn.engine.checkpoint import TRAIN_MODEL_PREFIX, CheckpointManager, load_safetensors  # noqa: E402
from maskrcnn.engine.ema import ModelEMA, ema_decay_at  # noqa: E402
from maskrcnn.engine.hooks import HookBase  # noqa: E402
from maskrcnn.engine.state import training_weights  # noqa: E402

torch.set_num_threads(1)


# ============================================================================ arithmetic


def test_decay_ramps_up_to_the_configured_value() -> None:
    assert ema_decay_at(0.999, 2000, 1) == pytest.approx(0.999 * (1 - math.exp(-1 / 2000)), rel=1e-12)
    assert ema_decay_at(0.999, 2000, 1) < 0.001  # the first update nearly copies the weights
    assert ema_decay_at(0.999, 10, 100) == pytest.approx(0.999 * (1 - math.exp(-10)), rel=1e-12)
    assert ema_decay_at(0.9, 0, 1) == 0.9  # no ramp


def test_update_averages_float_tensors_and_copies_integer_buffers() -> None:
    net = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = ModelEMA(net, decay=0.5, warmup_steps=0)
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, -2.0]]))
        net[1].running_mean.fill_(4.0)
    net[1].num_batches_tracked.fill_(7)
    assert ema.update(net) == 0.5
    assert torch.equal(ema.model[0].weight, torch.tensor([[2.0, 0.0]]))  # 0.5 * old + 0.5 * new
    assert torch.equal(ema.model[1].running_mean, torch.tensor([2.0]))  # BatchNorm statistics averaged too
    assert int(ema.model[1].num_batches_tracked) == 7  # integer buffers copied
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 4.0]]))
    ema.update(net)
    assert torch.equal(ema.model[0].weight, torch.tensor([[1.0, 2.0]]))
    assert ema.updates == 2 and ema.state() == {"updates": 2, "decay": 0.5, "warmup_steps": 0}
    assert torch.equal(net[0].weight, torch.tensor([[0.0, 4.0]]))  # the trained model is untouched


# ============================================================================ trainer


class RecordWeights(HookBase):
    """The raw weights after every optimizer step (user hooks run after the EMA update)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def after_step(self) -> None:
        self.steps.append({k: v.detach().clone() for k, v in self.trainer.module.state_dict().items()})


def _expected_average(steps: list[dict[str, torch.Tensor]], initial: dict[str, torch.Tensor], decay: float,
                      warmup: int) -> dict[str, torch.Tensor]:
    avg = {k: v.clone().double() for k, v in initial.items() if v.is_floating_point()}
    for n, sd in enumerate(steps, start=1):
        d = ema_decay_at(decay, warmup, n)
        for k in avg:
            avg[k] = d * avg[k] + (1 - d) * sd[k].double()
    return avg


def test_checkpoints_validation_and_the_trained_model_hold_the_average(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2, ema_decay=0.8, ema_warmup_steps=3)
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    rec = RecordWeights()
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(module: nn.Module, _val: object) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in module.state_dict().items()})
        assert not module.training
        return {"mask_ap": float(len(seen))}  # every validation is the best so far

    result = train(cfg, StubSamples(8), StubSamples(4, seed=9), out_dir=tmp_path, run_dir=tmp_path / "run",
                   model=model, progress=False, tensorboard=False, log_every=1, hooks=[rec], evaluate_fn=evaluate)
    assert result.global_step == 8 and len(rec.steps) == 8
    expected = _expected_average(rec.steps, initial, 0.8, 3)
    weights, tensors, state = CheckpointManager(result.run_dir).load()
    raw_last = rec.steps[-1]
    for k, v in expected.items():
        assert torch.allclose(weights[k].double(), v, rtol=1e-5, atol=1e-6), k  # the weights file: the average
        assert torch.equal(tensors[TRAIN_MODEL_PREFIX + k], raw_last[k]), k  # the state file: the raw weights
        assert torch.equal(model.state_dict()[k], weights[k]), k  # the returned model: the average
    assert not torch.equal(weights["rpn.head.weight"], raw_last["rpn.head.weight"])
    assert torch.equal(training_weights(weights, tensors)["rpn.head.weight"], raw_last["rpn.head.weight"])
    assert state["ema"] == {"updates": 8, "decay": 0.8, "warmup_steps": 3}
    # validation after each epoch saw the average of that moment, and best.safetensors holds the last one
    after_epoch1 = _expected_average(rec.steps[:4], initial, 0.8, 3)
    assert len(seen) == 2 and torch.allclose(seen[0]["rpn.head.weight"].double(), after_epoch1["rpn.head.weight"], atol=1e-6)
    best = load_safetensors(result.run_dir / "best.safetensors")
    assert torch.equal(best["rpn.head.weight"], weights["rpn.head.weight"])


def _fit(cfg: Config, out: Path, model: nn.Module, **kw):  # noqa: ANN202
    return train(cfg, StubSamples(14), None, out_dir=out, model=model, progress=False, tensorboard=False,
                 evaluate_fn=None, log_every=1, **kw)


def test_interrupted_run_resumes_to_the_same_average(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2, ema_decay=0.9, ema_warmup_steps=2)
    full_model = make_model()
    full = _fit(cfg, tmp_path / "a", full_model, run_dir=tmp_path / "a" / "run")
    part = _fit(cfg, tmp_path / "b", make_model(sigterm_at=5))
    assert part.interrupted and part.global_step == 5
    resumed_model = make_model(seed=123)
    resumed = _fit(cfg, tmp_path / "b", resumed_model, resume=part.run_dir)
    assert resumed.global_step == full.global_step == 14
    a, ta, sa = CheckpointManager(full.run_dir).load()
    b, tb, sb = CheckpointManager(resumed.run_dir).load()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the average
        assert torch.equal(ta[TRAIN_MODEL_PREFIX + k], tb[TRAIN_MODEL_PREFIX + k]), k  # the raw weights
    assert sa["ema"]["updates"] == sb["ema"]["updates"] == 14
    assert signal.getsignal(signal.SIGTERM) is not None


def test_turning_ema_on_or_off_when_resuming(tmp_path: Path) -> None:
    run = tmp_path / "run"
    plain = _fit(tiny_config(epochs=1), tmp_path, make_model(), run_dir=run)
    weights, tensors, _ = CheckpointManager(plain.run_dir).load()
    assert not any(k.startswith(TRAIN_MODEL_PREFIX) for k in tensors)
    # on: the average starts from the checkpoint's weights, and the model continues from them
    rec = RecordWeights()
    on = _fit(tiny_config(epochs=2, ema_decay=0.5, ema_warmup_steps=0), tmp_path, make_model(seed=5), resume=run,
              hooks=[rec])
    w2, t2, s2 = CheckpointManager(on.run_dir).load()
    expected = _expected_average(rec.steps, weights, 0.5, 0)
    assert s2["ema"]["updates"] == len(rec.steps) == 7
    assert torch.allclose(w2["rpn.head.weight"].double(), expected["rpn.head.weight"], atol=1e-6)
    # off again: training continues from the raw weights, not from their average
    rec_off = RecordWeights()
    model = make_model(seed=6)
    starts: list[torch.Tensor] = []

    class First(HookBase):
        def before_train(self) -> None:
            starts.append(self.trainer.module.state_dict()["rpn.head.weight"].clone())

    _fit(tiny_config(epochs=3), tmp_path, model, resume=run, hooks=[rec_off, First()])
    assert torch.equal(starts[0], t2[TRAIN_MODEL_PREFIX + "rpn.head.weight"])
    assert not torch.equal(starts[0], w2["rpn.head.weight"])


# ============================================================================ config and mappings


@pytest.mark.parametrize("changes, fragments", [
    ({"ema_decay": 1.0}, ["ema_decay=1.0", "(0, 1)", "0.999"]),
    ({"ema_decay": 0}, ["ema_decay=0", "(0, 1)"]),
    ({"ema_warmup_steps": 500}, ["ema_warmup_steps", "ema_decay"]),
])
def test_bad_ema_fields_name_the_field(changes: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Config.create(**changes)
    msg = str(info.value)
    assert "\n" not in msg.strip()
    for f in fragments:
        assert f in msg, msg

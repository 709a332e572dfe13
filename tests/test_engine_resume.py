"""Exact resume: a run stopped by SIGTERM mid-epoch and resumed ends with the uninterrupted run's weights."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import StubSamples, make_model, read_jsonl, tiny_config  # noqa: E402

from maskrcnn.engine import train  # noqa: E402
from maskrcnn.engine.checkpoint import CheckpointManager  # noqa: E402

torch.set_num_threads(1)


def _fit(cfg, data, out_dir: Path, model, resume=None, run_dir=None):  # noqa: ANN001, ANN201
    train_ds, val_ds = data
    return train(cfg, train_ds, val_ds, out_dir=out_dir, resume=resume, run_dir=run_dir, model=model,
                 progress=False, tensorboard=False, evaluate_fn=None, log_every=1)


def _stub_data():  # noqa: ANN202
    return StubSamples(14), StubSamples(4, seed=9)


def _shapes_data():  # noqa: ANN202
    from maskrcnn.data.synthetic import ShapesDataset

    return ShapesDataset(14, 96, 96, seed=1), ShapesDataset(4, 96, 96, seed=2)


@pytest.mark.parametrize("kind", ["stub", "shapes"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path, kind: str) -> None:
    if kind == "stub":
        # repeat-factor sampling (stochastic rounding per epoch) and gradient accumulation as well
        cfg = tiny_config(epochs=3, grad_accumulation=2, repeat_factor_threshold=0.9)
        data = _stub_data
    else:
        # the real data pipeline with random flips, through the Matterport Dataset API
        cfg = tiny_config(epochs=2, image_resize_mode="none", image_min_dim=64, aug_hflip=0.5, aug_vflip=0.5)
        data = _shapes_data

    full_model = make_model()
    full = _fit(cfg, data(), tmp_path / "a", full_model, run_dir=tmp_path / "a" / "run")
    assert not full.interrupted

    handler = signal.getsignal(signal.SIGTERM)
    part_model = make_model(sigterm_at=5)  # SIGTERM arrives during the 5th forward pass
    part = _fit(cfg, data(), tmp_path / "b", part_model)
    assert signal.getsignal(signal.SIGTERM) == handler  # handlers restored
    assert part.interrupted and part.epochs_completed == 0
    step = 3 if kind == "stub" else 5  # the step in flight completes: 3 steps of 2 batches / 5 steps of 1
    assert part.global_step == step and part.last_checkpoint.name == f"step_{step:06d}.safetensors"
    mgr = CheckpointManager(part.run_dir)
    _, _, state = mgr.load()
    assert (state["epoch"], state["batches_done"], state["global_step"]) == (0, 6 if kind == "stub" else 5, step)
    events = [r for r in read_jsonl(part.run_dir / "metrics.jsonl") if r.get("event") == "interrupted"]
    assert len(events) == 1 and "SIGTERM" in events[0]["message"] and str(part.run_dir) in events[0]["message"]

    # a fresh model with other initial weights: everything must come from the checkpoint
    resumed_model = make_model(seed=123)
    resumed = _fit(cfg, data(), tmp_path / "b", resumed_model, resume="auto" if kind == "shapes" else part.run_dir)
    assert resumed.run_dir == part.run_dir and not resumed.interrupted
    assert resumed.global_step == full.global_step and resumed.epochs_completed == cfg.epochs

    full_sd, resumed_sd = full_model.state_dict(), resumed_model.state_dict()
    assert full_sd.keys() == resumed_sd.keys()
    for k in full_sd:
        assert torch.equal(full_sd[k], resumed_sd[k]), k
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    # the training curve continues where it stopped: same per-step losses as the uninterrupted run
    steps = lambda run: {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"}  # noqa: E731
    assert steps(resumed.run_dir) == steps(full.run_dir)

"""``maskrcnn train --resume RUN_DIR`` / ``--resume auto --out runs/`` with no other flag, and ``--minutes``.

A run records its data paths (absolute) in ``run.yaml`` and its config in ``config.yaml``, so a
resume from any working directory needs nothing else and continues exactly. With a time budget
and ``epochs`` not chosen by the user the budget decides the length (fake clock, no waiting).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import run_cli  # noqa: E402
from test_engine import read_jsonl, run_stub, tiny_config  # noqa: E402
from test_engine_budget import FakeClock, ticking_model  # noqa: E402

from maskrcnn.commands.train import MAX_FILL_EPOCHS, add_parser, epochs_set_explicitly, fit_epochs_to_budget  # noqa: E402
from maskrcnn.config import Config  # noqa: E402
from maskrcnn.engine.checkpoint import CheckpointManager  # noqa: E402

torch.set_num_threads(1)

REAL = dict(num_classes=2, backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32,
            mask_head_channels=8, mask_head_convs=1, image_resize_mode="none", image_min_dim=64,
            rpn_anchor_scales=[8, 16, 32, 64, 128], train_rois_per_image=16, pre_nms_limit_training=200,
            post_nms_rois_training=50, pre_nms_limit_inference=100, post_nms_rois_inference=20,
            detection_max_instances=10, images_per_gpu=2, epochs=2, learning_rate=0.01, base_batch_size=2,
            warmup_iters=1, num_workers=0, deterministic=True, seed=1, aug_hflip=0.5)


def _mask_folder(root: Path, n: int = 4) -> None:
    """``n`` images in the instance-masks layout (one class), from the synthetic shapes."""
    from PIL import Image

    from maskrcnn.data.synthetic import ShapesDataset

    ds = ShapesDataset(n, 64, 64, seed=4)
    for i in range(n):
        d = root / f"im{i}"
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        Image.fromarray(ds.load_image(i)).save(d / "images" / f"im{i}.png")
        masks, _ = ds.load_mask(i)
        for k in range(masks.shape[2]):
            Image.fromarray(masks[:, :, k].astype(np.uint8) * 255).save(d / "masks" / f"{k}.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-epoch run started from ``proj/`` with relative paths: ``--data data``, ``--out runs``."""
    import os

    proj = tmp_path_factory.mktemp("proj")
    _mask_folder(proj / "data")
    _mask_folder(proj / "val", n=2)
    Config.create(name="cells", **REAL).to_yaml(proj / "cells.yaml")
    old = os.getcwd()
    os.chdir(proj)
    try:
        result = run_cli("train", "--config", "cells.yaml", "--data", "data", "--val-data", "val", "--out", "runs",
                         "--no-progress")
    finally:
        os.chdir(old)
    assert result.code == 0, result.err
    (run,) = (proj / "runs").iterdir()
    return {"proj": proj, "run": run, "final": run / "checkpoints" / "epoch_0002.safetensors"}


def _as_if_killed_in_epoch_2(run: Path) -> dict[str, torch.Tensor]:
    """Leave the run as a kill during epoch 2 would (epoch 1's pair is the last); epoch 2's weights."""
    final = load_file(run / "checkpoints" / "epoch_0002.safetensors")
    for name in ("epoch_0002.safetensors", "epoch_0002.state.safetensors"):
        (run / "checkpoints" / name).unlink()
    (run / "checkpoints" / "last").write_text("epoch_0001\n")
    return final


def _printed_run(out: str) -> Path:
    return Path(next(line for line in out.splitlines() if line.startswith("run: "))[5:]).resolve()


def test_the_run_records_its_inputs_as_absolute_paths(project: dict[str, Path]) -> None:
    import yaml

    inputs = yaml.safe_load((project["run"] / "run.yaml").read_text())
    assert inputs == {"data": str(project["proj"] / "data"), "val_data": str(project["proj"] / "val"),
                      "format": None, "weights": None}


@pytest.mark.parametrize("how", ["RUN_DIR", "auto"])
def test_resume_needs_no_other_flag_and_continues_exactly(how: str, project: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(project["proj"], proj)
    run = proj / "runs" / project["run"].name
    final = _as_if_killed_in_epoch_2(run)
    # the recorded absolute data paths point at the module's project; a resume works from anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if how == "RUN_DIR":
        monkeypatch.chdir(elsewhere)
        result = run_cli("train", "--resume", run, "--no-progress")
    else:
        monkeypatch.chdir(proj)
        result = run_cli("train", "--resume", "auto", "--out", "runs/", "--no-progress")
    assert result.code == 0, result.err
    assert _printed_run(result.out) == run.resolve()
    resumed = load_file(run / "checkpoints" / "epoch_0002.safetensors")
    assert resumed.keys() == final.keys()
    for k in final:
        assert torch.equal(resumed[k], final[k]), k
    assert "resumed at epoch 2" in result.err
    val = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 2]  # the validation set came from run.yaml too


def test_resume_auto_picks_the_latest_run_of_the_configs_name(project: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(project["proj"], proj)
    run = proj / "runs" / project["run"].name
    other = proj / "runs" / "other_20990101-000000"
    shutil.copytree(run, other)  # a run of another name, written later
    (other / "checkpoints" / "last").touch()
    monkeypatch.chdir(proj)
    # without --config: the latest run of any name
    args = argparse.Namespace(resume="auto", out="runs", config=None, overrides=[], minutes=None, data=None)
    from maskrcnn.commands.train import _resume_dir

    assert _resume_dir(args) == Path("runs") / other.name
    # with --config: the latest run of its name; --config's fields do not replace the run's config
    _as_if_killed_in_epoch_2(run)
    Config.create(name="cells", **{**REAL, "learning_rate": 0.5}).to_yaml(proj / "changed.yaml")
    result = run_cli("train", "--resume", "auto", "--config", "changed.yaml", "--out", "runs", "--data", "data",
                     "--weights", "coco", "--no-progress")
    assert result.code == 0, result.err
    assert _printed_run(result.out) == run.resolve()
    assert "differs from the run's config.yaml in learning_rate" in result.err
    assert "--data data: overrides the run's data" in result.err  # a relative path given again: noted
    assert "--weights coco: ignored with --resume" in result.err
    assert Config.from_yaml(run / "config.yaml").learning_rate == 0.01
    assert CheckpointManager(run).last() == "epoch_0002"


# ============================================================================ --minutes


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_epochs_are_explicit_only_when_the_user_set_them(tmp_path: Path) -> None:
    assert not epochs_set_explicitly(_args("--config", "nuclei", "--minutes", "30"))  # a preset's default length
    from maskrcnn.configs import preset_path

    assert not epochs_set_explicitly(_args("--config", str(preset_path("nuclei"))))
    assert epochs_set_explicitly(_args("--config", "nuclei", "--set", "epochs=4"))
    (tmp_path / "mine.yaml").write_text("name: mine\nepochs: 5\n")
    (tmp_path / "short.yaml").write_text("name: short\nlearning_rate: 0.01\n")
    assert epochs_set_explicitly(_args("--config", str(tmp_path / "mine.yaml")))
    assert not epochs_set_explicitly(_args("--config", str(tmp_path / "short.yaml")))


def test_the_budget_fills_unless_epochs_were_chosen_and_the_message_says_which() -> None:
    cfg = Config.from_yaml("nuclei").replace(max_train_minutes=30.0)
    assert cfg.epochs == 10
    filled, message = fit_epochs_to_budget(cfg, explicit=False, num_images=670)
    steps = math.ceil(670 / 2)
    assert filled.epochs == math.ceil(30 * 60 / (steps * 0.01)) and filled.epochs > 10
    assert "length: the time budget of 30 min" in message and "epochs not set" in message
    kept, message = fit_epochs_to_budget(cfg, explicit=True, num_images=670)
    assert kept.epochs == 10 and "10 epochs or 30 min, whichever ends first" in message
    assert fit_epochs_to_budget(cfg.replace(max_train_minutes=None), explicit=False, num_images=670) == (
        cfg.replace(max_train_minutes=None), None)
    tiny, _ = fit_epochs_to_budget(cfg.replace(max_train_minutes=600.0), explicit=False, num_images=2)
    assert tiny.epochs == MAX_FILL_EPOCHS


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def test_a_filled_budget_trains_past_the_configs_epochs_and_resumes_exactly(tmp_path: Path, clock: FakeClock) -> None:
    # 10 images, 2 per step: 5 steps (5 s of the fake clock) per epoch; 17.5 s budget
    cfg = tiny_config(epochs=2, max_train_minutes=17.5 / 60, lr_schedule="cosine", warmup_iters=0)
    capped = run_stub(cfg, tmp_path / "capped", model=ticking_model(clock), val=0)
    assert capped.global_step == 10 and not capped.budget_reached  # epochs=2 ends the run first
    filled_cfg, _ = fit_epochs_to_budget(cfg, explicit=False, num_images=10)
    filled = run_stub(filled_cfg, tmp_path / "filled", model=ticking_model(clock), val=0)
    assert filled.global_step == 17 and filled.budget_reached  # the budget decides: 17 steps of 1 s
    assert Config.from_yaml(tmp_path / "filled" / "config.yaml").epochs == filled_cfg.epochs  # kept for resume
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "filled" / "metrics.jsonl") if r.get("type") == "train"]
    assert lrs[-1] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 16 / 17)), rel=1e-9)  # cosine fitted to 17


def test_cli_says_which_limit_applies_at_start(tmp_path: Path) -> None:
    Config.create(name="m", **{**REAL, "num_classes": 4}).to_yaml(tmp_path / "m.yaml")
    (tmp_path / "noepochs.yaml").write_text("\n".join(
        line for line in (tmp_path / "m.yaml").read_text().splitlines() if not line.startswith("epochs:")))
    result = run_cli("train", "--config", tmp_path / "noepochs.yaml", "--data", "shapes:2", "--minutes", "0.0005",
                     "--out", tmp_path / "runs", "--no-progress")
    assert result.code == 0, result.err
    assert "length: the time budget of 0.0005 min (epochs not set" in result.err
    (run,) = (tmp_path / "runs").iterdir()
    assert Config.from_yaml(run / "config.yaml").epochs > 2
    result = run_cli("train", "--config", tmp_path / "m.yaml", "--data", "shapes:2", "--minutes", "0.0005",
                     "--out", tmp_path / "runs2", "--no-progress")
    assert result.code == 0, result.err
    assert "length: 2 epochs or 0.0005 min, whichever ends first" in result.err

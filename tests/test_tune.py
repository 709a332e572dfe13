"""``maskrcnn tune``: a 2-trial search on synthetic shapes with budgets of seconds writes a valid best
config, a table and the study's plots and resumes from its database; the pruning hook, the samplers,
the space and the plots' data."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from maskrcnn import Config  # noqa: E402
from maskrcnn.cli import main  # noqa: E402
from maskrcnn.tuning import ReportToTrial, default_space, read_space  # noqa: E402
from maskrcnn.tuning.space import decode, encode, grid_of  # noqa: E402
from maskrcnn.tuning.study import base_values, make_pruner, trial_values  # noqa: E402

BASE = dict(name="tiny", num_classes=4, backbone="resnet18", backbone_width=8, fpn_channels=16, mask_head_channels=8,
            mask_head_convs=1, box_head_dim=32, image_min_dim=64, image_max_dim=64, rpn_anchor_scales=[8, 16, 32, 64, 128],
            rpn_train_anchors_per_image=32, pre_nms_limit_training=200, post_nms_rois_training=50,
            pre_nms_limit_inference=100, post_nms_rois_inference=50, train_rois_per_image=16, mask_pool_size=7,
            detection_max_instances=10, optimizer="adamw", learning_rate=0.003, base_batch_size=2, images_per_gpu=2,
            warmup_iters=2, num_workers=0, train_bn=True, checkpoint_keep=1)


def test_two_trial_tune_on_shapes_writes_a_valid_config_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {low: 0.001, high: 0.01, log: true}\nmask_loss: [bce, bce+dice]\n"
                     "train_rois_per_image: [16, 32]\nweight_decay: null\nrpn_anchor_scales: null\naug_hflip: null\n"
                     "aug_brightness: null\naug_contrast: null\naug_scale_jitter: null\n")
    out = tmp_path / "tune"
    argv = ["tune", "--config", str(cfg), "--data", "shapes:6", "--val-data", "shapes:2", "--trials", "2",
            "--minutes-per-trial", "0.04", "--sampler", "random", "--space", str(space), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr()

    best = Config.from_yaml(out / "best.yaml")
    assert 0.001 <= best.learning_rate <= 0.01
    assert best.mask_loss in ("bce", "bce+dice") and best.train_rois_per_image in (16, 32)
    # everything not searched is the base config's, including its name and length
    assert (best.name, best.backbone_width, best.weight_decay, best.max_train_minutes) == ("tiny", 8, 1e-4, None)

    rows = [line for line in (out / "trials.md").read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 and sum("(best)" in r for r in rows) == 1
    assert "learning_rate" in printed.out and "best: trial" in printed.out
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{(out / 'study.db').resolve()}")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2
    # trial 0 is the base config (train_rois_per_image 16, bce, lr 0.003 lie in the space), trial 1 a sample
    assert finished[0].params == {"learning_rate": 0.003, "mask_loss": "bce", "train_rois_per_image": 16}
    assert finished[0].user_attrs["base"] is True and "base" not in finished[1].user_attrs
    assert finished[1].params["learning_rate"] != 0.003
    assert rows[0].startswith("| 0 (base)") and not rows[1].startswith("| 1 (base)")
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    assert complete and all(0 <= t.value <= 1 for t in complete)
    assert max(t.value for t in complete) == pytest.approx(float(rows[[i for i, r in enumerate(rows) if "(best)" in r][0]].split("|")[3]), abs=1e-4)
    assert all((out / "trials" / f"trial_{t.number:04d}" / "config.yaml").is_file() for t in finished)
    for name in ("history.png", "slices.png"):  # the study's plots beside the table, named in the output
        assert _png_size(out / name)[0] >= 400 and str(out / name) in printed.out

    # the same command again: the study has its 2 trials, nothing runs, the outputs stay
    assert main(argv) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{(out / 'study.db').resolve()}").trials) == 2
    assert Config.from_yaml(out / "best.yaml") == best


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_study_plots_draw_history_slices_and_importances(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from maskrcnn.tuning.plots import study_series, write_study_plots
    from maskrcnn.tuning.space import Param

    space = [Param("learning_rate", "float", 1e-4, 1e-2, log=True), Param("mask_loss", "choice", choices=("bce", "dice"))]
    dists = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "mask_loss": CategoricalDistribution(["bce", "dice"])}
    study = optuna.create_study(direction="maximize")
    made = [({"learning_rate": 1e-3, "mask_loss": "bce"}, 0.30, TrialState.COMPLETE, {}),
            ({"learning_rate": 3e-3, "mask_loss": "dice"}, None, TrialState.PRUNED, {1: 0.05, 2: 0.10}),
            ({"learning_rate": 5e-3, "mask_loss": "dice"}, 0.20, TrialState.COMPLETE, {}),
            ({"learning_rate": 2e-4, "mask_loss": "bce"}, 0.45, TrialState.COMPLETE, {}),
            ({"learning_rate": 1e-2, "mask_loss": "bce"}, None, TrialState.FAIL, {})]
    for params, value, state, inter in made:
        study.add_trial(create_trial(params=params, distributions=dists, value=value, state=state, intermediate_values=inter))
    values = [dict(p) for p, *_ in made]

    series = study_series(study.get_trials(), space, values)
    # finished trials only (the failed one is not drawn); a pruned one at its last reported AP
    assert series.history == [(0, 0.30, "complete"), (1, 0.10, "pruned"), (2, 0.20, "complete"), (3, 0.45, "complete")]
    assert series.best == [0.30, 0.30, 0.30, 0.45]  # best complete AP so far
    assert series.slices == {"learning_rate": [(1e-3, 0.30), (5e-3, 0.20), (2e-4, 0.45)],
                             "mask_loss": [("bce", 0.30), ("dice", 0.20), ("bce", 0.45)]}

    written = write_study_plots(study, space, values, tmp_path)
    assert [p.name for p in written] == ["history.png", "slices.png", "importances.png"]
    assert _png_size(tmp_path / "history.png") == (640, 400)
    assert _png_size(tmp_path / "slices.png") == (800, 320)  # one panel per field, 2 columns
    assert _png_size(tmp_path / "importances.png")[0] == 640

    # one complete trial: no importances, the other two plots still
    lone = optuna.create_study(direction="maximize")
    lone.add_trial(create_trial(params=values[0], distributions=dists, value=0.3))
    assert [p.name for p in write_study_plots(lone, space, values[:1], tmp_path / "lone")] == ["history.png", "slices.png"]


class _Trial:
    def __init__(self, prune_after: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_after


def test_pruner_spares_the_first_validation_and_prunes_from_the_second() -> None:
    base = Config(**BASE, validate_every=5)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(base, trials=10))
    for value in (0.40, 0.45, 0.50):  # three finished trials (the startup trials) reporting at epochs 5 and 10
        trial = study.ask()
        trial.report(value, step=5)
        trial.report(value + 0.05, step=10)
        study.tell(trial, value + 0.05)
    low = study.ask()
    low.report(0.10, step=5)
    assert not low.should_prune()  # far below the median (0.45) at epoch 5, but the first validation never prunes
    low.report(0.20, step=10)
    assert low.should_prune()  # below the median (0.50) at epoch 10
    good = study.ask()
    good.report(0.10, step=5)
    good.report(0.52, step=10)
    assert not good.should_prune()


def test_report_hook_reports_each_validation_and_stops_a_pruned_run() -> None:
    stops: list[tuple[str, bool]] = []
    trainer = SimpleNamespace(history=[], request_stop=lambda reason, validate=True: stops.append((reason, validate)))
    hook = ReportToTrial(_Trial(prune_after=2))
    hook.trainer = trainer  # type: ignore[assignment]
    hook.after_epoch()  # no validation yet: nothing reported, no decision
    trainer.history += [{"type": "train", "epoch": 1}, {"type": "val", "epoch": 1, "mask_ap": 0.25, "loss": 1.0}]
    hook.after_epoch()
    assert hook.trial.reports == [(0.25, 1)] and not stops and not hook.pruned
    trainer.history.append({"type": "val", "epoch": 2, "mask_ap": float("nan"), "loss": 1.0})  # failed evaluation: not reported
    trainer.history.append({"type": "val", "epoch": 3, "mask_ap": 0.5, "loss": 1.0})
    hook.after_epoch()
    assert hook.trial.reports == [(0.25, 1), (0.5, 3)]
    assert hook.pruned and stops == [("pruned by the tuner at epoch 3", False)]


def test_every_default_value_makes_a_valid_config_and_choices_round_trip() -> None:
    base = Config(**BASE)
    space = default_space(base)
    assert {p.field for p in space} >= {"learning_rate", "weight_decay", "rpn_anchor_scales", "train_rois_per_image",
                                       "aug_brightness", "mask_loss"}
    for p in space:
        for value in grid_of(p):
            assert getattr(base.replace(**{p.field: value}), p.field) == value
            assert decode(p, encode(value)) == value
    lr = next(p for p in space if p.field == "learning_rate")
    assert grid_of(lr) == pytest.approx([0.00075, 0.003, 0.012])
    scales = next(p for p in space if p.field == "rpn_anchor_scales")
    assert [4, 8, 16, 32, 64] in [list(c) for c in scales.choices]


def test_base_values_are_the_stored_values_the_space_holds_and_decode_back() -> None:
    base = Config(**BASE)
    space = default_space(base)
    start = base_values(base, space)
    # train_rois_per_image 16 is not among 64..512, so the sampler picks it; the rest is the base's
    assert start == {"learning_rate": 0.003, "weight_decay": 1e-4, "rpn_anchor_scales": "[8.0, 16.0, 32.0, 64.0, 128.0]",
                     "aug_hflip": 0.5, "aug_brightness": 0.0, "aug_contrast": 0.0, "aug_scale_jitter": "null",
                     "mask_loss": "bce"}
    by_field = {p.field: p for p in space}
    assert base.replace(**{k: decode(by_field[k], v) for k, v in start.items()}) == base
    lr_outside = base.replace(learning_rate=0.05)  # above 4x of the space's centre: left to the sampler
    assert "learning_rate" not in base_values(lr_outside, default_space(base))


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_samplers_suggest_values_of_the_space(sampler: str) -> None:
    from maskrcnn.tuning.study import _sampler

    base = Config(**BASE)
    space = default_space(base)
    study = optuna.create_study(sampler=_sampler(sampler, space, 0), direction="maximize")
    seen: list[dict] = []
    study.optimize(lambda t: (seen.append(trial_values(t, space, sampler == "grid")) or 0.0), n_trials=4)
    for values, frozen in zip(seen, study.trials):
        assert trial_values(frozen, space, sampler == "grid") == values  # what the table and best.yaml read back
        cfg = base.replace(**values)
        assert base.learning_rate / 4 <= cfg.learning_rate <= base.learning_rate * 4 + 1e-12
        if sampler == "grid":
            assert all(values[p.field] in grid_of(p) for p in space)
    assert len({str(v) for v in seen}) == 4  # four different points


def test_space_file_overrides_and_drops_parameters(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("train_rois_per_image: {low: 32, high: 128}\nmask_loss: [dice]\naug_contrast: null\n")
    space = {p.field: p for p in read_space(path, Config(**BASE))}
    assert "aug_contrast" not in space and space["mask_loss"].choices == ("dice",)
    rois = space["train_rois_per_image"]
    assert (rois.kind, rois.low, rois.high) == ("int", 32, 128) and grid_of(rois) == [32, 80, 128]
    assert not math.isnan(space["learning_rate"].high)

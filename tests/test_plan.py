"""``maskrcnn plan``: child-process peak measurement, memory levers, estimates and the search.

The measurements are real (a tiny Mask R-CNN trained for 2 steps of the engine's TrainStep in a
fresh process forked from the measurement server); the same configuration is measured once per
test session. Peaks depend on the CPU kernels (oneDNN allocates other workspaces on AVX2 and on
AVX-512/AMX), so tests of real measurements assert only what holds on every CPU: exact
quantities (pixels, instances, trainable bytes), lower bounds made of tensors that must exist,
monotonicity, and the model reproducing its own probes. The estimates' accuracy is tested on
synthetic devices whose terms are known.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from maskrcnn.cli import main
from maskrcnn.config import Config, ConfigError
from maskrcnn.planning import (
    MiB,
    Measurement,
    PeakModel,
    apply_state,
    batch_features,
    format_bytes,
    frozen_share,
    lever_settings,
    measure_peak,
    parameter_bytes,
    parse_bytes,
    plan_memory,
    search,
    static_bytes,
    trainable_bytes,
)
from maskrcnn.engine.runtime import cpu_has_fast_bf16
from maskrcnn.planning.measure import synthetic_batches

TINY = dict(backbone="resnet18", backbone_width=16, fpn_channels=32, num_classes=4, image_min_dim=320, image_max_dim=448,
            box_head_dim=64, mask_head_channels=32, mask_head_convs=2, train_rois_per_image=128, max_gt_instances=40,
            images_per_gpu=2, num_workers=0, seed=0, amp="none")  # fp32 base: amp is one of the levers
_MEASURED: dict[str, Measurement] = {}
_real_measure_peak = measure_peak


def measure(config: Config, device: str = "cpu", **kw) -> Measurement:  # noqa: ANN003
    """measure_peak once per configuration and session (2 steps, 1 thread)."""
    key = config.model_dump_json()
    if key not in _MEASURED:
        _MEASURED[key] = _real_measure_peak(config, device, steps=2, threads=1)
    return _MEASURED[key]


@pytest.fixture(scope="module")
def tiny() -> Config:
    return Config.create(**TINY)


# ============================================================================ measurement


def _sample_bytes(config: Config, index: int) -> int:
    """Bytes of the input image and target tensors of the ``index``-th image of a measured batch."""
    batch = synthetic_batches(config, (320, 427), 40, 1)[0]
    tensors = [batch.images[index]] + [v for v in batch.targets[index].values() if hasattr(v, "nbytes")]
    return sum(int(t.nbytes) for t in tensors)


def test_child_measurement_holds_what_every_cpu_must(tiny: Config) -> None:
    base = measure(tiny)
    assert base.error is None and base.peak is not None, base.error
    # exact, kernel-independent quantities: the batch is the config's, the trainable bytes the selection's
    assert base.pixels == 320 * 448 and base.instances >= 35  # 320x427 padded to 32; 40 synthetic instances
    assert base.trainable == trainable_bytes(tiny)
    assert base.model > 0.8 * parameter_bytes(tiny)
    # lower bound: weights, gradients and the momentum buffers exist during the step on any CPU
    assert base.peak > static_bytes(tiny, base.model) > base.model + base.trainable
    assert base.peak < 1024 * MiB and base.step_seconds > 0 and len(base.step_peaks) == 2
    assert base.method.startswith("VmHWM reset")

    smaller = measure(tiny.replace(image_min_dim=256, image_max_dim=352))  # the image-size lever's first setting
    one = measure(tiny.replace(images_per_gpu=1))
    assert smaller.pixels == 256 * 352 and one.pixels == base.pixels
    # monotonic: fewer pixels or fewer images per pass need less; the second image of the base batch
    # (its input and targets, held through the step) is a margin no kernel choice removes
    assert base.peak > smaller.peak, (format_bytes(base.peak), format_bytes(smaller.peak))
    assert base.peak - one.peak > _sample_bytes(tiny, 1), (format_bytes(base.peak), format_bytes(one.peak))


def test_the_peak_model_reproduces_its_probes_and_orders_a_held_out_combination(tiny: Config) -> None:
    settings = lever_settings(tiny, "cpu")
    assert settings["image_size"][0].changes == {"image_min_dim": 256, "image_max_dim": 352}
    assert settings["micro_batch"][0].changes == {"images_per_gpu": 1, "grad_accumulation": 2}
    base = measure(tiny)
    probes = {}
    for key in ("image_size", "micro_batch"):
        cfg = apply_state(tiny, settings, {key: 1})
        probes[key] = (settings[key][0], cfg, measure(cfg))

    model = PeakModel(tiny, base, probes, lambda c: batch_features(c, (320, 427), 40))
    assert model.estimate(tiny, {})[0] == pytest.approx(base.peak, rel=1e-6)
    for key, (_, cfg, m) in probes.items():  # the probes themselves are reproduced exactly
        assert model.estimate(cfg, {key: 1})[0] == pytest.approx(m.peak, rel=1e-6)
    held_out = {"micro_batch": 1, "image_size": 1}  # not used to fit the model
    cfg = apply_state(tiny, settings, held_out)
    assert (cfg.images_per_gpu, cfg.grad_accumulation, cfg.image_min_dim) == (1, 2, 256)
    estimate, _ = model.estimate(cfg, held_out)
    measured = measure(cfg).peak
    # both savings together save more than either alone, measured and estimated (any CPU);
    # how close the estimate comes is the synthetic devices' test below
    for _, _, m in probes.values():
        assert measured < m.peak and estimate < m.peak
    assert estimate > static_bytes(cfg, base.model) and measured > static_bytes(cfg, base.model)


def _device(per_pass: float, per_pass_pixels: float, per_image: float):  # noqa: ANN202
    """A synthetic device: the static part, a per-pass workspace (constant, and growing with the
    pixels as a per-image im2col buffer does) and activations per image (pixels, RoIs, GT instances)."""
    def measure_fake(config: Config) -> Measurement:
        f = batch_features(config, (320, 427), 40)
        rel = f["pixels"] / (320 * 448)
        image = per_image * rel * (0.6 + 0.4 * config.train_rois_per_image / 128) * (0.7 if config.gradient_checkpointing else 1.0)
        v = per_pass + per_pass_pixels * rel + config.images_per_gpu * image
        peak = static_bytes(config, 10 * MiB) + v
        return Measurement(int(peak), model=10 * MiB, trainable=trainable_bytes(config), pixels=int(f["pixels"]),
                           instances=f["instances"], step_seconds=1.0, method="fake")
    return measure_fake


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("per_pass,per_pass_pixels,per_image", [
    (0, 0, 50 * MiB),            # activations only: what the old multiplicative model assumed
    (80 * MiB, 0, 20 * MiB),     # a large fixed workspace (kernels that allocate once per pass)
    (-10 * MiB, 0, 60 * MiB),    # less than the static part assumes is resident at the peak
    (20 * MiB, 60 * MiB, 25 * MiB),  # a workspace that grows with the pixels, not with the images
])
def test_the_peak_model_fits_per_pass_and_per_image_terms_of_any_device(
        tiny: Config, optimizer: str, per_pass: float, per_pass_pixels: float, per_image: float) -> None:
    config = tiny.replace(optimizer=optimizer, learning_rate=1e-3, layers="3+")
    device = _device(per_pass, per_pass_pixels, per_image)
    settings = lever_settings(config, "cpu")
    probes = {}
    for key in ("micro_batch", "image_size", "rois", "checkpointing", "frozen_stages"):
        cfg = apply_state(config, settings, {key: 1})
        probes[key] = (settings[key][0], cfg, device(cfg))
    model = PeakModel(config, device(config), probes, lambda c: batch_features(c, (320, 427), 40))
    held_out = [{"micro_batch": 1, "image_size": 1}, {"micro_batch": 1, "rois": 2}, {"image_size": 2, "rois": 1},
                {"micro_batch": 1, "image_size": 1, "checkpointing": 1}, {"frozen_stages": 3, "rois": 1},
                {"image_size": 1, "micro_batch": 1, "rois": 1, "checkpointing": 1}]
    for state in held_out:
        cfg = apply_state(config, settings, state)
        estimate, _ = model.estimate(cfg, state)
        assert estimate == pytest.approx(device(cfg).peak, rel=0.01), state


def test_plan_cli_picks_a_measured_setting_under_the_budget_and_writes_it(
        tiny: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(search, "measure_peak", measure)  # reuse this session's measurements
    base = measure(tiny).peak
    smaller = measure(tiny.replace(image_min_dim=256, image_max_dim=352)).peak
    one = measure(tiny.replace(images_per_gpu=1, grad_accumulation=2)).peak
    budget = (base + smaller) // 2  # between the base and a lever known to save memory
    cfg_path, out = tmp_path / "tiny.yaml", tmp_path / "fits.yaml"
    tiny.to_yaml(cfg_path)
    rc = main(["plan", "--config", str(cfg_path), "--memory", str(budget), "--headroom", "0", "--device", "cpu",
               "--levers", "micro_batch,image_size", "--threads", "1", "--write", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "single levers, best first" in text and f"written: {out}" in text
    written = Config.from_yaml(out)
    changed = {k: v for k, v in written.model_dump().items() if v != tiny.model_dump()[k]}
    if one <= budget:  # this CPU: micro-batches alone fit, and they cost no accuracy
        assert changed == {"images_per_gpu": 1, "grad_accumulation": 2}
        assert "recommended: images_per_gpu 2 -> 1, grad_accumulation 1 -> 2" in text
    else:  # micro-batches alone do not fit, and are not needed next to smaller images: undone
        assert changed == {"image_min_dim": 256, "image_max_dim": 352}
        assert "recommended: image_min_dim/max_dim 320/448 -> 256/352" in text
    assert measure(written).peak <= budget
    assert out.read_text().startswith("# written by `maskrcnn plan`")


# ============================================================================ the search (no child processes)


def _fake_measure(config: Config) -> Measurement:
    """A synthetic device: a static part plus activations that levers scale by known factors."""
    f = batch_features(config, (320, 427), 40)
    v = 400 * MiB * (config.images_per_gpu / 2) * (0.55 if config.gradient_checkpointing else 1.0)
    v *= (0.5 + 0.5 * config.train_rois_per_image / 128) * (0.7 if config.amp != "none" else 1.0)
    v *= f["pixels"] / (320 * 448)
    peak = 10 * MiB + 2 * trainable_bytes(config) + v
    t = 1.0 * (1.3 if config.gradient_checkpointing else 1.0) * (4.0 if config.amp != "none" else 1.0)
    return Measurement(int(peak), model=10 * MiB, trainable=trainable_bytes(config), pixels=int(f["pixels"]),
                       instances=f["instances"], step_seconds=t, method="fake")


def test_search_finds_the_cheapest_combination_and_measures_it(tiny: Config) -> None:
    base = _fake_measure(tiny).peak
    calls: list[Config] = []

    def fake(cfg: Config) -> Measurement:
        calls.append(cfg)
        return _fake_measure(cfg)

    # 45 % of the base: checkpointing (x0.55, free) plus one image per pass (x0.5, free) are needed;
    # amp (x0.7 but 4x slower, ~0.1 AP) and fewer RoIs (~0.2 AP) are not
    budget = int(0.45 * base)
    plan = plan_memory(tiny, budget, "cuda", headroom=0.0, levers=["checkpointing", "micro_batch", "amp", "rois"],
                       measure=fake)
    assert plan.fits and plan.recommended_state == {"checkpointing": 1, "micro_batch": 1}
    assert plan.recommended.gradient_checkpointing and plan.recommended.images_per_gpu == 1
    assert plan.recommended.grad_accumulation == 2 and plan.recommended.train_rois_per_image == 128
    assert [r.kind for r in plan.rows] == ["base"] + ["probe"] * 4 + ["path"] * 2
    # single levers ranked by accuracy cost (plus 0.5 per doubling of the step time beyond 1.5x) per
    # byte saved: the two free ones (the larger saving first), then ~0.2 AP, then ~0.1 AP but 4x slower
    assert [r.label.split(":")[0].split(" ")[0] for r in plan.rows[1:5]] == [
        "images_per_gpu", "gradient_checkpointing", "train_rois_per_image", "amp"]
    # on a CPU without bf16 instructions amp is left out (emulated bf16 is several times slower)
    if not cpu_has_fast_bf16():
        cpu = plan_memory(tiny, budget, headroom=0.0, levers=["amp", "checkpointing"], measure=_fake_measure)
        assert "amp" not in cpu.settings and "amp left out" in cpu.table()
    assert all(r.measured for r in plan.rows)  # every peak shown was measured
    final = plan.rows[-1]
    assert final.peak <= budget and final.estimate == pytest.approx(final.peak, rel=0.15)
    assert len(calls) == 1 + 4 + 1  # base, four probes, the one new combination
    assert dict((k, (a, b)) for k, a, b in plan.diff()) == {
        "gradient_checkpointing": (False, True), "images_per_gpu": (2, 1), "grad_accumulation": (1, 2)}
    table = plan.table()
    assert "-> + gradient_checkpointing: true" in table  # built up in ranking order, each step measured
    assert "recommended: gradient_checkpointing: true, images_per_gpu 2 -> 1, grad_accumulation 1 -> 2" in table

    # a device where checkpointing and micro-batches overlap (together they save less than the
    # estimate assumes): the combination is measured, does not fit, estimates are rescaled and the
    # next cheapest combination is measured and recommended
    def overlapping(cfg: Config) -> Measurement:
        m = _fake_measure(cfg)
        if cfg.gradient_checkpointing and cfg.images_per_gpu == 1:
            m.peak = int(m.peak * 1.8)
        return m

    plan = plan_memory(tiny, budget, "cuda", headroom=0.0, levers=["checkpointing", "micro_batch", "amp", "rois"],
                       measure=overlapping)
    assert plan.fits and plan.recommended_state == {"checkpointing": 1, "micro_batch": 1, "rois": 1}
    assert plan.rows[-1].peak <= budget and plan.rows[-1].label == "+ train_rois_per_image 128 -> 64"
    too_big = [r for r in plan.rows if r.state == {"checkpointing": 1, "micro_batch": 1}]
    assert too_big and too_big[0].peak > budget  # its estimate fitted; the measurement did not

    # a budget nothing reaches: no recommendation, and it says so
    plan = plan_memory(tiny, int(0.01 * base), headroom=0.0, levers=["checkpointing", "rois"], measure=_fake_measure)
    assert not plan.fits and plan.recommended is None and "nothing tried fits" in plan.table()

    # a config that fits is measured once and left alone
    plan = plan_memory(tiny, 2 * base, measure=_fake_measure)
    assert plan.fits and plan.recommended == tiny and plan.diff() == [] and "nothing to change" in plan.table()


def test_levers_cover_the_config_fields_and_sizes_parse() -> None:
    c = Config.create(**{**TINY, "images_per_gpu": 4, "layers": "all"})
    s = lever_settings(c, "cuda")
    assert set(s) == {"checkpointing", "micro_batch", "amp", "mini_masks", "rois", "gt_instances", "frozen_stages",
                      "crop", "image_size"}
    assert [x.changes["images_per_gpu"] for x in s["micro_batch"]] == [2, 1]
    assert [x.changes["grad_accumulation"] for x in s["micro_batch"]] == [2, 4]
    assert s["amp"][0].changes == {"amp": "auto"} and lever_settings(c, "cpu")["amp"][0].changes == {"amp": "bf16"}
    assert [x.changes["layers"] for x in s["frozen_stages"]] == ["3+", "4+", "5+", "heads"]
    assert [x.changes["max_gt_instances"] for x in s["gt_instances"]] == [20, 10]
    assert s["crop"][0].changes == {"aug_crop": [256, 320]}
    assert s["image_size"][0].changes == {"image_min_dim": 256, "image_max_dim": 352}
    # the GT lever only where images have more instances than the new cap
    assert "gt_instances" not in lever_settings(c, "cpu", instances=10)
    # frozen stages save trainable bytes in order
    sizes = [trainable_bytes(c.replace(layers=lay)) for lay in ("all", "3+", "4+", "5+", "heads")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5
    assert frozen_share(c.replace(layers="3+")) < frozen_share(c.replace(layers="heads")) == pytest.approx(1.0)

    assert parse_bytes("8GiB") == 8 * 1024 ** 3 and parse_bytes("16 GB") == 16 * 10 ** 9
    assert parse_bytes("512MiB") == 512 * MiB and parse_bytes(12345) == 12345 and parse_bytes("7.5g") == 7_500_000_000
    with pytest.raises(ConfigError, match="--memory"):
        parse_bytes("lots")
    assert format_bytes(1.5 * 1024 ** 3) == "1.50 GiB" and format_bytes(300 * MiB) == "300 MiB"
    assert math.isclose(parse_bytes(format_bytes(3 * 1024 ** 3).replace(" ", "")), 3 * 1024 ** 3)


def test_cli_lever_names_match_the_planner() -> None:
    from maskrcnn.commands.plan import LEVER_NAMES

    from maskrcnn.planning import LEVER_KEYS

    assert LEVER_NAMES == LEVER_KEYS

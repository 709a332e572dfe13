"""``maskrcnn demo``: the preset, the CLI, and a ``--quick`` run that must really learn.

The quick run (about a minute on 2 CPU cores) trains the demo's lean model from scratch on 96
synthetic images; the test checks every output file and that training worked: the loss falls
well below its start and the trained model finds shapes of the right class on easy validation
images (one shape each).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maskrcnn.cli import build_parser, main
from maskrcnn.commands import demo
from maskrcnn.config import Config
from maskrcnn.configs import load_preset, preset_path


def test_preset_is_a_valid_config_for_shapes():
    path = preset_path("shapes_demo")
    assert path.is_file() and path.suffix == ".yaml"
    c = Config.from_yaml(path)
    assert c == load_preset("shapes_demo")
    assert c.num_classes == 4 and c.class_names == ["BG", "square", "circle", "triangle"]
    assert c.rpn_anchor_scales == [8, 16, 32, 64, 128]  # Matterport's shapes anchors
    assert c.image_min_dim == 128 and c.image_max_dim == 128 and c.image_resize_mode in ("minmax", "none")
    assert c.num_workers == 0
    from maskrcnn.modeling import build_model

    model = build_model(c)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000  # lean: trains on a CPU


def test_demo_command_is_registered():
    args = build_parser().parse_args(["demo", "--quick", "--out", "x", "--seed", "3", "--minutes", "2"])
    assert args.command == "demo" and args.quick and args.out == "x" and args.seed == 3 and args.minutes == 2.0
    assert args._run is demo.run
    assert build_parser().parse_args(["demo"]).out == "demo_out"


def test_prepared_samples_flip_half_the_items_per_epoch_with_boxes_on_the_masks():
    from maskrcnn.data.augment import boxes_from_masks
    from maskrcnn.data.prepared import PreparedSamples, prepare_samples
    from maskrcnn.data.synthetic import ShapesDataset

    c = load_preset("shapes_demo")
    samples = prepare_samples(ShapesDataset(40, seed=11), c)
    assert len(samples) == 40 and all(len(t["labels"]) > 0 for _, t in samples)
    ds = PreparedSamples(samples, hflip=0.5, seed=3)
    flipped = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, target = ds[i]
            original = samples[i][0]
            is_flipped = not torch.equal(image, original)
            if is_flipped:
                assert torch.equal(image, original.flip(-1)) and torch.equal(target["masks"], samples[i][1]["masks"].flip(-1))
            assert np.array_equal(target["boxes"].numpy(), boxes_from_masks(target["masks"].numpy()))
            assert torch.equal(target["labels"], samples[i][1]["labels"])
            flipped[epoch, i] = is_flipped
        assert 8 <= sum(flipped[epoch, i] for i in range(40)) <= 32  # about half, p = 0.5
    assert any(flipped[0, i] != flipped[1, i] for i in range(40))  # drawn anew each epoch
    ds.set_epoch(0)  # a function of (seed, epoch, index): the same again
    assert [torch.equal(ds[i][0], samples[i][0]) for i in range(40)] == [not flipped[0, i] for i in range(40)]


def test_thread_tuner_follows_the_micro_benchmark():
    from maskrcnn.engine.threads import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, every_s=10.0)
        speeds = {1: 1.0, 2: 0.5}  # seconds of the micro-benchmark per thread count: idle machine
        tuner._bench = lambda n, reps=10: speeds[n]
        assert tuner.check() == 2 and torch.get_num_threads() == 2 and tuner.interval == 10.0
        speeds[2] = 5.0  # busy machine: two threads wait for each other
        assert tuner.check() == 1 and torch.get_num_threads() == 1 and tuner.interval == 20.0
        assert tuner.check() == 1 and tuner.interval == 40.0 and tuner.check() == 1 and tuner.interval == 40.0

        # on two threads, a step over twice the recent median triggers a check at once
        speeds[2] = 0.5
        tuner.check()
        now = 0.0
        tuner.next_check = 1e9
        for _ in range(5):
            now += 0.3
            tuner.update(0.3, now)
        n_checks = len(tuner.checks)
        speeds[2] = 5.0
        tuner.update(1.0, now + 1.0)
        assert len(tuner.checks) == n_checks + 1 and tuner.current == 1
        assert ThreadTuner(1).check() == 1
    finally:
        torch.set_num_threads(before)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@pytest.mark.slow
def test_quick_demo_writes_outputs_and_learns(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "demo_out"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "mask AP50" in printed and "VOC mAP@0.5" in printed and str(out) in printed

    # ---- outputs exist and are valid
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mask_ap50", "voc_map50", "mask_ap", "box_ap50"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["steps"] > 0 and metrics["train_seconds"] > 0
    report = json.loads((out / "report.json").read_text())
    assert "coco" in report and "segm" in report["coco"]

    from PIL import Image

    pngs = [out / "loss_curves.png", *sorted((out / "overlays").glob("*.png"))]
    assert len(pngs) >= 2
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
    with Image.open(out / "overlays" / "val_00.png") as im:
        assert im.width > 2 * 128 and im.height >= 128  # ground truth | predictions, enlarged

    from maskrcnn.weights import load_checkpoint

    config, sd = load_checkpoint(out / "model.safetensors")
    assert config == Config.from_yaml(out / "config.yaml")
    from maskrcnn.modeling import build_model

    model = build_model(config)
    model.load_state_dict(sd, strict=True)

    # ---- training really learned: the loss fell well below its start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["type"] == "train"]
    assert len(rows) >= 3 and all(math.isfinite(r["loss"]) for r in rows)
    first, last = rows[0]["loss"], min(r["loss"] for r in rows[-2:])
    assert last < 0.6 * first, f"loss {first:.3f} -> {last:.3f}"
    # the engine's schedule: warmup to the preset's rate, then cosine towards zero at the last step
    lrs = [r["lr"] for r in rows]
    peak = max(lrs)
    assert lrs[0] < 0.5 * peak and peak == pytest.approx(config.learning_rate, rel=0.05) and lrs[-1] < 0.05 * peak
    assert metrics["steps"] == 192 and metrics["stopped_by"] == "epochs"  # 8 epochs of 24 steps

    # ---- and the trained model finds shapes of the right class on easy validation images
    from maskrcnn.data.synthetic import ShapesDataset
    from maskrcnn.inference.predictor import Predictor

    val = ShapesDataset(60, seed=2 * 0 + 1)  # the demo's validation seed for --seed 0 (and more images)
    easy = [i for i in val.image_ids if len(val.load_mask(i)[1]) == 1][:8]
    assert len(easy) == 8
    predictor = Predictor(model)
    found = []
    for i, det in zip(easy, predictor.detect([val.load_image(i) for i in easy])):
        masks, ids = val.load_mask(i)
        found.append(any(det.scores[k] >= 0.5 and det.class_ids[k] == ids[0] and _mask_iou(det.masks[k], masks[:, :, 0]) >= 0.5
                         for k in range(len(det))))
    # an untrained model scores every class ~0.25; after --quick about half of these are found
    assert sum(found) >= 2, f"correct detections (score >= 0.5, right class, mask IoU >= 0.5) on {sum(found)} of 8 easy images"

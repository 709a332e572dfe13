"""Training engine: parameter groups, layer presets, schedules, samplers, checkpoints, guard, trainer.

Most tests drive the engine with a tiny stub model that follows the model contract of
docs/design.md (parameter names ``backbone.body.* / backbone.fpn.* / rpn.* / roi_heads.*``; train
mode returns a dict of weighted ``loss_*`` terms) and a stub dataset of training samples. The last tests
run the real model, data pipeline, shapes dataset and evaluator through ``maskrcnn train``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from maskrcnn.config import Config, ConfigError
from maskrcnn.errors import MaskRCNNError
from maskrcnn.engine import NonFiniteLossError, Trainer, train
from maskrcnn.engine.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_optimizer_state,
    optimizer_state,
    read_safetensors_metadata,
    restore_rng,
    save_safetensors_atomic,
)
from maskrcnn.engine.logging import format_class_counts
from maskrcnn.engine.optim import build_optimizer, param_groups, scaled_learning_rate, select_trainable, set_train_mode
from maskrcnn.engine.samplers import TrainingSampler, repeat_factors
from maskrcnn.engine.schedule import LRSchedule, build_scheduler
from maskrcnn.engine.runtime import resolve_amp

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# =============================================================================== stubs


class StubModel(nn.Module):
    """Tiny network with the real model's parameter layout and loss contract.

    ``use_rng`` draws from the global torch generator (a random pixel subset and dropout), like the
    real model's anchor/RoI sampling. ``nan_at`` / ``sigterm_at``: on that training call (1-based)
    the mask loss becomes NaN / the process sends itself SIGTERM.
    """

    def __init__(self, num_classes: int = 4, use_rng: bool = True, nan_at: int | None = None,
                 sigterm_at: int | None = None) -> None:
        super().__init__()
        body = nn.Module()
        body.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        body.bn1 = nn.BatchNorm2d(4)
        for i in range(1, 5):
            setattr(body, f"layer{i}", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)))
        self.backbone = nn.Module()
        self.backbone.body = body
        self.backbone.fpn = nn.Conv2d(4, 4, 1)
        self.rpn = nn.Module()
        self.rpn.head = nn.Conv2d(4, 5, 1)
        self.roi_heads = nn.Module()
        self.roi_heads.mask_norm = nn.GroupNorm(2, 4)
        self.roi_heads.box = nn.Linear(4, num_classes * 5)
        self.roi_heads.mask = nn.Conv2d(4, 1, 1)
        self.num_classes = num_classes
        self.use_rng, self.nan_at, self.sigterm_at = use_rng, nan_at, sigterm_at
        self.calls = 0
        self.last_dtype: torch.dtype | None = None

    def forward(self, images, targets=None):  # noqa: ANN001, ANN201 - the model contract
        if not self.training:
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                     "scores": torch.zeros(0), "mask_probs": torch.zeros(0, 28, 28)} for _ in images]
        self.calls += 1
        if self.sigterm_at == self.calls:
            os.kill(os.getpid(), signal.SIGTERM)
        x = torch.stack(images)
        b = self.backbone.body
        x = F.relu(b.bn1(b.conv1(x)))
        for i in range(1, 5):
            x = F.relu(getattr(b, f"layer{i}")(x))
        f = self.backbone.fpn(x)
        self.last_dtype = f.dtype
        f = f.float()
        B, _, H, W = f.shape
        fg = torch.stack([t["masks"].amax(0).float() if len(t["masks"]) else torch.zeros(H, W) for t in targets])
        r = self.rpn.head(f)
        idx = torch.randperm(H * W)[: H * W // 2] if self.use_rng else torch.arange(H * W)
        rpn_class = F.binary_cross_entropy_with_logits(r[:, 0].flatten(1)[:, idx], fg.flatten(1)[:, idx])
        box_t = torch.stack([t["boxes"][0] / H if len(t["boxes"]) else torch.zeros(4) for t in targets])
        rpn_bbox = F.smooth_l1_loss(r[:, 1:].mean((2, 3)), box_t)
        pooled = self.roi_heads.mask_norm(f).mean((2, 3))
        if self.use_rng:
            pooled = F.dropout(pooled, 0.1, training=True)
        logits = self.roi_heads.box(pooled).view(B, self.num_classes, 5)
        labels = torch.stack([t["labels"][0] if len(t["labels"]) else torch.tensor(0) for t in targets])
        mrcnn_class = F.cross_entropy(logits[..., 0], labels)
        mrcnn_bbox = F.smooth_l1_loss(logits[torch.arange(B), labels, 1:], box_t)
        mrcnn_mask = F.binary_cross_entropy_with_logits(self.roi_heads.mask(f)[:, 0], fg)
        if self.nan_at == self.calls:
            mrcnn_mask = mrcnn_mask * float("nan")
        return {"loss_rpn_class": rpn_class, "loss_rpn_bbox": rpn_bbox, "loss_mrcnn_class": mrcnn_class,
                "loss_mrcnn_bbox": mrcnn_bbox, "loss_mrcnn_mask": mrcnn_mask}


class StubSamples(torch.utils.data.Dataset):
    """Training samples per the contract; content depends on (seed, epoch, index); ``broken`` items are None."""

    def __init__(self, n: int, size: int = 16, seed: int = 0, num_classes: int = 4, broken: tuple[int, ...] = ()) -> None:
        self.n, self.size, self.seed, self.num_classes, self.broken = n, size, seed, num_classes, set(broken)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image_class_ids(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        return rng.integers(1, self.num_classes, size=1 + i % 2)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):  # noqa: ANN204
        if i in self.broken:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, i])
        s = self.size
        labels = self.image_class_ids(i)
        masks = np.zeros((len(labels), s, s), dtype=np.uint8)
        boxes = np.zeros((len(labels), 4), dtype=np.float32)
        for k in range(len(labels)):
            x1, y1 = rng.integers(0, s // 2, size=2)
            w, h = rng.integers(2, s // 2, size=2)
            masks[k, y1:y1 + h, x1:x1 + w] = 1
            boxes[k] = (x1, y1, x1 + w, y1 + h)
        image = torch.from_numpy(rng.random((3, s, s), dtype=np.float32))
        return image, {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels.astype(np.int64)),
                       "masks": torch.from_numpy(masks), "image_id": i, "orig_size": (s, s)}


def tiny_config(**changes) -> Config:  # noqa: ANN003
    base = dict(name="t", num_classes=4, images_per_gpu=2, epochs=2, learning_rate=0.02, base_batch_size=2,
                warmup_iters=2, lr_steps=[0.5], num_workers=0, seed=3, deterministic=True, checkpoint_keep=2,
                gradient_clip_norm=5.0, momentum=0.9, weight_decay=1e-4)
    return Config.create(**{**base, **changes})


def make_model(seed: int = 0, **kw) -> StubModel:  # noqa: ANN003
    torch.manual_seed(seed)
    return StubModel(**kw)


def run_stub(cfg: Config, run_dir: Path, model: nn.Module | None = None, n: int = 10, val: int = 4,
             broken: tuple[int, ...] = (), **kw):  # noqa: ANN003, ANN201
    return train(cfg, StubSamples(n, broken=broken), StubSamples(val, seed=9) if val else None,
                 out_dir=run_dir.parent, run_dir=run_dir, model=model or make_model(),
                 progress=False, tensorboard=False, log_every=1, **{"evaluate_fn": None, **kw})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ============================================================================ optimizer


BN = {f"backbone.body.bn1.{p}" for p in ("weight", "bias")} | {
    f"backbone.body.layer{i}.1.{p}" for i in range(1, 5) for p in ("weight", "bias")}
HEADS = {"backbone.fpn.weight", "backbone.fpn.bias", "rpn.head.weight", "rpn.head.bias",
         "roi_heads.mask_norm.weight", "roi_heads.mask_norm.bias", "roi_heads.box.weight", "roi_heads.box.bias",
         "roi_heads.mask.weight", "roi_heads.mask.bias"}


def stage(i: int, bn: bool) -> set[str]:
    names = {f"backbone.body.layer{i}.0.weight"}
    return names | ({f"backbone.body.layer{i}.1.weight", f"backbone.body.layer{i}.1.bias"} if bn else set())


@pytest.mark.parametrize("layers,train_bn,expected", [
    ("heads", False, HEADS),
    ("5+", False, HEADS | stage(4, False)),
    ("4+", False, HEADS | stage(3, False) | stage(4, False)),
    ("3+", True, HEADS | stage(2, True) | stage(3, True) | stage(4, True)),
    ("all", False, HEADS | {"backbone.body.conv1.weight"} | set().union(*(stage(i, False) for i in range(1, 5)))),
    ("all", True, HEADS | BN | {"backbone.body.conv1.weight"} | set().union(*(stage(i, False) for i in range(1, 5)))),
    (r"roi_heads\.mask", False, {"roi_heads.mask_norm.weight", "roi_heads.mask_norm.bias", "roi_heads.mask.weight", "roi_heads.mask.bias"}),
])
def test_layer_selection_and_frozen_batchnorm(layers: str, train_bn: bool, expected: set[str]) -> None:
    model = StubModel()
    names = select_trainable(model, tiny_config(layers=layers, train_bn=train_bn))
    assert set(names) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    set_train_mode(model, train_bn)
    training_bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training}
    want = {n.rsplit(".", 1)[0] for n in expected & BN}
    assert training_bn == want
    assert model.roi_heads.training and model.backbone.fpn.training


def test_param_groups_have_no_decay_on_norms_and_biases() -> None:
    model = StubModel()
    select_trainable(model, tiny_config(layers="all", train_bn=True))
    groups = param_groups(model, 1e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    convs = {"backbone.body.conv1.weight", "backbone.fpn.weight", "rpn.head.weight", "roi_heads.box.weight",
             "roi_heads.mask.weight"} | {f"backbone.body.layer{i}.0.weight" for i in range(1, 5)}
    assert set(decay["names"]) == convs
    assert set(no_decay["names"]) == BN | {n for n in HEADS if n.endswith(".bias")} | {"roi_heads.mask_norm.weight"}
    opt = build_optimizer(model, tiny_config(layers="all", train_bn=True, learning_rate=0.02, base_batch_size=16,
                                             images_per_gpu=4, grad_accumulation=2), world_size=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)  # 4 * 2 * 2 = 16 = base batch
    assert scaled_learning_rate(tiny_config(learning_rate=0.02, base_batch_size=16, images_per_gpu=2), 1) == pytest.approx(0.0025)
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]


def test_adamw_runs_fused_and_its_update_matches_the_python_loop() -> None:
    torch.manual_seed(0)
    model, reference = StubModel(), StubModel()
    reference.load_state_dict(model.state_dict())
    config = tiny_config(layers="all", train_bn=True, optimizer="adamw", learning_rate=0.01, weight_decay=0.1)
    for m in (model, reference):
        select_trainable(m, config)
    opt = build_optimizer(model, config)
    assert opt.defaults["fused"] is True  # CPU parameters: PyTorch's fused kernel
    ref_opt = torch.optim.AdamW(param_groups(reference, 0.1), lr=0.01, betas=(0.9, 0.999), weight_decay=0.1, foreach=False)
    for step in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            for i, p in enumerate(m.parameters()):
                if p.requires_grad:
                    p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32) + i + step).reshape(p.shape)
            o.step()
    torch.manual_seed(0)
    start = StubModel()  # the initial parameters: each trained one moved by about 3 x lr
    moved = 0
    for (name, p), q, p0 in zip(model.named_parameters(), reference.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
        moved += int(p.requires_grad and float((p - p0).abs().max()) > 0.01)
    assert moved > 10


def test_layer_regex_without_match_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"layers='nothing_here'.*selects no trainable parameter"):
        select_trainable(StubModel(), tiny_config(layers="nothing_here"))


def test_presets_on_the_real_model_parameter_names() -> None:
    from maskrcnn.modeling import build_model

    cfg = tiny_config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=16, mask_head_channels=8,
                      mask_head_convs=1)
    model = build_model(cfg)
    all_names = [n for n, _ in model.named_parameters()]
    heads = set(select_trainable(model, cfg.replace(layers="heads")))
    assert heads and all(n.startswith(("backbone.fpn.", "rpn.", "roi_heads.")) for n in heads)
    assert heads == {n for n in all_names if not n.startswith("backbone.body.")}
    five = set(select_trainable(model, cfg.replace(layers="5+"))) - heads
    assert five and all(n.startswith("backbone.body.layer4.") for n in five)
    three = set(select_trainable(model, cfg.replace(layers="3+"))) - heads
    assert {n.split(".")[2] for n in three} == {"layer2", "layer3", "layer4"}
    everything = set(select_trainable(model, cfg.replace(layers="all")))
    assert "backbone.body.conv1.weight" in everything and everything <= set(all_names)


# ============================================================================ schedule


def test_lr_schedule_values_at_chosen_steps() -> None:
    step = LRSchedule.from_config(tiny_config(lr_schedule="step", warmup_iters=100, warmup_factor=0.001,
                                              lr_steps=[0.5, 0.75], lr_gamma=0.1), total_steps=1000)
    assert step.milestones == (500, 750)
    expected = {0: 0.001, 50: 0.001 + 0.999 * 0.5, 99: 0.001 + 0.999 * 0.99, 100: 1.0, 499: 1.0, 500: 0.1,
                749: 0.1, 750: 0.01, 999: 0.01}
    for s, v in expected.items():
        assert step.factor(s) == pytest.approx(v, rel=1e-12), s
    cos = LRSchedule.from_config(tiny_config(lr_schedule="cosine", warmup_iters=0), total_steps=1000)
    assert [cos.factor(s) for s in (0, 250, 500, 1000)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.0])
    cos_w = LRSchedule.from_config(tiny_config(lr_schedule="cosine", warmup_iters=10, warmup_factor=0.1), total_steps=100)
    assert cos_w.factor(5) == pytest.approx((0.1 + 0.9 * 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    const = LRSchedule.from_config(tiny_config(lr_schedule="constant", warmup_iters=4, warmup_factor=0.5), total_steps=10)
    assert [const.factor(s) for s in (0, 2, 4, 9)] == pytest.approx([0.5, 0.75, 1.0, 1.0])

    # the scheduler applies the factor per optimizer step and round-trips through JSON
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = build_scheduler(opt, tiny_config(lr_schedule="step", warmup_iters=2, warmup_factor=0.5, lr_steps=[0.5]), 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.15, 0.02, 0.02])
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched2 = build_scheduler(opt2, tiny_config(lr_schedule="step", warmup_iters=2, warmup_factor=0.5, lr_steps=[0.5]), 4)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.02) and sched2.next_step == 4


# ============================================================================ samplers


def test_repeat_factors_follow_the_lvis_formula() -> None:
    # 10 images: class 1 in all, class 2 in one image (f = 0.1), class 3 in five (f = 0.5)
    ids = [[1] for _ in range(10)]
    ids[0] = [1, 2, 2]
    for i in range(5, 10):
        ids[i] = [1, 3]
    r = repeat_factors(ids, threshold=0.4)
    assert r[0] == pytest.approx(2.0)  # sqrt(0.4 / 0.1), max over its classes
    assert r[1:5] == pytest.approx([1.0] * 4)  # sqrt(0.4) < 1 -> 1
    assert r[5:] == pytest.approx([1.0] * 5)  # sqrt(0.4 / 0.5) < 1
    r = repeat_factors(ids + [[]], threshold=0.9)
    assert r[0] == pytest.approx(math.sqrt(0.9 / (1 / 11))) and r[-1] == 1.0
    assert r[6] == pytest.approx(math.sqrt(0.9 / (5 / 11)))


def test_repeat_factor_sampling_matches_factors_in_expectation() -> None:
    factors = np.array([1.0, 1.3, 2.0, 2.5, 3.7, 1.05])
    sampler = TrainingSampler(len(factors), seed=11, factors=factors)
    epochs = 2000
    counts = np.zeros(len(factors))
    for e in range(epochs):
        sampler.set_epoch(e)
        c = np.bincount(list(sampler), minlength=len(factors))
        assert np.all((c == np.floor(factors)) | (c == np.ceil(factors)))  # stochastic rounding
        counts += c
    # binomial standard error of the fractional part is <= 0.5 / sqrt(2000) ~ 0.011
    assert counts / epochs == pytest.approx(factors, abs=0.04)
    sampler.set_epoch(7)
    assert list(sampler) == list(TrainingSampler(len(factors), seed=11, factors=factors, rank=0).rank_indices(7))
    assert sampler.epoch_indices(7) != sampler.epoch_indices(8)


def test_sampler_shards_between_ranks_and_resumes_mid_epoch() -> None:
    factors = np.array([1.0, 1.5, 2.2, 1.0, 3.1, 1.0, 1.0])
    ranks = [TrainingSampler(7, seed=5, factors=factors, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    full = ranks[0].epoch_indices()
    shards = [list(s) for s in ranks]
    assert len({len(x) for x in shards}) == 1 and len(shards[0]) == math.ceil(len(full) / 3)
    padded = full + full[: 3 * len(shards[0]) - len(full)]
    interleaved = [shards[k % 3][k // 3] for k in range(len(padded))]
    assert interleaved == padded  # every index of the epoch, each position on exactly one rank
    ranks[1].set_epoch(4, start=2)
    assert list(ranks[1]) == shards[1][2:] and len(ranks[1]) == len(shards[1]) - 2
    plain = TrainingSampler(10, seed=1, shuffle=True)
    plain.set_epoch(0)
    assert sorted(plain) == list(range(10)) and list(plain) != list(range(10))


def test_sampler_length_fixes_the_epoch_and_reshuffles_when_the_data_runs_out() -> None:
    # 2 ranks x 8 indices per epoch of a 5-image set (Config.steps_per_epoch, Matterport's STEPS_PER_EPOCH)
    ranks = [TrainingSampler(5, seed=3, rank=r, world_size=2, length=8) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    full = ranks[0].epoch_indices()
    assert len(full) == 16 and [len(list(s)) for s in ranks] == [8, 8] and ranks[0].epoch_length(2) == 8
    passes = [full[i:i + 5] for i in range(0, 15, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)  # whole shuffled passes, then a part of one
    assert passes[0] != passes[1] or passes[1] != passes[2]  # each pass shuffled anew
    short = TrainingSampler(5, seed=3, length=3)
    short.set_epoch(2)
    assert list(short) == TrainingSampler(5, seed=3).epoch_indices(2)[:3]  # fewer steps: the start of the pass
    assert TrainingSampler(0, length=3).epoch_length(0) == 0


def test_trainer_start_epoch_must_be_below_epochs() -> None:
    with pytest.raises(MaskRCNNError, match=r"start_epoch=3: must be below epochs=3"):
        Trainer(tiny_config(epochs=3), [], start_epoch=3)


# ============================================================================ checkpoints


def test_optimizer_and_rng_state_round_trip_without_pickle(tmp_path: Path) -> None:
    model = StubModel()
    select_trainable(model, tiny_config())
    opt = build_optimizer(model, tiny_config())
    model.train()
    loss = sum(model([torch.rand(3, 16, 16)] * 2, [StubSamples(2)[0][1]] * 2).values())
    loss.backward()
    opt.step()
    tensors, meta = optimizer_state(opt)
    assert tensors and all(k.startswith("optimizer/") for k in tensors)
    rng_t, rng_m = capture_rng("rng/rank0")
    save_safetensors_atomic(tmp_path / "s.safetensors", {**tensors, **rng_t}, {"state": json.dumps({"opt": meta, "rng": rng_m})})
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())

    loaded = load_file(tmp_path / "s.safetensors")
    state = json.loads(read_safetensors_metadata(tmp_path / "s.safetensors")["state"])
    restore_rng(loaded, state["rng"], "rng/rank0")
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert __import__("random").random() == expected[2]
    opt2 = build_optimizer(model, tiny_config())
    load_optimizer_state(opt2, loaded, state["opt"])
    for p in model.parameters():
        if p.requires_grad:
            assert torch.equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_crash_during_checkpoint_write_keeps_the_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "w.safetensors"
    save_safetensors_atomic(target, {"a": torch.ones(3)})
    before = target.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk gone"):
        save_safetensors_atomic(target, {"a": torch.zeros(1000)})
    monkeypatch.undo()
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]

    # a process killed in the middle of writing (no cleanup runs)
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, torch
        from maskrcnn.engine.checkpoint import CheckpointManager
        m = CheckpointManager({str(run)!r}, keep=3)
        m.save("epoch_0001", {{"w": torch.ones(4)}}, {{}}, {{"t": torch.ones(2)}}, {{"global_step": 5}})
        m.save_best({{"w": torch.ones(4)}}, {{}})
        os.fsync = lambda fd: os._exit(7)
        m.save_best({{"w": torch.full((4,), 9.0)}}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 7, proc.stderr
    assert any(p.name.startswith(".best.safetensors.tmp") for p in run.iterdir())  # the torn temporary
    assert torch.equal(load_file(run / "best.safetensors")["w"], torch.ones(4))
    mgr = CheckpointManager(run)
    weights, tensors, state = mgr.load()
    assert mgr.last() == "epoch_0001" and torch.equal(weights["w"], torch.ones(4)) and state["global_step"] == 5


# ============================================================================ trainer


def test_train_run_directory_metrics_checkpoints_and_skipped_samples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(epochs=3, checkpoint_keep=2)
    model = make_model()
    result = run_stub(cfg, tmp_path / "run", model=model, broken=(3,))
    run = result.run_dir
    assert result.epochs_completed == 3 and result.global_step == 15 and not result.interrupted
    assert result.skipped_samples == 3  # sample 3 once per epoch
    assert Config.from_yaml(run / "config.yaml") == cfg

    rows = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 16))
    sched = LRSchedule.from_config(cfg, 15)
    for r in train_rows:  # lr used by step s = scaled lr * factor(s)
        assert r["lr"] == pytest.approx(0.02 * sched.factor(r["step"] - 1))
        terms = [k for k in r if k.startswith("loss_")]  # logged by the model's keys, whatever they are
        assert len(terms) == 5 and r["loss"] == pytest.approx(sum(r[k] for k in terms), rel=1e-5)
    val_rows = [r for r in rows if r["type"] == "val"]
    assert [r["epoch"] for r in val_rows] == [1, 2, 3]
    assert [h["loss"] for h in result.history] == [r["loss"] for r in val_rows]
    skipped = [r for r in rows if r.get("event") == "skipped_samples"]
    assert len(skipped) == 3 and all(r["epoch"] == i + 1 for i, r in enumerate(skipped))
    counts = next(r for r in rows if r["type"] == "class_counts")
    ds = StubSamples(10)
    expected = np.bincount(np.concatenate([ds.image_class_ids(i) for i in range(10)]), minlength=4)
    assert counts["instances"] == expected.tolist()
    err = capsys.readouterr().err
    assert "instances per class" in err and f"class 1  {sum(1 for i in range(10) if 1 in ds.image_class_ids(i)):>8d}" in err

    ck = run / "checkpoints"
    assert (ck / "last").read_text().strip() == "epoch_0003"
    assert sorted(p.name for p in ck.iterdir() if not p.name.startswith(".")) == [
        "epoch_0002.safetensors", "epoch_0002.state.safetensors", "epoch_0003.safetensors", "epoch_0003.state.safetensors", "last"]
    final = load_file(ck / "epoch_0003.safetensors")
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    best_epoch = min(val_rows, key=lambda r: r["loss"])["epoch"]
    meta = read_safetensors_metadata(run / "best.safetensors")
    assert meta["metric"] == "loss" and int(meta["epoch"]) == best_epoch
    assert result.best_value == pytest.approx(min(r["loss"] for r in val_rows))
    if best_epoch == 3:
        assert all(torch.equal(load_file(run / "best.safetensors")[k], v) for k, v in final.items())
    from maskrcnn.weights import load_checkpoint

    loaded_cfg, sd = load_checkpoint(run / "best.safetensors")  # readable by the inference side
    assert loaded_cfg == cfg and set(sd) == set(model.state_dict())
    assert (run / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_every_n_epochs_and_always_the_last(tmp_path: Path) -> None:
    result = run_stub(tiny_config(epochs=5, checkpoint_keep=5, checkpoint_every=2, validate_every=0), tmp_path / "run")
    ck = result.run_dir / "checkpoints"
    assert result.epochs_completed == 5 and (ck / "last").read_text().strip() == "epoch_0005"
    assert sorted(p.name for p in ck.glob("*.state.safetensors")) == [
        "epoch_0002.state.safetensors", "epoch_0004.state.safetensors", "epoch_0005.state.safetensors"]


def test_nan_loss_stops_with_the_term_and_step_and_keeps_the_good_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = run_stub(tiny_config(epochs=1), run)
    ck = run / "checkpoints"
    snapshot = {p.name: p.read_bytes() for p in list(ck.iterdir()) + [run / "best.safetensors"]}
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(epochs=3), StubSamples(10), StubSamples(4, seed=9), out_dir=tmp_path, resume=run,
              model=make_model(nan_at=2), progress=False, tensorboard=False, evaluate_fn=None)
    msg = str(info.value)
    assert "\n" not in msg
    assert "loss_mrcnn_mask is nan at optimizer step 6 (epoch 2)" in msg  # 5 steps in epoch 1, the 2nd of epoch 2
    for cause in ("learning rate", "too high for the total batch of 2", "degenerate boxes", "tiny masks", "fp16 overflow"):
        assert cause in msg
    assert str(first.last_checkpoint) in msg and "kept" in msg
    assert info.value.term == "loss_mrcnn_mask" and info.value.step == 6
    assert {p.name: p.read_bytes() for p in list(ck.iterdir()) + [run / "best.safetensors"]} == snapshot
    events = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "nonfinite_loss"]
    assert len(events) == 1 and events[0]["term"] == "loss_mrcnn_mask"


def test_best_checkpoint_follows_mask_ap_and_survives_a_failed_evaluation(tmp_path: Path) -> None:
    script = iter([0.3, RuntimeError("pycocotools exploded"), 0.6, 0.6])
    seen: list[bool] = []

    def evaluate(model: nn.Module, dataset: object) -> dict[str, float]:
        seen.append(model.training)
        value = next(script)
        if isinstance(value, Exception):
            raise value
        return {"mask_ap": value}

    result = run_stub(tiny_config(epochs=4, checkpoint_keep=4), tmp_path / "run", evaluate_fn=evaluate)
    assert seen == [False] * 4  # evaluated in eval mode
    assert [h.get("mask_ap") for h in result.history] == [0.3, None, 0.6, 0.6]
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    failed = [r for r in rows if r.get("event") == "evaluation_failed"]
    assert len(failed) == 1 and "after epoch 2" in failed[0]["message"] and "pycocotools exploded" in failed[0]["message"]
    losses = [h["loss"] for h in result.history]
    best_epoch = 3 if losses[2] <= losses[3] else 4  # equal AP: the lower validation loss wins
    assert (result.best_metric, result.best_value) == ("mask_ap", 0.6)
    assert int(read_safetensors_metadata(result.best_checkpoint)["epoch"]) == best_epoch
    best, epoch = load_file(result.best_checkpoint), load_file(result.run_dir / "checkpoints" / f"epoch_{best_epoch:04d}.safetensors")
    assert all(torch.equal(best[k], epoch[k]) for k in epoch)


def test_amp_resolution_and_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == (None, False) and resolve_amp("none", cpu) == (None, False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ConfigError, match="amp=fp16 needs a CUDA GPU"):
        resolve_amp("fp16", cpu)
    model = make_model()
    result = run_stub(tiny_config(epochs=1, amp="bf16"), tmp_path / "run", model=model, val=0)
    assert model.last_dtype == torch.bfloat16  # forward autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert result.global_step == 5 and result.best_checkpoint is None


def test_class_count_table_marks_classes_without_instances() -> None:
    text = format_class_counts(["BG", "cat", "dog"], [0, 3, 0], [0, 5, 0], [0, 7.5, 0])
    lines = text.splitlines()
    assert lines[1].split() == ["cat", "3", "5", "7.5"]
    assert lines[2].split()[:3] == ["dog", "0", "0"] and lines[2].endswith("<- no training instances")


# ============================================================================ integration


def test_pipeline_shapes_integration_reports_broken_files(tmp_path: Path) -> None:
    from maskrcnn.data.synthetic import ShapesDataset
    from maskrcnn.errors import DataError

    class Broken(ShapesDataset):
        def load_image(self, image_id: int) -> np.ndarray:
            if image_id == 2:
                raise DataError("shapes:2: cannot read the image")
            return super().load_image(image_id)

    cfg = tiny_config(epochs=1, image_resize_mode="none", image_min_dim=64)
    model = make_model()
    result = train(cfg, Broken(6, 96, 96, seed=1), None, out_dir=tmp_path, run_dir=tmp_path / "r", model=model,
                   progress=False, tensorboard=False)
    assert result.global_step == 3 and result.skipped_samples == 1
    event = next(r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if r.get("event") == "skipped_samples")
    assert "shapes:2 (seed 1)" in event["message"] and "cannot read the image" in event["message"]


def test_cli_train_with_the_real_model_and_mask_ap(tmp_path: Path) -> None:
    cfg = Config.create(
        name="cli", num_classes=4, backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32,
        mask_head_channels=8, mask_head_convs=1, image_resize_mode="none", image_min_dim=64,
        rpn_anchor_scales=[8, 16, 32, 64, 128], train_rois_per_image=16, pre_nms_limit_training=200,
        post_nms_rois_training=50, pre_nms_limit_inference=100, post_nms_rois_inference=20,
        detection_max_instances=10, images_per_gpu=2, epochs=1, learning_rate=0.01, base_batch_size=2,
        warmup_iters=1, num_workers=0, deterministic=True)
    cfg.to_yaml(tmp_path / "c.yaml")
    from maskrcnn.cli import main

    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "epochs=1", "--data", "shapes:4",
                 "--val-data", "shapes:2", "--out", str(tmp_path / "runs"), "--no-progress"])
    assert code == 0
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("cli_")
    val = [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "val"]
    assert len(val) == 1 and math.isfinite(val[0]["loss"])
    assert {"mask_ap", "mask_ap50", "box_ap"} <= set(val[0]) and -1.0 <= val[0]["mask_ap"] <= 1.0
    saved = Config.from_yaml(run / "config.yaml")
    assert saved.class_names == ["BG", "square", "circle", "triangle"]  # taken from the dataset
    from maskrcnn.modeling import build_model
    from maskrcnn.weights import load_checkpoint

    loaded_cfg, sd = load_checkpoint(run / "checkpoints" / "epoch_0001.safetensors")
    build_model(loaded_cfg).load_state_dict(sd, strict=True)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--data", "shapes:4", "--set", "num_classes=3",
                 "--out", str(tmp_path / "runs")]) == 2  # class count mismatch: one-line error

    # fine-tuning from that checkpoint with the heads only: the backbone body keeps its weights
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "layers=heads", "--set", "name=ft",
                 "--weights", str(run / "checkpoints" / "epoch_0001.safetensors"), "--data", "shapes:2",
                 "--out", str(tmp_path / "runs"), "--no-progress"])
    assert code == 0
    (ft,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("ft_")]
    tuned = load_file(ft / "checkpoints" / "epoch_0001.safetensors")
    body = [k for k in sd if k.startswith("backbone.body.")]
    assert body and all(torch.equal(tuned[k], sd[k]) for k in body)
    heads = [k for k in sd if k.startswith(("rpn.", "roi_heads.")) and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], sd[k]) for k in heads)

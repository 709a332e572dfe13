"""DDP: two gloo processes under torchrun end with equal weights, equal to a single process with the same total batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import StubSamples, make_model, read_jsonl, tiny_config  # noqa: E402

from maskrcnn.engine import train  # noqa: E402

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from safetensors.torch import save_file
    from test_engine import StubSamples, make_model, tiny_config
    from maskrcnn.engine import train

    torch.set_num_threads(1)
    out = sys.argv[1]
    model = make_model(use_rng=False)
    cfg = tiny_config(**json.loads(sys.argv[2]))
    result = train(cfg, StubSamples(16), StubSamples(4, seed=9), out_dir=out, run_dir=os.path.join(out, "run"),
                   model=model, progress=False, tensorboard=False, evaluate_fn=None, log_every=1, device="cpu")
    rank = int(os.environ["RANK"])
    save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, os.path.join(out, f"rank{{rank}}.safetensors"))
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as fh:
        json.dump({{"steps": result.global_step, "val": [h["loss"] for h in result.history]}}, fh)
""")


def torchrun_two(tmp_path: Path, script_text: str, *args: str) -> None:
    """Run ``script_text`` (formatted with ``tests``) in two gloo processes under torchrun; both must succeed."""
    script = tmp_path / "ddp_script.py"
    script.write_text(script_text.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         str(script), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_gloo_processes_match_each_other_and_a_single_process(tmp_path: Path) -> None:
    settings = {"epochs": 2, "images_per_gpu": 2, "repeat_factor_threshold": None}
    out = tmp_path / "ddp"
    torchrun_two(tmp_path, SCRIPT, str(out), json.dumps(settings))
    w0, w1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[0]["steps"] == info[1]["steps"] == 8  # 16 images / (2 ranks x 2 images) x 2 epochs
    assert info[0]["val"] == info[1]["val"] and len(info[0]["val"]) == 2

    # rank 0 alone wrote the run: one metrics file with rank-reduced losses, one checkpoint series
    rows = read_jsonl(out / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["type"] == "train"] == list(range(1, 9))
    ckpt = load_file(out / "run" / "checkpoints" / "epoch_0002.safetensors")
    assert all(torch.equal(ckpt[k], w0[k]) for k in w0)

    # one process with the same total batch (4) sees the same images per step: same weights up to
    # the order of floating-point sums (DDP averages the two ranks' gradients)
    model = make_model(use_rng=False)
    single = train(tiny_config(**{**settings, "images_per_gpu": 4}), StubSamples(16), StubSamples(4, seed=9),
                   out_dir=tmp_path, run_dir=tmp_path / "single", model=model, progress=False, tensorboard=False,
                   evaluate_fn=None)
    assert single.global_step == 8
    sd = model.state_dict()
    moved = 0
    for k in w0:
        torch.testing.assert_close(w0[k], sd[k], rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(make_model(use_rng=False).state_dict()[k], sd[k]))
    assert moved >= 10  # training changed the weights (the comparison is not between two initial models)
    assert info[0]["val"] == pytest.approx([h["loss"] for h in single.history], rel=1e-4)


BUDGET_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch
    sys.path.insert(0, {tests!r})
    from safetensors.torch import save_file
    from test_engine import StubModel, StubSamples, read_jsonl, tiny_config
    from maskrcnn.engine import train

    torch.set_num_threads(1)
    out, rank = sys.argv[1], int(os.environ["RANK"])
    now = [1000.0]
    time.perf_counter = lambda: now[0]  # a fake clock: rank 0's steps take 1 s, rank 1's 3 s

    class Ticking(StubModel):
        def forward(self, images, targets=None):
            if self.training:
                now[0] += 1.0 if rank == 0 else 3.0
            return super().forward(images, targets)

    torch.manual_seed(0)
    model = Ticking(use_rng=False)
    cfg = tiny_config(max_train_minutes=10.5 / 60, epochs=5, lr_schedule="cosine", warmup_iters=0,
                      learning_rate=0.02, base_batch_size=4)
    result = train(cfg, StubSamples(80), None, out_dir=out, run_dir=os.path.join(out, "run"), model=model,
                   progress=False, tensorboard=False, evaluate_fn=None, log_every=1, device="cpu")
    save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, os.path.join(out, f"rank{{rank}}.safetensors"))
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as fh:
        json.dump({{"steps": result.global_step, "reached": result.budget_reached}}, fh)
""")


def test_time_budget_is_decided_by_rank_zero(tmp_path: Path) -> None:
    """Ranks whose clocks disagree (one 3x slower) still stop at the same step, rank 0's, with one schedule."""
    import math

    out = tmp_path / "ddp"
    torchrun_two(tmp_path, BUDGET_SCRIPT, str(out))
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # rank 0 (1 s per step) fits 10 steps into 10.5 s; rank 1 alone would have stopped after 3
    assert info[0] == info[1] == {"steps": 10, "reached": True}
    w0, w1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    lrs = [r["lr"] for r in read_jsonl(out / "run" / "metrics.jsonl") if r.get("type") == "train"]
    assert lrs == pytest.approx([0.02 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)], rel=1e-9)

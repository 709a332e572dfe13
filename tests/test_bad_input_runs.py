"""Bad run directories and bad output places: each ends in one line naming the file and the fix,
or in a resume from the newest usable checkpoint with the skipped file named.

* Checkpoint files of a run (``checkpoints/epoch_NNNN[.state].safetensors``, ``last``) truncated,
  emptied, replaced by foreign files or edited: the resume skips the bad pair, says so, and
  continues from the previous pair to exactly the weights the uninterrupted run had.
* A full disk (``ENOSPC``) during a checkpoint write of ``train`` and during ``detect``'s output:
  one line, the previous files intact, no temporary file left.
* ``--out`` that is a file, lies under a file or cannot be written, for every command that writes.

The stub-model cases run the engine in-process (a run of 3 epochs of 5 steps made once per module);
the CLI cases use a tiny real model on 4 synthetic images.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import assert_clean_error, assert_one_line_error, run_cli  # noqa: E402
from test_engine import StubSamples, make_model, read_jsonl, tiny_config  # noqa: E402

from maskrcnn.config import Config  # noqa: E402
from maskrcnn.engine import train  # noqa: E402
from maskrcnn.engine.checkpoint import CheckpointManager, read_safetensors_metadata  # noqa: E402
from maskrcnn.errors import MaskRCNNError  # noqa: E402

torch.set_num_threads(1)

CFG = tiny_config(epochs=3, checkpoint_keep=3)
REAL_FSYNC = os.fsync


def _train(run_dir: Path, cfg: Config = CFG, model: torch.nn.Module | None = None, resume: Path | None = None):  # noqa: ANN202
    return train(cfg, StubSamples(10), None, out_dir=run_dir.parent, run_dir=None if resume else run_dir,
                 resume=resume, model=model or make_model(), progress=False, tensorboard=False,
                 evaluate_fn=None, log_every=1)


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, torch.Tensor]]]:
    """A finished 3-epoch stub run and the weights of each of its epoch checkpoints."""
    run = tmp_path_factory.mktemp("stub") / "run"
    _train(run)
    weights = {e: load_file(run / "checkpoints" / f"epoch_{e:04d}.safetensors") for e in (1, 2, 3)}
    return run, weights


@pytest.fixture
def run_copy(stub_run, tmp_path: Path) -> Path:  # noqa: ANN001
    run = tmp_path / "run"
    shutil.copytree(stub_run[0], run)
    return run


def _ck(run: Path, name: str) -> Path:
    return run / "checkpoints" / name


def _safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=meta)


def _rewrite_state(path: Path, change) -> None:  # noqa: ANN001 - change(state JSON, tensors) in place
    meta = read_safetensors_metadata(path)
    tensors = load_file(path)
    state = json.loads(meta["state"])
    change(state, tensors)
    _safetensors(path, tensors, {**meta, "state": json.dumps(state)})


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# every case breaks the newest pair (epoch 3): (breaker, fragment of the reason)
LATEST_BROKEN = {
    "truncated weights": (lambda r: _truncate(_ck(r, "epoch_0003.safetensors")), "truncated"),
    "truncated state": (lambda r: _truncate(_ck(r, "epoch_0003.state.safetensors")), "truncated"),
    "empty weights": (lambda r: _ck(r, "epoch_0003.safetensors").write_bytes(b""), "empty file"),
    "empty state": (lambda r: _ck(r, "epoch_0003.state.safetensors").write_bytes(b""), "empty file"),
    "text as weights": (lambda r: _ck(r, "epoch_0003.safetensors").write_text("hello, not a checkpoint\n" * 20),
                        "not a safetensors file"),
    "huge header length": (lambda r: _ck(r, "epoch_0003.state.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}"),
                           "header length is larger than the file"),
    "header not json": (lambda r: _ck(r, "epoch_0003.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 8),
                        "unreadable header"),
    "foreign weights": (lambda r: _safetensors(_ck(r, "epoch_0003.safetensors"), {"x": torch.ones(3)}, {}),
                        "not a training checkpoint"),
    "weights copied as state": (lambda r: shutil.copy(_ck(r, "epoch_0003.safetensors"), _ck(r, "epoch_0003.state.safetensors")),
                                "no 'state' metadata"),
    "state metadata not json": (lambda r: _safetensors(_ck(r, "epoch_0003.state.safetensors"), {"t": torch.ones(1)},
                                                       {"state": "{not json"}), "'state' is not JSON"),
    "state field missing": (lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                                     lambda s, t: s.pop("batches_done")), "batches_done=None"),
    "state field of wrong type": (lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                                           lambda s, t: s.update(epoch="three")), "epoch='three'"),
    "bad rng tensor": (lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                                lambda s, t: t.update({"rng/rank0/torch": torch.zeros(7, dtype=torch.uint8)})),
                       "torch generator state"),
    "bad python rng state": (lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                                      lambda s, t: s["rng"]["0"].update(python=[3, [1, 2], None])),
                             "random generator state of rank 0"),
    "optimizer tensor of another shape": (
        lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                 lambda s, t: t.update({"optimizer/0/momentum_buffer": torch.zeros(2, 2)})), "has shape (2, 2)"),
    "weights of another checkpoint": (lambda r: shutil.copy(_ck(r, "epoch_0002.safetensors"), _ck(r, "epoch_0003.safetensors")),
                                      "files of different checkpoints"),
    "weights with nan": (lambda r: _safetensors(
        _ck(r, "epoch_0003.safetensors"),
        {k: (v * float("nan") if k == "rpn.head.weight" else v) for k, v in load_file(_ck(r, "epoch_0003.safetensors")).items()},
        read_safetensors_metadata(_ck(r, "epoch_0003.safetensors"))), "contains NaN"),
    "weights of another model": (lambda r: _safetensors(
        _ck(r, "epoch_0003.safetensors"), make_model(num_classes=7).state_dict(),
        read_safetensors_metadata(_ck(r, "epoch_0003.safetensors"))), "does not fit the configured model"),
    "state file missing": (lambda r: _ck(r, "epoch_0003.state.safetensors").unlink(), "missing"),
    "bad moving-average record": (lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                                           lambda s, t: s.update(ema="0.999")), "moving-average record"),
    "raw weights of another model": (
        lambda r: _rewrite_state(_ck(r, "epoch_0003.state.safetensors"),
                                 lambda s, t: t.update({"train_model/rpn.head.weight": torch.zeros(2, 2)})),
        "does not fit the configured model"),
}


@pytest.mark.parametrize("case", list(LATEST_BROKEN))
def test_a_bad_latest_checkpoint_is_skipped_and_the_run_continues_exactly(case: str, stub_run, run_copy: Path) -> None:  # noqa: ANN001
    breaker, reason = LATEST_BROKEN[case]
    breaker(run_copy)
    model = make_model(seed=123)  # other initial weights: everything must come from the checkpoint
    result = _train(run_copy, model=model, resume=run_copy)
    assert result.global_step == 15 and result.epochs_completed == 3 and not result.interrupted
    # resumed from epoch 2 and trained epoch 3 again: the weights the original run had after epoch 3
    original = stub_run[1][3]
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k
    events = [r for r in read_jsonl(run_copy / "metrics.jsonl") if r.get("event") == "checkpoint_skipped"]
    bad, used = events[0]["message"], events[-1]["message"]
    assert "epoch_0003" in bad and reason.lower() in bad.lower() and "skipped" in bad
    assert "epoch_0002.safetensors" in used and "epoch 2, step 10" in used
    # the bad pair was replaced by the retrained one: the next resume needs no fallback
    assert (run_copy / "checkpoints" / "last").read_text().strip() == "epoch_0003"
    assert torch.equal(load_file(_ck(run_copy, "epoch_0003.safetensors"))["rpn.head.weight"], original["rpn.head.weight"])


POINTER_BROKEN = {
    "garbage path": (lambda p: p.write_text("../../etc/passwd\n"), "does not name a checkpoint"),
    "binary bytes": (lambda p: p.write_bytes(b"\x89\xff\x00\x17" * 50), "unreadable"),
    "empty": (lambda p: p.write_text(""), "empty"),
    "names a missing pair": (lambda p: p.write_text("epoch_0009\n"), "names epoch_0009, which has no checkpoint files"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "unreadable"),
}


@pytest.mark.parametrize("case", list(POINTER_BROKEN))
def test_a_bad_last_pointer_resumes_from_the_newest_pair(case: str, stub_run, run_copy: Path) -> None:  # noqa: ANN001
    breaker, reason = POINTER_BROKEN[case]
    pointer = run_copy / "checkpoints" / "last"
    breaker(pointer)
    model = make_model(seed=123)
    result = _train(run_copy, model=model, resume=run_copy)
    assert result.global_step == 15  # epoch 3's pair is complete: nothing left to train
    assert all(torch.equal(v, stub_run[1][3][k]) for k, v in model.state_dict().items())
    (event, used) = [r["message"] for r in read_jsonl(run_copy / "metrics.jsonl") if r.get("event") == "checkpoint_skipped"]
    assert str(pointer) in event and reason in event
    assert "epoch_0003.safetensors" in used


def test_a_missing_last_pointer_resumes_from_the_newest_pair(stub_run, run_copy: Path) -> None:  # noqa: ANN001
    (run_copy / "checkpoints" / "last").unlink()
    _truncate(_ck(run_copy, "epoch_0003.safetensors"))  # and the newest pair is bad as well
    model = make_model(seed=123)
    _train(run_copy, model=model, resume=run_copy)
    assert all(torch.equal(v, stub_run[1][3][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case,fragments", [
    ("all truncated", ("epoch_0003.safetensors", "truncated", "2 other checkpoint file(s) unusable", "start a new run")),
    ("only a bad pointer", ("last", "does not name a checkpoint", "start a new run")),
    ("another model", ("epoch_0003.safetensors", "does not fit the configured model", "config.yaml")),
])
def test_no_usable_checkpoint_is_one_line_naming_the_newest_bad_file(case: str, fragments: tuple[str, ...],
                                                                     run_copy: Path) -> None:
    cfg = CFG
    model = make_model()
    if case == "all truncated":
        for e in (1, 2, 3):
            _truncate(_ck(run_copy, f"epoch_{e:04d}.safetensors"))
    elif case == "only a bad pointer":
        for p in (run_copy / "checkpoints").glob("*.safetensors"):
            p.unlink()
        (run_copy / "checkpoints" / "last").write_text("nonsense")
    else:
        model = make_model(num_classes=7)
        cfg = CFG.replace(num_classes=7)
    before = {p.name: p.read_bytes() for p in (run_copy / "checkpoints").iterdir() if p.is_file()}
    with pytest.raises(MaskRCNNError) as info:
        _train(run_copy, cfg=cfg, model=model, resume=run_copy)
    assert_one_line_error(info, *fragments)
    assert {p.name: p.read_bytes() for p in (run_copy / "checkpoints").iterdir() if p.is_file()} == before  # nothing lost


# ============================================================================ full disk


def _enospc_when(fragment: str):  # noqa: ANN202
    """An ``os.fsync`` that fails with ENOSPC for files whose path contains ``fragment``."""
    def fsync(fd: int) -> None:
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        REAL_FSYNC(fd)
    return fsync


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_pair(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _enospc_when("epoch_0004.safetensors"))  # the weights, after the state file
    with pytest.raises(MaskRCNNError) as info:
        _train(run_copy, cfg=CFG.replace(epochs=4), resume=run_copy)
    assert_one_line_error(info, "epoch_0004.safetensors", "no space left on device", "free space", "--out")
    monkeypatch.undo()
    names = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert not any(n.startswith(".") for n in names)  # no temporary file left
    assert "epoch_0004.state.safetensors" not in names  # the half-written pair is gone
    mgr = CheckpointManager(run_copy)
    assert mgr.last() == "epoch_0003" and mgr.load()[2]["global_step"] == 15


# ============================================================================ CLI: real tiny model


REAL = dict(name="tiny", num_classes=4, backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32,
            mask_head_channels=8, mask_head_convs=1, image_resize_mode="none", image_min_dim=64,
            rpn_anchor_scales=[8, 16, 32, 64, 128], train_rois_per_image=16, pre_nms_limit_training=200,
            post_nms_rois_training=50, pre_nms_limit_inference=100, post_nms_rois_inference=20,
            detection_max_instances=10, images_per_gpu=2, epochs=2, learning_rate=0.01, base_batch_size=2,
            warmup_iters=1, num_workers=0, deterministic=True, seed=1)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch CLI run of a tiny real model on shapes:4."""
    root = tmp_path_factory.mktemp("cli")
    Config.create(**REAL).to_yaml(root / "c.yaml")
    result = run_cli("train", "--config", root / "c.yaml", "--data", "shapes:4", "--out", root / "runs", "--no-progress")
    assert result.code == 0, result.err
    (run,) = (root / "runs").iterdir()
    return run


@pytest.fixture
def cli_copy(cli_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / cli_run.name
    shutil.copytree(cli_run, run)
    return run


def test_cli_config_yaml_edited_into_garbage_uses_the_checkpoint_config(cli_copy: Path) -> None:
    (cli_copy / "config.yaml").write_bytes(b"\x00\xff garbage: [unclosed\n")
    result = run_cli("train", "--resume", cli_copy, "--set", "epochs=3", "--no-progress")
    assert result.code == 0, result.err
    assert "config.yaml" in result.err and "using the config stored in" in result.err
    assert Config.from_yaml(cli_copy / "config.yaml") == Config.create(**{**REAL, "epochs": 3, "class_names": [
        "BG", "square", "circle", "triangle"]})  # rewritten from the checkpoint's copy
    assert CheckpointManager(cli_copy).last() == "epoch_0003"


def test_cli_truncated_checkpoint_is_named_and_skipped(cli_copy: Path) -> None:
    _truncate(_ck(cli_copy, "epoch_0002.state.safetensors"))
    result = run_cli("train", "--resume", cli_copy, "--no-progress")
    assert result.code == 0, result.err
    assert "epoch_0002.state.safetensors: truncated" in result.err and "skipped" in result.err
    assert "resuming from" in result.err and "epoch_0001.safetensors" in result.err


@pytest.mark.parametrize("case,fragments", [
    ("no run.yaml", ("--data: required", "run.yaml", "pass the training data")),
    ("no checkpoint", ("--resume", "no checkpoint yet", "start a new run")),
    ("no such dir", ("--resume", "no such run directory")),
    ("auto without runs", ("--resume auto", "no run", "with a checkpoint", "--config and --data")),
    ("all checkpoints bad", ("epoch_0002.state.safetensors", "empty file", "no usable checkpoint", "start a new run")),
])
def test_cli_resume_errors_are_one_line(case: str, fragments: tuple[str, ...], cli_copy: Path, tmp_path: Path) -> None:
    resume: object = cli_copy
    if case == "no run.yaml":
        (cli_copy / "run.yaml").unlink()
    elif case == "no checkpoint":
        shutil.rmtree(cli_copy / "checkpoints")
    elif case == "no such dir":
        resume = tmp_path / "nothing_here"
    elif case == "all checkpoints bad":
        for p in (cli_copy / "checkpoints").glob("*.safetensors"):
            p.write_bytes(b"")
    args = ["train", "--resume", resume]
    if case == "auto without runs":
        args = ["train", "--resume", "auto", "--out", tmp_path / "empty_runs"]
    assert_clean_error(run_cli(*args), *fragments)


def test_cli_full_disk_during_train_is_one_line_and_loses_nothing(cli_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: p.read_bytes() for p in (cli_copy / "checkpoints").iterdir()}
    monkeypatch.setattr(os, "fsync", _enospc_when("epoch_0003.state.safetensors"))
    line = assert_clean_error(run_cli("train", "--resume", cli_copy, "--set", "epochs=3", "--no-progress"),
                              "epoch_0003.state.safetensors", "no space left on device", "--out elsewhere")
    assert "Traceback" not in line
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (cli_copy / "checkpoints").iterdir()} == before


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from PIL import Image

    from maskrcnn.data.synthetic import ShapesDataset

    folder = tmp_path / "images"
    folder.mkdir()
    ds = ShapesDataset(2, 64, 64, seed=3)
    for i in range(2):
        Image.fromarray(ds.load_image(i)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("target", ["detections.json", "img1.png"])
def test_cli_full_disk_during_detect_is_one_line_and_keeps_what_was_written(
        target: str, cli_run: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "det"
    weights = cli_run / "checkpoints" / "epoch_0002.safetensors"
    assert run_cli("detect", images, "--weights", weights, "--out", out, "--score", "0").code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(os, "fsync", _enospc_when(target))
    assert_clean_error(run_cli("detect", images, "--weights", weights, "--out", out, "--score", "0"),
                       target, "no space left on device", "--out")
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()  # no temporary file, no file lost
    assert after[target] == before[target]  # the earlier result is intact


# ============================================================================ output places


def _unwritable(tmp_path: Path, kind: str) -> Path:
    """An output path that cannot be used: an existing file, a path under a file, or a read-only folder."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    if kind == "file":
        return blocker
    if kind == "under a file":
        return blocker / "sub"
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("running as root: a read-only folder is writable (covered by 'under a file')")
    return folder / "out"


OUTPUT_COMMANDS = {
    "train": lambda out, root: ["train", "--config", "shapes_demo", "--data", "shapes:2", "--out", out],
    "detect": lambda out, root: ["detect", root / "img.png", "--weights", "w.safetensors", "--out", out],
    "evaluate": lambda out, root: ["evaluate", "--weights", "w.safetensors", "--data", "d.json", "--out", out],
    "convert": lambda out, root: ["convert", "src_folder", "--out", out / "x.json"],
    "plan": lambda out, root: ["plan", "--config", "shapes_demo", "--write", out / "c.yaml"],
    "demo": lambda out, root: ["demo", "--out", out],
    "export": lambda out, root: ["export", "--weights", "w.safetensors", "--out", out / "m.onnx"],
}


@pytest.mark.parametrize("kind", ["file", "under a file", "read-only folder"])
@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_an_unusable_output_place_is_one_line_before_any_work(command: str, kind: str, tmp_path: Path) -> None:
    out = _unwritable(tmp_path, kind)
    if command == "detect":
        (tmp_path / "img.png").write_bytes(b"not read before the check")
    # convert and plan write a file into ``out``: for kind "file" that folder is the file itself
    flag = "--write" if command == "plan" else "--out"
    result = run_cli(*OUTPUT_COMMANDS[command](out, tmp_path))
    line = assert_clean_error(result, flag, "a_file" if kind != "read-only folder" else "readonly")
    assert any(w in line for w in ("is a file", "cannot create", "not writable")), line


def test_unwritable_output_check_helpers(tmp_path: Path) -> None:
    from maskrcnn.utils.files import OutputError, ensure_output_dir, ensure_output_file

    made = ensure_output_dir(tmp_path / "new" / "deep", flag="--out")
    assert made.is_dir() and list(made.iterdir()) == []  # created, the probe removed
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"--out .*f: is a file, not a folder"):
        ensure_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="is a folder; pass a file name"):
        ensure_output_file(tmp_path / "new", flag="--out")

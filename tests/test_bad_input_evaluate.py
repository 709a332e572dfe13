"""Bad input to ``maskrcnn evaluate``: each case ends in one ``error:`` line naming the file or
option and the fix (exit 2), or in a reported skip (each unreadable image on stderr, counted in
the summary and listed in report.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from _bad_input import assert_clean_error, run_cli
from _evaluate_data import detecting_model, save_model, tiny_config, write_gt, write_images

from maskrcnn.inference.predictor import Predictor


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny 'cell'/'debris' checkpoint, two images and their detections."""
    root = tmp_path_factory.mktemp("bad_eval")
    model = detecting_model({1: 4.0})
    ck = save_model(model, root / "tiny.safetensors")
    images = write_images(root, 2)
    dets = Predictor(model, device="cpu").detect([str(p) for p in images], batch_size=2)
    return root, ck, images, dets


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut: found unreadable while evaluating


def _gt(ws, tmp: Path, categories: list[tuple[int, str]], images: list[Path] | None = None) -> Path:
    root, _, good, dets = ws
    images = images or good
    for p in images:
        if not (tmp / p.name).exists():
            (tmp / p.name).write_bytes(p.read_bytes())
    return write_gt(tmp / "gt.json", [tmp / p.name for p in images], dets[: len(images)], categories, {1: categories[0][0]})


def _json(tmp: Path, obj: object) -> Path:
    (tmp / "gt.json").write_text(json.dumps(obj))
    return tmp / "gt.json"


def _all_unreadable(ws, tmp: Path) -> Path:
    gt = _gt(ws, tmp, [(1, "cell"), (2, "debris")])
    for p in ws[2]:
        _truncate(tmp / p.name)
    return gt


def _other_classes_config(tmp: Path) -> Path:
    tiny_config(num_classes=5, class_names=None).to_yaml(tmp / "five.yaml")
    return tmp / "five.yaml"


# (name, make(ws, tmp) -> (extra args, data path), fragments of the one error line)
CASES: list[tuple[str, Callable[..., tuple[list[str], Path]], tuple[str, ...]]] = [
    ("classes_mismatch", lambda ws, t: ([], _gt(ws, t, [(1, "unicorn"), (2, "dragon")])),
     ("gt.json", "1 'unicorn'", "2 'dragon'", "tiny.safetensors", "id 1 is 'cell'", "rename")),
    ("category_missing_in_model", lambda ws, t: ([], _gt(ws, t, [(1, "cell"), (2, "debris"), (3, "spore")])),
     ("gt.json", "3 'spore'", "has no class for category", "rename")),
    ("empty_dataset", lambda ws, t: ([], _json(t, {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]})),
     ("gt.json", "no images")),
    ("all_images_unreadable", lambda ws, t: ([], _all_unreadable(ws, t)),
     ("gt.json", "none of its 2 images", "truncated", "fix or remove")),
    ("categories_empty", lambda ws, t: ([], _json(t, {"images": [], "annotations": [], "categories": []})),
     ("gt.json", "categories")),
    ("gt_not_json", lambda ws, t: (["--format", "coco"], (t / "gt.json", (t / "gt.json").write_text("{'images': ["))[0]),
     ("gt.json", "not valid json")),
    ("data_missing", lambda ws, t: ([], t / "nope.json"), ("nope.json",)),
    ("score_above_one", lambda ws, t: (["--score", "2"], _gt(ws, t, [(1, "cell")])), ("--score", "0 to 1")),
    ("score_negative", lambda ws, t: (["--score", "-0.1"], _gt(ws, t, [(1, "cell")])), ("--score", "0 to 1")),
    ("score_nan", lambda ws, t: (["--score", "nan"], _gt(ws, t, [(1, "cell")])), ("--score nan", "0 to 1")),
    ("batch_size_zero", lambda ws, t: (["--batch-size", "0"], _gt(ws, t, [(1, "cell")])), ("--batch-size", "at least 1")),
    ("max_images_zero", lambda ws, t: (["--max-images", "0"], _gt(ws, t, [(1, "cell")])), ("--max-images", "at least 1")),
    ("max_dets_below_10", lambda ws, t: (["--max-dets", "5"], _gt(ws, t, [(1, "cell")])), ("--max-dets 5", "at least 10")),
    ("weights_unknown", lambda ws, t: (["--weights", str(t / "nope.safetensors")], _gt(ws, t, [(1, "cell")])),
     ("nope.safetensors", "not found")),
    ("weights_not_a_model", lambda ws, t: (["--weights", str((t / "w.pth", (t / "w.pth").write_text("hello"))[0])],
                                           _gt(ws, t, [(1, "cell")])), ("w.pth", "state dict")),
    ("config_other_class_count", lambda ws, t: (["--config", str(_other_classes_config(t))], _gt(ws, t, [(1, "cell")])),
     ("num_classes", "config")),
]


@pytest.mark.parametrize("make, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_error_line(ws, tmp_path, make, fragments):
    extra, data = make(ws, tmp_path)
    args = ["evaluate", "--weights", str(ws[1]), "--data", str(data), "--out", str(tmp_path / "out"), "--device", "cpu"]
    res = run_cli(*args, *extra)  # a later --weights / --config replaces the default one
    assert_clean_error(res, *fragments)
    assert not (tmp_path / "out" / "report.json").exists()


def test_all_unreadable_images_are_each_listed_on_stderr_before_the_error(ws, tmp_path):
    gt = _all_unreadable(ws, tmp_path)
    res = run_cli("evaluate", "--weights", ws[1], "--data", gt, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_error(res, "none of its 2 images")
    skipped = [line for line in res.err_lines if line.startswith("skipped")]
    assert len(skipped) == 2 and "img0.png" in skipped[0] and "img1.png" in skipped[1]
    assert all("truncated" in line for line in skipped)


def test_an_unreadable_image_is_listed_counted_and_the_rest_evaluated(ws, tmp_path):
    gt = _gt(ws, tmp_path, [(1, "cell"), (2, "debris")])
    _truncate(tmp_path / "img1.png")
    res = run_cli("evaluate", "--weights", ws[1], "--data", gt, "--out", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    skipped = [line for line in res.err_lines if line.startswith("skipped")]
    assert len(skipped) == 1 and "img1.png" in skipped[0] and "truncated" in skipped[0]
    assert "images: 1 of 2 evaluated, 1 skipped (unreadable" in res.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [Path(s["image"]).name for s in report["skipped_images"]] == ["img1.png"]
    # img0 still scores against its own detections; img1's ground truth counts as missed
    assert report["coco"]["segm"]["AP"] > 0


def test_only_the_first_skipped_images_are_printed_and_the_rest_are_pointed_to(ws, tmp_path, monkeypatch):
    from maskrcnn.commands import evaluate as command

    monkeypatch.setattr(command, "SHOW_SKIPPED", 1)
    root, _, images, dets = ws
    extra = [tmp_path / f"copy{k}.png" for k in range(2)]
    for p in extra:
        p.write_bytes(images[1].read_bytes())
        _truncate(p)
    gt = write_gt(tmp_path / "gt.json", [*images[:1], *extra], [dets[0], dets[1], dets[1]], [(1, "cell")], {1: 1})
    for p in images[:1]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    res = run_cli("evaluate", "--weights", ws[1], "--data", gt, "--out", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    assert len([line for line in res.err_lines if line.startswith("skipped")]) == 1
    assert f"... and 1 more skipped images (in {tmp_path / 'out' / 'report.json'})" in res.err
    assert "images: 1 of 3 evaluated, 2 skipped" in res.out

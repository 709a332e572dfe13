"""``benchmarks/verify_matterport.py``: the comparison of Matterport's detections with ours, and how it
gets Matterport's code from a clone or a bare git dir (TensorFlow itself is never needed here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import verify_matterport as vm  # noqa: E402


def dets(rois: list[list[float]], classes: list[int], scores: list[float], size: int = 40) -> dict[str, np.ndarray]:
    """Matterport-style detections whose masks fill their (integer) boxes (y1, x1, y2, x2)."""
    masks = np.zeros((size, size, len(rois)), bool)
    for k, (y1, x1, y2, x2) in enumerate(rois):
        masks[int(y1):int(y2), int(x1):int(x2), k] = True
    return {"rois": np.array(rois, np.float64).reshape(-1, 4), "class_ids": np.array(classes, np.int32),
            "scores": np.array(scores, np.float32), "masks": masks}


REF = dets([[0, 0, 20, 20], [10, 15, 30, 38], [22, 2, 39, 12]], [1, 2, 1], [0.9, 0.8, 0.6])


def test_identical_detections_pass():
    r = vm.compare_image(REF, REF, threshold=0.5)
    assert (r["matterport"], r["ours"], r["matched"]) == (3, 3, 3)
    assert r["same_order"] and r["pass"]
    assert r["max_box_px"] == 0 and r["max_score_diff"] == 0 and r["min_mask_iou"] == 1.0


@pytest.mark.parametrize("shift, ok", [(0.4, True), (0.6, False)])
def test_box_tolerance_is_half_a_pixel(shift, ok):
    ours = dict(REF, rois=REF["rois"] + np.array([0, 0, shift, 0]))
    r = vm.compare_image(REF, ours)
    assert r["max_box_px"] == pytest.approx(shift)
    assert r["boxes_over_tol"] == (0 if ok else 3) and r["pass"] is ok


def test_score_and_mask_differences_fail():
    ours = dict(REF, scores=REF["scores"] + np.array([0, 2e-3, 0], np.float32), masks=REF["masks"].copy())
    ours["masks"][0:10, 0:20, 0] = False  # half of mask 0 gone: IoU 0.5
    r = vm.compare_image(REF, ours)
    assert r["scores_over_tol"] == 1 and r["max_score_diff"] == pytest.approx(2e-3, rel=1e-3)
    assert r["masks_under_tol"] == 1 and r["min_mask_iou"] == pytest.approx(0.5)
    assert not r["pass"]


def test_unmatched_detections_are_listed_with_the_threshold_edge():
    # ours misses the last one (score 0.6) and has another class for the second: both sides unmatched
    ours = dets([[0, 0, 20, 20], [10, 15, 30, 38]], [1, 3], [0.9, 0.8])
    r = vm.compare_image(REF, ours, threshold=0.5995)
    assert (r["matterport"], r["ours"], r["matched"]) == (3, 2, 1) and not r["pass"]
    sides = sorted((u["side"], u["index"], u["at_threshold"]) for u in r["unmatched"])
    assert sides == [("matterport", 1, False), ("matterport", 2, True), ("ours", 1, False)]
    assert r["unmatched_at_threshold"] == 1


def test_one_to_one_matching_takes_the_best_overlap_first():
    ref = dets([[0, 0, 20, 20], [0, 0, 20, 22]], [1, 1], [0.9, 0.8])
    ours = dets([[0, 0, 20, 22], [0, 0, 20, 20]], [1, 1], [0.8, 0.9])  # same boxes, other order
    r = vm.compare_image(ref, ours)
    assert r["matched"] == 2 and r["max_box_px"] == 0 and r["pass"] and not r["same_order"]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("bare", [True, False])
def test_source_from_a_clone_or_a_bare_git_dir(tmp_path, bare):
    work = tmp_path / "Mask_RCNN"
    (work / "mrcnn").mkdir(parents=True)
    (work / "mrcnn" / "model.py").write_text("MARK = 1\n")
    (work / "LICENSE").write_text("MIT\n")
    (work / "big.bin").write_bytes(b"\0" * 10)
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    source = work
    if bare:
        _git("clone", "-q", "--bare", str(work), str(tmp_path / "bare.git"), cwd=tmp_path)
        source = tmp_path / "bare.git"
    dest = tmp_path / "dest"
    assert vm.ensure_source(dest, str(source)) == commit
    assert (dest / "mrcnn" / "model.py").read_text() == "MARK = 1\n"
    assert (dest / "LICENSE").exists() and not (dest / "big.bin").exists()
    assert vm.ensure_source(dest, "/nonexistent") == commit  # already there: the source is not read again


def test_equal_boxes_are_matched_by_the_closest_score():
    # two 1-pixel-high boxes at the window's edge (clipped to zero height, +1 when denormalised)
    ref = dets([[0, 5, 1, 30], [0, 5, 1, 30]], [4, 4], [0.61, 0.60])
    ours = dets([[0, 5, 1, 30], [0, 5, 1, 30]], [4, 4], [0.6000005, 0.6100004])
    r = vm.compare_image(ref, ours)
    assert r["matched"] == 2 and r["max_score_diff"] < 1e-5 and r["pass"]

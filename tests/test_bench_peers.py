"""The peers of ``benchmarks/nuclei.py``: torchvision given our pipeline sees our samples at our size
and normalisation; the YOLO-seg folder written for Ultralytics reads back as the same instances; the
package never imports Ultralytics (AGPL)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from maskrcnn import Config  # noqa: E402
from maskrcnn.data.resize import plan_resize  # noqa: E402
from maskrcnn.modeling.transform import normalize_input  # noqa: E402

NUCLEI_LIKE = dict(name="n", num_classes=2, backbone="resnet18", image_resize_mode="crop", inference_resize_mode="pad64",
                   image_min_dim=64, image_min_scale=2.0, image_normalization="per_image", invert_bright_images=True,
                   rpn_anchor_scales=[8, 16, 32, 64, 128], train_rois_per_image=32, detection_max_instances=77,
                   detection_nms_threshold=0.3)


def test_torchvision_with_our_pipeline_keeps_our_size_settings_and_normalisation() -> None:
    from peers_torchvision import build_tv_ours_pipeline, set_inference_size

    cfg = Config(**NUCLEI_LIKE)
    model = build_tv_ours_pipeline(cfg)
    rh = model.roi_heads
    assert (rh.detections_per_img, rh.nms_thresh, rh.fg_bg_sampler.batch_size_per_image) == (77, 0.3, 32)
    assert [s[0] for s in model.rpn.anchor_generator.sizes] == [8, 16, 32, 64, 128]

    g = torch.Generator().manual_seed(0)
    bright = 0.6 + 0.4 * torch.rand(3, 64, 64, generator=g)  # a histology-like image: inverted, then standardised
    model.train()
    batch, _ = model.transform([bright], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                           "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}])
    assert batch.image_sizes == [(64, 64)]  # a training crop is not resized
    expected = normalize_input(bright, torch.zeros(3), torch.ones(3), "per_image", True)
    torch.testing.assert_close(batch.tensors[0, :, :64, :64], expected)
    assert float(expected.mean(dim=(1, 2)).abs().max()) < 1e-5

    model.eval()
    for h, w in [(256, 320), (260, 347), (520, 696)]:  # inference: pad64's 2x, as our model detects
        scale = set_inference_size(model, cfg, h, w)
        info = plan_resize(h, w, "pad64", cfg.image_min_dim, cfg.image_max_dim, cfg.image_min_scale)
        assert scale == info.scale == 2.0
        batch, _ = model.transform([torch.rand(3, h, w, generator=g)])
        (rh_, rw_), = batch.image_sizes
        assert abs(rh_ - info.scaled_size[0]) <= 1 and abs(rw_ - info.scaled_size[1]) <= 1


def test_yolo_seg_folder_reads_back_as_the_same_instances(tmp_path: Path) -> None:
    import importlib.util
    import subprocess

    if importlib.util.find_spec("ultralytics") is None:  # not importorskip: importing it here would patch PIL
        pytest.skip("needs ultralytics (pip install 'maskrcnn[bench-peers]')")

    from maskrcnn.data.formats import load_dataset
    from maskrcnn.data.synthetic.shapes import ShapesDataset

    # written in a child process: importing ultralytics patches PIL's image opening for the whole process
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    script = (f"import sys; sys.path.insert(0, {str(bench)!r}); from pathlib import Path\n"
              "from maskrcnn.data.synthetic.shapes import ShapesDataset\nfrom peers_yolo import write_yolo_dataset\n"
              "data, paths, dropped = write_yolo_dataset(ShapesDataset(2, 96, 128, seed=1), ShapesDataset(3, 96, 128, seed=2), "
              f"Path({str(tmp_path / 'yolo')!r}))\nprint(dropped, sorted(paths), all(p.is_file() for p in paths.values()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "0 [0, 1, 2] True"  # no mask left out; the val images' paths
    val = ShapesDataset(3, 96, 128, seed=2)
    back = load_dataset(tmp_path / "yolo", split="val")
    assert len(back.image_ids) == 3
    for i in range(3):
        ours, _ = val.load_mask(i)
        theirs, class_ids = back.load_mask(int(back.image_ids[i]))
        assert np.array_equal(back.load_image(int(back.image_ids[i])), val.load_image(i))
        assert theirs.shape[2] == ours.shape[2] and set(class_ids.tolist()) == {1}
        for k in range(ours.shape[2]):  # one polygon per mask, traced by Ultralytics' rule
            inter = np.logical_and(ours[:, :, k], theirs[:, :, k]).sum()
            union = np.logical_or(ours[:, :, k], theirs[:, :, k]).sum()
            assert inter / union > 0.8


def _ultralytics_imports(path: Path) -> list[int]:
    """Line numbers of the import statements of ``ultralytics`` (or a submodule) in ``path``."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "ultralytics" or n.startswith("ultralytics.") for n in names):
            lines.append(node.lineno)
    return lines


def test_the_package_never_imports_ultralytics() -> None:
    """Ultralytics is AGPL-3.0: only the benchmark's YOLO peer may import it, never the package."""
    import maskrcnn

    package = Path(maskrcnn.__file__).resolve().parent
    assert {str(p.relative_to(package)): n for p in package.rglob("*.py") if (n := _ultralytics_imports(p))} == {}
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "peers_yolo.py"
    assert len(_ultralytics_imports(bench)) >= 2  # the check finds real imports (from ultralytics ..., ultralytics.utils ...)


def test_yolo_trains_with_the_benchmark_threads_not_its_own() -> None:
    """Ultralytics' device selection sets torch to cpu_count - 1 threads; the budget callback puts
    back the benchmark's count when its training starts, and its clock starts then."""
    from maskrcnn.engine.budget import TimeBudget
    from peers_yolo import _BudgetCallback

    old = torch.get_num_threads()
    try:
        clock = TimeBudget(60.0)
        cb = _BudgetCallback(clock, threads=2)
        torch.set_num_threads(1)  # what Ultralytics does on a 2-core machine
        cb.train_start(None)
        assert torch.get_num_threads() == 2
        assert not clock.exhausted()
    finally:
        torch.set_num_threads(old)


def test_nuclei_table_gets_a_tta_row_with_its_own_scores():
    """benchmarks/nuclei.py --tta: after ours' row, a row of the same training with the test-time
    scores and evaluation time; other rows unchanged."""
    from nuclei import table_rows

    ours = {"name": "ours", "steps": 10, "mask_ap": 0.4, "mask_ap50": 0.8, "eval_s": 10.0,
            "tta": {"views": ["hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose"],
                    "mask_ap": 0.5, "mask_ap50": 0.85, "eval_s": 60.0}}
    peer = {"name": "yolo11n-seg", "steps": 3, "mask_ap": 0.3, "mask_ap50": 0.7, "eval_s": 5.0}
    rows = table_rows([ours, peer])
    assert [r["name"] for r in rows] == ["ours", "ours +TTA dihedral", "yolo11n-seg"]
    assert (rows[1]["steps"], rows[1]["mask_ap"], rows[1]["mask_ap50"], rows[1]["eval_s"]) == (10, 0.5, 0.85, 60.0)
    assert rows[0]["mask_ap"] == 0.4 and rows[2] is peer
    flips = table_rows([{**ours, "tta": {**ours["tta"], "views": ["hflip", "vflip", "x1.25"]}}])
    assert flips[1]["name"] == "ours +TTA hflip,vflip,x1.25"
    scaled = table_rows([{**ours, "tta": {**ours["tta"], "views": ours["tta"]["views"] + ["x1.25"]}}])
    assert scaled[1]["name"] == "ours +TTA dihedral,x1.25"

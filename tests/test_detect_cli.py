"""``maskrcnn detect IMAGES_OR_DIRS --weights W --out DIR``: overlays, COCO results JSON, skipped
files and one-line errors (exit 2), run through ``maskrcnn.cli.main`` on tiny PNGs and a tiny
checkpoint saved with ``save_checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn import Config
from maskrcnn.cli import main
from maskrcnn.modeling import build_model
from maskrcnn.weights import save_checkpoint

skimage_data = pytest.importorskip("skimage.data")


def tiny(**kw) -> Config:
    values = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                  num_classes=3, class_names=["BG", "cell", "debris"], image_min_dim=64, image_max_dim=96,
                  pre_nms_limit_inference=300, post_nms_rois_inference=60, detection_max_instances=6)
    values.update(kw)
    return Config(**values)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of PNGs (one in a subfolder with a repeated name, one corrupt) and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    model = build_model(tiny())
    with torch.no_grad():
        # an untrained model made to detect: confident class 1/2 scores (about 0.99, over --score 0.5
        # for most), masks covering part of each box; boxes and masks still follow the image content
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-6.0, 4.0, 3.5]))
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.add_(5.0)
    ck = save_checkpoint(model, model.config, root / "tiny.safetensors")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    photos = {
        imgs / "astronaut.png": np.array(Image.fromarray(skimage_data.astronaut()).resize((80, 64))),
        imgs / "coffee.png": np.array(Image.fromarray(skimage_data.coffee()).resize((90, 60))),
        imgs / "sub" / "astronaut.png": np.array(Image.fromarray(skimage_data.chelsea()).resize((70, 56))),
    }
    for path, arr in photos.items():
        Image.fromarray(arr).save(path)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a truncated PNG
    (imgs / "notes.txt").write_text("not an image")
    return root, ck, imgs, photos


def test_detect_writes_overlays_and_coco_json(workspace, tmp_path, capsys):
    root, ck, imgs, photos = workspace
    out = tmp_path / "out"
    rc = main(["detect", str(imgs), "--weights", str(ck), "--out", str(out), "--score", "0.5", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.png" in captured.out + captured.err and "Traceback" not in captured.err
    assert "3 images" in captured.out and "skipped 1" in captured.out
    # one overlay per readable image (the repeated name gets a suffix), at the image's size
    assert sorted(p.name for p in out.glob("*.png")) == ["astronaut.png", "astronaut_2.png", "coffee.png"]

    from pycocotools.coco import COCO

    gt = COCO(str(out / "images.json"))
    assert sorted(gt.getImgIds()) == [1, 2, 3]  # ids count the images written, in sorted order (broken.png skipped)
    skipped = json.loads((out / "images.json").read_text())["skipped"]
    assert [s["file_name"] for s in skipped] == [str(imgs / "broken.png")] and "corrupt PNG" in skipped[0]["error"]
    by_id = {i["id"]: i for i in json.loads((out / "images.json").read_text())["images"]}
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["cell", "debris"]
    dt = gt.loadRes(str(out / "detections.json"))
    results = json.loads((out / "detections.json").read_text())
    assert len(dt.getAnnIds()) == len(results) > 0
    assert all(r["score"] >= 0.5 for r in results)

    # the same detections as the Python API with the same threshold
    predictor = maskrcnn.load(ck, device="cpu")
    for image_id, info in by_id.items():
        path = Path(info["file_name"])
        assert path in photos and (info["height"], info["width"]) == photos[path].shape[:2]
        det = predictor.detect(path, score_threshold=0.5)[0]
        mine = [r for r in results if r["image_id"] == image_id]
        assert all(r["file_name"] == str(path) for r in mine)
        assert len(mine) == len(det) > 0
        np.testing.assert_allclose([r["bbox"] for r in mine],
                                   np.c_[det.boxes[:, :2], det.boxes[:, 2:] - det.boxes[:, :2]], atol=1e-4)
        assert [r["category_id"] for r in mine] == det.class_ids.tolist()
        for ann_id, mask in zip(dt.getAnnIds(imgIds=[image_id]), det.masks):  # RLE decodes to the masks
            assert np.array_equal(dt.annToMask(dt.anns[ann_id]), mask)
        # the overlay: same size as the image, changed on the detected masks
        name = "astronaut_2.png" if path.parent.name == "sub" else path.name
        over = np.asarray(Image.open(out / name).convert("RGB")).astype(int)
        assert over.shape == photos[path].shape
        union = det.masks.any(axis=0)
        changed = (over != photos[path]).any(axis=2)
        assert union.sum() > 0 and changed[union].mean() > 0.9
    assert {r["image_id"] for r in results} <= set(by_id)


def test_batch_size_does_not_change_results(workspace, tmp_path, capsys):
    root, ck, imgs, photos = workspace
    outs = []
    for bs in ("1", "3"):
        out = tmp_path / f"out{bs}"
        assert main(["detect", str(imgs / "coffee.png"), str(imgs / "coffee.png"), str(imgs / "astronaut.png"),
                     "--weights", str(ck), "--out", str(out), "--batch-size", bs, "--no-overlays", "--device", "cpu"]) == 0
        assert not list(out.glob("*.png"))
        outs.append(json.loads((out / "detections.json").read_text()))
    a, b = outs
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"], x["file_name"]) == (y["image_id"], y["category_id"], y["file_name"])
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-3)
    capsys.readouterr()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_input(workspace, tmp_path, capsys):
    root, ck, imgs, _ = workspace
    missing = tmp_path / "nope"
    assert main(["detect", str(imgs), str(missing), "--weights", str(ck), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_missing_weights(workspace, tmp_path, capsys):
    root, ck, imgs, _ = workspace
    missing = tmp_path / "model.pth"
    assert main(["detect", str(imgs), "--weights", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "not found" in err


def test_checkpoint_for_other_class_count(workspace, tmp_path, capsys):
    root, ck, imgs, _ = workspace
    cfg = tmp_path / "five.yaml"
    tiny(num_classes=5, class_names=None).to_yaml(cfg)
    assert main(["detect", str(imgs), "--weights", str(ck), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "num_classes=3" in err and "5" in err and "num_classes: 3" in err


def test_jsonl_streaming_matches_json(workspace, tmp_path, capsys):
    """--jsonl writes the same detections as the JSON path, one line per detection."""
    _, ck, imgs, _ = workspace
    one = imgs / "astronaut.png"
    assert main(["detect", str(one), "--weights", str(ck), "--out", str(tmp_path / "a"), "--device", "cpu",
                 "--no-overlays"]) == 0
    assert main(["detect", str(one), "--weights", str(ck), "--out", str(tmp_path / "b"), "--device", "cpu",
                 "--jsonl"]) == 0
    ref = json.loads((tmp_path / "a" / "detections.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "b" / "detections.jsonl").read_text().splitlines() if x.strip()]
    assert len(ref) > 0 and len(lines) == len(ref)
    assert [d["segmentation"]["counts"] for d in lines] == [d["segmentation"]["counts"] for d in ref]


def test_tile_flag_equals_untiled_when_one_tile_covers_the_image(workspace, tmp_path, capsys):
    _, ck, imgs, _ = workspace
    one = imgs / "astronaut.png"
    h, w = np.asarray(Image.open(one)).shape[:2]
    assert main(["detect", str(one), "--weights", str(ck), "--out", str(tmp_path / "a"), "--device", "cpu",
                 "--no-overlays"]) == 0
    assert main(["detect", str(one), "--weights", str(ck), "--out", str(tmp_path / "t"), "--device", "cpu",
                 "--tile", str(max(h, w)), "--tile-overlap", "8"]) == 0
    ref = json.loads((tmp_path / "a" / "detections.json").read_text())
    tiled = json.loads((tmp_path / "t" / "detections.json").read_text())
    assert len(ref) > 0 and len(tiled) == len(ref)
    assert sorted(round(d["score"], 5) for d in tiled) == sorted(round(d["score"], 5) for d in ref)


def test_tile_overlap_not_smaller_than_tile_is_an_error(workspace, tmp_path, capsys):
    _, ck, imgs, _ = workspace
    assert main(["detect", str(imgs), "--weights", str(ck), "--out", str(tmp_path / "o"), "--tile", "64"]) == 2
    assert "--tile-overlap 128" in _one_line_error(capsys)


def test_tta_flag_detects_as_the_api_with_those_views(workspace, tmp_path, capsys):
    """--tta flips: the Python API's result with tta_views [hflip, vflip, rot180], not the plain one;
    a bad --tta is a one-line error naming the views."""
    root, ck, imgs, photos = workspace
    out = tmp_path / "out"
    assert main(["detect", str(imgs / "coffee.png"), "--weights", str(ck), "--out", str(out), "--no-overlays",
                 "--tta", "flips", "--score", "0.3", "--device", "cpu"]) == 0
    results = json.loads((out / "detections.json").read_text())
    fused = maskrcnn.load(ck, device="cpu", tta_views=["hflip", "vflip", "rot180"]).detect(imgs / "coffee.png", score_threshold=0.3)[0]
    plain = maskrcnn.load(ck, device="cpu").detect(imgs / "coffee.png", score_threshold=0.3)[0]
    assert len(results) == len(fused) > 0
    np.testing.assert_allclose([r["score"] for r in results], fused.scores, atol=1e-6)
    assert not (len(plain) == len(fused) and np.allclose(plain.scores, fused.scores))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["detect", str(imgs / "coffee.png"), "--weights", str(ck), "--out", str(out), "--tta", "rot45"])
    err = capsys.readouterr().err
    assert "--tta" in err and "rot45" in err and "dihedral" in err

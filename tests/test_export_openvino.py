"""``maskrcnn export --format openvino``: the ONNX graph converted to OpenVINO's IR and run by
:class:`~maskrcnn.export.runtime.OpenVinoPredictor` (CPU plugin, fp32) equals the eager model in
exact mode on real photographs, at batch 1 and 3 with different sizes, in the nuclei preset's
resize mode too, and gives empty outputs when nothing is detected. (OpenVINO orders its float
operations differently from PyTorch: boxes agree within 1e-3 px, scores and mask probabilities
within 1e-4.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("openvino")

import maskrcnn  # noqa: E402
from maskrcnn.export.onnx import export_model  # noqa: E402
from maskrcnn.export.runtime import OpenVinoPredictor  # noqa: E402
from maskrcnn.inference.predictor import Predictor  # noqa: E402

from _bad_input import assert_clean_error, run_cli  # noqa: E402
from test_export_onnx import PHOTOS, _images, checkpoint_and_photos  # noqa: E402
from test_predictor_inputs import biased_model, photo  # noqa: E402


def assert_close(eager: list[dict], ov: list[dict]) -> None:
    assert len(eager) == len(ov)
    for e, o in zip(eager, ov):
        assert len(e["labels"]) > 0 and torch.equal(e["labels"], o["labels"])
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(o["scores"], e["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["mask_probs"], e["mask_probs"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw", [{}, dict(image_resize_mode="pad64", image_normalization="per_image",
                                        invert_bright_images=True, image_min_scale=1.5)], ids=["minmax", "pad64 like nuclei"])
def test_openvino_equals_eager_exact_mode(kw, tmp_path):
    model = biased_model(**kw)
    xml, side = export_model(model, tmp_path / "model.xml", fmt="openvino")
    assert (tmp_path / "model.bin").is_file() and sorted(json.loads(side.read_text())["files"]) == ["model.bin", "model.xml"]
    ov = OpenVinoPredictor(xml, threads=1)
    eager = Predictor(model)
    for which in (PHOTOS[:1], PHOTOS):
        images = _images(which)
        with torch.no_grad():
            ref = eager._detect_raw(images, None)
        assert_close(ref, ov._detect_raw(images, None))


def test_openvino_no_detection_is_empty(tmp_path):
    model = biased_model()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([12.0, -12.0, -12.0, -12.0]))
    xml, _ = export_model(model, tmp_path / "none.xml", fmt="openvino")
    dets = maskrcnn.load(xml, device="cpu").detect([photo(60, 80), photo(40, 50, "coffee")])
    assert [len(d) for d in dets] == [0, 0] and dets[0].masks.shape == (0, 60, 80)


def test_cli_export_openvino_and_detect_match_the_checkpoint(tmp_path):
    _, ck, images = checkpoint_and_photos(tmp_path)
    r = run_cli("export", "--weights", ck, "--format", "openvino", "--out", tmp_path / "ov")
    assert r.code == 0, r.err
    xml = tmp_path / "ov" / "model.xml"
    outs = {}
    for key, weights in (("ck", ck), ("ov", xml)):
        r = run_cli("detect", images, "--weights", weights, "--out", tmp_path / key, "--score", "0.3", "--no-overlays")
        assert r.code == 0, r.err
        outs[key] = json.loads((tmp_path / key / "detections.json").read_text())
    assert len(outs["ck"]) == len(outs["ov"]) > 0
    for x, y in zip(outs["ck"], outs["ov"]):
        assert (x["file_name"], x["category_id"]) == (y["file_name"], y["category_id"])
        np.testing.assert_allclose(y["bbox"], x["bbox"], atol=2e-3)
        assert abs(x["score"] - y["score"]) <= 1e-4
    # the weights file is part of the export: without it, or changed, one line
    (tmp_path / "ov" / "model.bin").write_bytes(b"\0" * 100)
    assert_clean_error(run_cli("detect", images, "--weights", xml, "--out", tmp_path / "x"),
                       "model.json", "does not match model.bin", "export")
    (tmp_path / "ov" / "model.bin").unlink()
    assert_clean_error(run_cli("detect", images, "--weights", xml, "--out", tmp_path / "x"),
                       "model.bin", "missing", "export")

"""TFLite export (``maskrcnn export --format tflite``, :mod:`maskrcnn.export.tflite`): the dense parts
in the file at a fixed size, the glue in our runtime.

Always run (no converter needed): the glue (:class:`SplitGraph`: fixed ``[1, C, S, S]`` network
input, RoIs in fixed-size zero-padded chunks, the label's channel of all-class mask logits) with
the dense parts run by the eager modules at the file's shapes equals the eager model in exact mode
at the export's fixed size, within the ONNX export's 1e-4, on real photographs at batch 1 and 2
with different sizes, and gives empty outputs when nothing is detected.

With ``litert-torch`` and ``ai-edge-litert`` installed (the ``tflite`` extra; ~900 MB, not in
``.[test]``, so these skip in CI): a tiny model exported through the CLI and run by LiteRT's
interpreter gives the eager model's detections. XNNPACK's fp32 kernels sum in another order than
PyTorch's (measured: boxes within 2e-5 px, scores 3e-7, mask probabilities 1e-5 on these images):
boxes within 1e-3 px, scores and mask probabilities within 1e-4, labels equal, as the OpenVINO test.
``--int8`` (dynamic range) writes a smaller file whose detections stay near the exact ones, and
``--validation`` measures it against the exact model at the same fixed size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.export import tflite
from maskrcnn.export.runtime import graph_inputs
from maskrcnn.export.tflite import SplitGraph, TorchParts, fixed_size_config, fixed_size_model, part_shapes
from maskrcnn.inference.predictor import Predictor

from _bad_input import assert_one_line_error
from test_export_onnx import PHOTOS, _images
from test_predictor_inputs import biased_model, photo

IMGSZ = 128


def run_graph(graph: SplitGraph, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``graph`` on the padded batch of ``images``, outputs split by image (as ``ExportedPredictor``)."""
    feed = graph_inputs(images)
    with torch.no_grad():
        boxes, scores, labels, probs, index = graph(torch.from_numpy(feed["images"]), torch.from_numpy(feed["sizes"]))
    return [{"boxes": boxes[index == k], "scores": scores[index == k], "labels": labels[index == k],
             "mask_probs": probs[index == k]} for k in range(len(images))]


def assert_close(eager: list[dict], other: list[dict], box_tol: float = 1e-4, tol: float = 1e-4) -> None:
    assert len(eager) == len(other)
    for e, o in zip(eager, other):
        assert len(e["labels"]) > 0 and torch.equal(e["labels"], o["labels"])
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=box_tol, rtol=0)
        for key in ("scores", "mask_probs"):
            torch.testing.assert_close(o[key], e[key].float(), atol=tol, rtol=0, msg=key)


@pytest.mark.parametrize("kw", [{}, dict(image_resize_mode="pad64", image_min_scale=1.5),
                                dict(image_resize_mode="crop", inference_resize_mode="pad64")], ids=["minmax", "pad64", "crop"])
def test_fixed_size_config_detects_in_a_square_frame(kw):
    config = fixed_size_config(biased_model(**kw).config, 96)  # 96: no multiple of 64, as pad64 would want
    assert (config.detect_resize_mode, config.image_min_dim, config.image_max_dim) == ("square", 96, 96)
    assert config.image_min_scale == 0 and not config.fast
    config = fixed_size_config(config, IMGSZ)
    assert part_shapes(config) == {"features": (1, 3, IMGSZ, IMGSZ), "box_head": (tflite.BOX_ROWS, 16, 7, 7),
                                   "mask_head": (tflite.MASK_ROWS, 16, 14, 14)}
    with pytest.raises(Exception) as exc:
        fixed_size_config(config, 100)
    assert_one_line_error(exc, "--imgsz 100", "multiple of", "96")


@pytest.mark.parametrize("rows", [None, (7, 5)], ids=["file-rows", "small-chunks-padded"])
def test_split_glue_equals_eager_exact_mode_at_the_fixed_size(rows, monkeypatch):
    """Batch 1 and 3 images of different sizes; with 7 / 5 rows per run the 60 proposals and the
    detections take several chunks, the last one padded."""
    if rows is not None:
        monkeypatch.setattr(tflite, "BOX_ROWS", rows[0])
        monkeypatch.setattr(tflite, "MASK_ROWS", rows[1])
    model = fixed_size_model(biased_model(), IMGSZ)
    graph = SplitGraph(model, TorchParts(model))  # TorchParts refuses any shape but the file's
    eager = Predictor(model)
    for which in (PHOTOS[:1], PHOTOS):
        images = _images(which)
        with torch.no_grad():
            ref = eager._detect_raw(images, None)
        assert_close(ref, run_graph(graph, images))


def test_split_glue_with_no_detection_gives_empty_outputs():
    model = biased_model()
    with torch.no_grad():  # background wins everywhere
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([12.0, -12.0, -12.0, -12.0]))
    model = fixed_size_model(model, IMGSZ)
    out = run_graph(SplitGraph(model, TorchParts(model)), _images(PHOTOS[:2]))
    assert [tuple(o["mask_probs"].shape) for o in out] == [(0, 28, 28), (0, 28, 28)]
    assert all(o["boxes"].shape == (0, 4) and len(o["scores"]) == len(o["labels"]) == 0 for o in out)


# ---------------------------------------------------------------------------- with the converter
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(tiny model, its .tflite exported by the CLI at IMGSZ): converted once (~20 s)."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from _bad_input import run_cli
    from maskrcnn.weights import save_checkpoint

    root = tmp_path_factory.mktemp("tflite")
    model = biased_model()
    ck = save_checkpoint(model, model.config, root / "tiny.safetensors")
    result = run_cli("export", "--weights", ck, "--format", "tflite", "--imgsz", str(IMGSZ), "--out", root / "deploy")
    assert result.code == 0, result.err
    return model, root / "deploy" / "model.tflite"


def test_tflite_equals_eager_exact_mode_at_the_fixed_size(exported):
    from maskrcnn.export.runtime import TFLitePredictor

    model, path = exported
    runtime = maskrcnn.load(path, device="cpu")
    assert isinstance(runtime, TFLitePredictor)
    eager = Predictor(fixed_size_model(model, IMGSZ))
    for which in (PHOTOS[:1], PHOTOS):
        images = _images(which)
        with torch.no_grad():
            ref = eager._detect_raw(images, None)
        assert_close(ref, runtime._detect_raw(images, None), box_tol=1e-3)
    arrays = [photo(h, w, name) for h, w, name in PHOTOS]
    for a, b in zip(eager.detect(arrays), runtime.detect(arrays)):  # Detections with pasted masks
        assert np.array_equal(a.class_ids, b.class_ids) and a.class_names == b.class_names
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3, rtol=0)
        assert a.masks.shape == b.masks.shape and a.masks.any()
        assert (a.masks != b.masks).sum() <= 1e-4 * a.masks.size


def test_tflite_with_no_detection_gives_empty_outputs(exported):
    """The file's dense parts with a glue whose score threshold nothing passes: empty, not an error."""
    from maskrcnn.export.tflite import TFLiteParts

    model, path = exported
    glue = fixed_size_model(model, IMGSZ)
    glue.roi_heads.box_predictor.score_thresh = 0.9999
    out = run_graph(SplitGraph(glue, TFLiteParts(path, threads=1)), _images(PHOTOS[:2]))
    assert [tuple(o["mask_probs"].shape) for o in out] == [(0, 28, 28), (0, 28, 28)]
    dets = maskrcnn.load(path, device="cpu").detect(photo(60, 80), score_threshold=0.9999)
    assert len(dets[0]) == 0 and dets[0].masks.shape == (0, 60, 80)


def test_tflite_sidecar_says_what_is_in_the_file_and_what_is_glue(exported):
    from ai_edge_litert.interpreter import Interpreter

    from maskrcnn.export.onnx import read_sidecar

    _, path = exported
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model_format"] == "tflite" and read_sidecar(path)[0].detect_resize_mode == "square"
    assert meta["config"]["image_max_dim"] == meta["tflite"]["imgsz"] == IMGSZ
    assert list(meta["tflite"]["signatures"]) == ["features", "box_head", "mask_head"]
    assert {"proposals", "roi_align", "detections"} <= set(meta["tflite"]["glue"]) and "roi_align" in meta["tflite"]["why"]
    found = Interpreter(model_path=str(path)).get_signature_list()
    assert sorted(found) == ["box_head", "features", "mask_head"]
    assert len(found["features"]["outputs"]) == 15  # 5 levels x (features, logits, deltas)


def test_tflite_int8_is_smaller_close_and_validated_at_the_fixed_size(exported, tmp_path):
    """``--int8 --validation DATA``: the dataset is the fixed-size eager model's own detections, so
    that reference scores mask AP 1.0 (the reference of a fixed-size export detects at its size)."""
    from _bad_input import run_cli
    from _evaluate_data import detecting_model, save_model, write_gt, write_images

    _, fp32 = exported
    model = detecting_model({1: 4.0})
    ck = save_model(model, tmp_path / "tiny.safetensors")
    images = write_images(tmp_path / "data", 3)
    eager = Predictor(fixed_size_model(model, IMGSZ))
    gt = write_gt(tmp_path / "data" / "gt.json", images, eager.detect([str(p) for p in images]), [(1, "cell")], {1: 1})
    result = run_cli("export", "--weights", ck, "--format", "tflite", "--imgsz", str(IMGSZ), "--int8",
                     "--validation", gt, "--out", tmp_path / "int8.tflite")
    assert result.code == 0, result.err
    path = tmp_path / "int8.tflite"
    assert path.stat().st_size < 0.5 * fp32.stat().st_size  # both tiny models have the same layers
    q = json.loads(path.with_suffix(".json").read_text())["int8"]
    assert q["calibration"] is None and q["validation"]["exact_mask_AP"] == pytest.approx(1.0)
    assert 0.0 <= q["validation"]["int8_mask_AP"] <= 1.0
    images_t = [torch.from_numpy(np.array(Image.open(images[0]).convert("RGB"))).permute(2, 0, 1).float() / 255]
    with torch.no_grad():
        ref = eager._detect_raw(images_t, None)[0]
    got = maskrcnn.load(path, device="cpu")._detect_raw(images_t, None)[0]
    assert len(got["labels"]) > 0
    # int8 weights move scores and boxes a little and may swap near-ties: most int8 detections
    # have an exact one of the same class within 0.05 and 2 px
    matched = [bool(((ref["labels"] == lab) & ((ref["scores"] - sc).abs() < 0.05)
                     & ((ref["boxes"] - box).abs().max(1).values < 2.0)).any())
               for box, sc, lab in zip(got["boxes"], got["scores"], got["labels"])]
    assert sum(matched) >= 0.75 * len(matched)

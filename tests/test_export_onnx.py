"""ONNX export (``maskrcnn export``, :mod:`maskrcnn.export`) against the eager model in exact mode.

A tiny random-weight model biased to detect (``biased_model``) is exported once; ONNX Runtime
must give the eager model's boxes, scores and mask probabilities within 1e-4 and the same labels
on real photographs (scikit-image's samples, resized small), at batch 1 and at batch 3 with three
sizes, and empty outputs (not an error) when nothing is detected. ``maskrcnn detect`` on a folder
writes the same detections from the checkpoint and from its export.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import maskrcnn  # noqa: E402
from maskrcnn.export.onnx import export_onnx, read_sidecar, sidecar_path  # noqa: E402
from maskrcnn.export.runtime import OnnxPredictor  # noqa: E402
from maskrcnn.inference.predictor import Predictor  # noqa: E402
from maskrcnn.weights import save_checkpoint  # noqa: E402

from _bad_input import run_cli  # noqa: E402
from test_predictor_inputs import biased_model, photo  # noqa: E402

TOL = 1e-4
PHOTOS = [(70, 90, "astronaut"), (50, 64, "coffee"), (90, 60, "chelsea")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager Predictor, OnnxPredictor, model path) of the biased tiny model."""
    root = tmp_path_factory.mktemp("onnx")
    model = biased_model()
    path, side = export_onnx(model, root / "model.onnx")
    assert side == root / "model.json"
    return Predictor(model, device="cpu"), OnnxPredictor(path, threads=1), path


def checkpoint_and_photos(tmp_path):
    """``(model, checkpoint, folder)``: the biased model saved as a checkpoint, and :data:`PHOTOS` as PNGs."""
    model = biased_model()
    ck = save_checkpoint(model, model.config, tmp_path / "tiny.safetensors")
    folder = tmp_path / "images"
    folder.mkdir()
    for h, w, name in PHOTOS:
        Image.fromarray(photo(h, w, name)).save(folder / f"{name}.png")
    return model, ck, folder


def _images(which):
    return [torch.from_numpy(photo(h, w, name)).permute(2, 0, 1).float() / 255 for h, w, name in which]


def assert_raw_equal(eager: list[dict], onnx: list[dict]) -> None:
    assert len(eager) == len(onnx)
    for e, o in zip(eager, onnx):
        assert len(e["labels"]) > 0
        assert torch.equal(e["labels"], o["labels"])
        for key in ("boxes", "scores", "mask_probs"):
            torch.testing.assert_close(o[key], e[key].float(), atol=TOL, rtol=0, msg=key)


@pytest.mark.parametrize("which", [PHOTOS[:1], PHOTOS], ids=["batch1", "batch3-sizes"])
def test_onnx_runtime_equals_eager_exact_mode(exported, which):
    eager, onnx, _ = exported
    images = _images(which)
    with torch.no_grad():
        ref = eager._detect_raw(images, None)
    assert_raw_equal(ref, onnx._detect_raw(images, None))
    # the same batch through the shared Predictor code: Detections with pasted masks
    arrays = [photo(h, w, name) for h, w, name in which]
    for a, b in zip(eager.detect(arrays, batch_size=3), onnx.detect(arrays, batch_size=3)):
        assert np.array_equal(a.class_ids, b.class_ids) and a.class_names == b.class_names
        np.testing.assert_allclose(b.boxes, a.boxes, atol=TOL, rtol=0)
        np.testing.assert_allclose(b.scores, a.scores, atol=TOL, rtol=0)
        assert a.masks.shape == b.masks.shape and a.masks.any()
        assert (a.masks != b.masks).sum() <= 1e-4 * a.masks.size  # a probability within 1e-4 of 0.5 may flip


def test_batch_result_does_not_depend_on_the_traced_example(exported):
    """The graph is traced on 2 images of 80x96 / 64x72: other counts and sizes (here 4 images, one
    larger than the trace's) are computed, not replayed."""
    eager, onnx, _ = exported
    images = _images(PHOTOS + [(120, 100, "astronaut")])
    with torch.no_grad():
        ref = eager._detect_raw(images, None)
    assert_raw_equal(ref, onnx._detect_raw(images, None))


def test_no_detection_gives_empty_outputs(tmp_path, exported):
    import onnxruntime as ort

    model = biased_model()
    with torch.no_grad():  # background wins everywhere: no class passes detection_min_confidence
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([12.0, -12.0, -12.0, -12.0]))
    path, _ = export_onnx(model, tmp_path / "none.onnx")
    batch = np.zeros((2, 3, 60, 80), np.float32)
    batch[0] = np.asarray(photo(60, 80), np.float32).transpose(2, 0, 1) / 255
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": batch, "sizes": np.array([[60, 80], [40, 50]], np.int64)})
    assert [o.shape for o in out] == [(0, 4), (0,), (0,), (0, 28, 28), (0,)]
    dets = OnnxPredictor(path, threads=1).detect([photo(60, 80), photo(40, 50, "coffee")])
    assert [len(d) for d in dets] == [0, 0] and dets[1].masks.shape == (0, 40, 50)
    # a threshold nothing passes in the model that detects: empty, and the session still works after
    _, onnx, _ = exported
    assert len(onnx.detect(photo(70, 90), score_threshold=0.9999)[0]) == 0
    assert len(onnx.detect(photo(70, 90))[0]) > 0


def test_sidecar_holds_classes_config_and_contract(exported):
    import onnx

    eager, _, path = exported
    onnx.checker.check_model(str(path))
    config, meta = read_sidecar(path)
    assert config == eager.config and meta["class_names"] == ["BG", "a", "b", "c"]
    assert list(meta["inputs"]) == ["images", "sizes"] and meta["inputs"]["images"]["range"] == [0.0, 1.0]
    assert list(meta["outputs"]) == ["boxes", "scores", "labels", "mask_probs", "batch_index"]
    assert meta["outputs"]["mask_probs"]["shape"] == ["detections", 28, 28]
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


def test_detect_cli_gives_the_same_json_from_checkpoint_and_export(tmp_path):
    from pycocotools import mask as mask_utils

    _, ck, images = checkpoint_and_photos(tmp_path)
    result = run_cli("export", "--weights", ck, "--format", "onnx", "--out", tmp_path / "deploy")
    assert result.code == 0, result.err
    onnx_path = tmp_path / "deploy" / "model.onnx"
    assert onnx_path.is_file() and sidecar_path(onnx_path).is_file()
    outs = {}
    for key, weights in (("ck", ck), ("onnx", onnx_path)):
        r = run_cli("detect", images, "--weights", weights, "--out", tmp_path / key, "--score", "0.3",
                    "--no-overlays", "--batch-size", "2")
        assert r.code == 0, r.err
        outs[key] = json.loads((tmp_path / key / "detections.json").read_text())
    a, b = outs["ck"], outs["onnx"]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["file_name"], x["image_id"], x["category_id"]) == (y["file_name"], y["image_id"], y["category_id"])
        np.testing.assert_allclose(y["bbox"], x["bbox"], atol=1e-3)
        assert abs(x["score"] - y["score"]) <= TOL
        ma, mb = mask_utils.decode(x["segmentation"]), mask_utils.decode(y["segmentation"])
        assert ma.any() and (ma != mb).sum() <= 2
    images_json = json.loads((tmp_path / "onnx" / "images.json").read_text())
    assert [c["name"] for c in images_json["categories"]] == ["a", "b", "c"]


def test_load_returns_the_onnx_predictor(exported):
    _, _, path = exported
    p = maskrcnn.load(path, device="cpu", mask_threshold=0.7)
    assert isinstance(p, OnnxPredictor) and p.config.mask_threshold == 0.7
    loose = maskrcnn.load(str(path), device="cpu").detect(photo(70, 90))[0]
    strict = p.detect(photo(70, 90))[0]
    assert np.array_equal(loose.scores, strict.scores) and strict.masks.sum() < loose.masks.sum()


OTHER_MODELS = {
    "v2": dict(architecture="v2"),
    "grayscale": dict(image_channel_count=1, pixel_mean=[0.5], pixel_std=[0.25]),
    "minmax per-image inverted": dict(image_normalization="per_image", invert_bright_images=True),
    "square per-image": dict(image_resize_mode="square", image_normalization="per_image"),
    "pad64 like nuclei": dict(image_resize_mode="pad64", image_normalization="per_image", invert_bright_images=True,
                              image_min_scale=1.5),
    "none": dict(image_resize_mode="none", image_min_scale=2.0),  # none ignores min_scale
}


@pytest.mark.parametrize("case", list(OTHER_MODELS))
def test_every_layout_resize_mode_and_normalisation_exports(case, tmp_path):
    """The v2 layout (conv box head, BatchNorm), a 1-channel model, and every inference resize mode
    and normalisation (Matterport's modes pad and normalise with the window's statistics; one
    image is bright, so that ``invert_bright_images`` inverts it and not the others)."""
    kw = OTHER_MODELS[case]
    model = biased_model(**kw)
    path, _ = export_onnx(model, tmp_path / "m.onnx")
    arrays = [photo(70, 90), 255 - photo(50, 64, "coffee") // 2, photo(90, 60, "chelsea")]
    assert [a.mean() > 127.5 for a in arrays] == [False, True, False]
    images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]
    if kw.get("image_channel_count") == 1:
        images = [i[:1] for i in images]
    with torch.no_grad():
        ref = Predictor(model)._detect_raw(images, None)
    assert_raw_equal(ref, OnnxPredictor(path, threads=1)._detect_raw(images, None))

"""Matterport's network (``architecture: matterport``) and its ``.h5`` weights.

A tiny variant with Matterport's resnet50 layer names (narrow widths) is written with h5py in
Keras' layout (``tests/_keras_h5.py``); each rule of Matterport's inference is checked against a
hand computation or an independent reimplementation of Matterport's formula.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")  # the matterport extra (in .[test])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _keras_h5 import randomize, write_keras_h5  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn import Config  # noqa: E402
from maskrcnn.modeling import build_model  # noqa: E402
from maskrcnn.modeling.matterport import ops  # noqa: E402
from maskrcnn.modeling.matterport.detection import boxes_to_original, refine_detections  # noqa: E402

TINY = dict(architecture="matterport", backbone="resnet50", num_classes=3, backbone_width=8, fpn_channels=16,
            box_head_dim=32, mask_head_channels=16)
#: Matterport attributes of the tiny test config (the rest are Matterport's defaults)
MP = {"NUM_CLASSES": 3, "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128, "RPN_ANCHOR_SCALES": (8, 16, 32, 64, 128),
      "DETECTION_MIN_CONFIDENCE": 0.0, "POST_NMS_ROIS_INFERENCE": 200}


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    model = build_model(Config.create(**TINY))
    randomize(model, seed=0)
    return model


@pytest.fixture(scope="module")
def h5file(source: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_keras_h5(tmp_path_factory.mktemp("h5") / "mask_rcnn_tiny.h5", source.net.layers)


@pytest.fixture(scope="module")
def predictor(h5file: Path) -> maskrcnn.inference.predictor.Predictor:
    return maskrcnn.load(h5file, config=MP, device="cpu")


def _image(h: int = 100, w: int = 90, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[20:60, 15:50] = rng.integers(0, 255, 3)
    return img


# ---------------------------------------------------------------------------- loading


def test_every_tensor_lands_where_it_should(source: torch.nn.Module, h5file: Path, predictor) -> None:
    loaded = predictor.model.state_dict()
    assert set(loaded) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key
    with h5py.File(h5file, "r") as f:
        g = f["model_weights"]
        k = g["res3b_branch2b"]["res3b_branch2b/kernel:0"][()]  # HWIO
        w = loaded["net.layers.res3b_branch2b.weight"]  # OIHW
        assert w[5, 3, 2, 1].item() == k[2, 1, 3, 5]
        k = g["rpn_model"]["rpn_class_raw/kernel:0"][()]  # nested model
        assert loaded["net.layers.rpn_class_raw.weight"][4, 100, 0, 0].item() == k[0, 0, 100, 4]
        k = g["mrcnn_class_logits"]["mrcnn_class_logits/kernel:0"][()]  # Dense (in, out)
        assert loaded["net.layers.mrcnn_class_logits.weight"][2, 7].item() == k[7, 2]
        k = g["mrcnn_mask_deconv"]["mrcnn_mask_deconv/kernel:0"][()]  # Conv2DTranspose (H, W, out, in)
        assert loaded["net.layers.mrcnn_mask_deconv.weight"][3, 9, 1, 0].item() == k[1, 0, 9, 3]
        mv = g["bn4c_branch2a"]["bn4c_branch2a/moving_variance:0"][()]
        assert torch.equal(loaded["net.layers.bn4c_branch2a.running_var"], torch.from_numpy(mv))
    c = predictor.config
    assert (c.architecture, c.backbone, c.num_classes, c.fpn_channels, c.box_head_dim) == ("matterport", "resnet50", 3, 16, 32)
    assert c.pre_nms_limit_inference == 6000 and c.rpn_bbox_std_dev == [0.1, 0.1, 0.2, 0.2]  # Matterport's defaults
    bn = predictor.model.net.layers["bn_conv1"]
    assert bn.eps == 1e-3 and predictor.model.net.layers["res3a_branch2a"].stride == (2, 2)  # stride on the 1x1
    assert predictor.model.net.layers["res3a_branch2b"].stride == (1, 1)


def test_top_level_layout_and_config_object(source: torch.nn.Module, tmp_path: Path) -> None:
    path = write_keras_h5(tmp_path / "w.h5", source.net.layers, model_weights=False)
    from maskrcnn.compat.mrcnn.config import Config as MatterportConfig

    class Cfg(MatterportConfig):
        NUM_CLASSES = 3
        BACKBONE = "resnet50"
        DETECTION_MIN_CONFIDENCE = 0.5

    p = maskrcnn.load(path, config=Cfg(), device="cpu")
    assert p.config.detection_min_confidence == 0.5 and p.config.image_max_dim == 1024
    assert torch.equal(p.model.state_dict()["net.layers.conv1.weight"], source.state_dict()["net.layers.conv1.weight"])


# ---------------------------------------------------------------------------- the operations


def test_max_pool_same_pads_bottom_right_on_even_sizes() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # out 2x2; padding 1 in all: bottom/right only. windows rows {0,1,2}, {2,3}
    assert ops.max_pool_same(x)[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    x = -torch.arange(25.0).reshape(1, 1, 5, 5)  # odd: one on each side; maxima are top-left of windows
    # out 3x3, windows rows {-1,0,1}, {1,2,3}, {3,4,5}: top-left real cell of each
    assert ops.max_pool_same(x)[0, 0].tolist() == [[-0.0, -1.0, -3.0], [-5.0, -6.0, -8.0], [-15.0, -16.0, -18.0]]
    x = torch.full((1, 1, 4, 4), -5.0)
    assert ops.max_pool_same(x).max().item() == -5.0  # padding never wins


def test_crop_and_resize_bilinear_samples_and_extrapolation() -> None:
    img = torch.arange(20.0).reshape(1, 1, 4, 5)  # value = 5 * row + col
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.125, 0.75, 0.625], [0.5, 0.5, 1.5, 1.0]])
    out = ops.crop_and_resize(img, boxes, torch.zeros(3, dtype=torch.long), (2, 3))
    # box 0: rows 0, 3; cols 0, 2, 4
    assert out[0, 0].tolist() == [[0.0, 2.0, 4.0], [15.0, 17.0, 19.0]]
    # box 1: rows 0.75, 2.25; cols 0.5, 1.5, 2.5 -> value 5 * row + col (bilinear of a linear image)
    assert torch.allclose(out[1, 0], torch.tensor([[4.25, 5.25, 6.25], [11.75, 12.75, 13.75]]))
    # box 2: rows 1.5 and 4.5 (outside: 0); cols 2, 3, 4
    assert torch.allclose(out[2, 0], torch.tensor([[9.5, 10.5, 11.5], [0.0, 0.0, 0.0]]))
    one = ops.crop_and_resize(img, boxes[1:2], torch.zeros(1, dtype=torch.long), (1, 1))  # centre sample
    assert math.isclose(one.item(), 5 * 1.5 + 1.5)


def test_level_assignment_formula() -> None:
    side = 1024
    boxes = []
    for s in (224, 112, 56, 28, 448, 896, 300, 0):
        n = s / side
        boxes.append([0.1, 0.1, 0.1 + n, 0.1 + n])
    levels = ops.roi_levels(torch.tensor(boxes), (side, side)).tolist()
    # 4 + round(log2(s / 224)): 0, -1, -2, -3 (-> 2), 1, 2 (-> 5), round(0.42) = 0, zero area -> 2
    assert levels == [4, 3, 2, 2, 5, 5, 4, 2]
    # a wide image: 224 / sqrt(512 * 2048) = 224 / 1024 as well
    assert ops.roi_levels(torch.tensor([[0.0, 0.0, 224 / 512, 224 / 2048]]), (512, 2048)).tolist() == [4]


def _matterport_anchors(scales, ratios, shapes, strides, anchor_stride=1):
    """Matterport's utils.generate_pyramid_anchors, rewritten in numpy from its description."""
    out = []
    for scale, shape, stride in zip(scales, shapes, strides):
        s, r = np.meshgrid(np.array([scale]), np.array(ratios))
        s, r = s.flatten(), r.flatten()
        heights, widths = s / np.sqrt(r), s * np.sqrt(r)
        sy = np.arange(0, shape[0], anchor_stride) * stride
        sx = np.arange(0, shape[1], anchor_stride) * stride
        sx, sy = np.meshgrid(sx, sy)
        bw, cx = np.meshgrid(widths, sx)
        bh, cy = np.meshgrid(heights, sy)
        centers = np.stack([cy, cx], axis=2).reshape([-1, 2])
        sizes = np.stack([bh, bw], axis=2).reshape([-1, 2])
        out.append(np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1))
    return np.concatenate(out)


def test_anchors_follow_matterports_formula() -> None:
    shapes = [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    got = ops.generate_pyramid_anchors((8, 16, 32, 64, 128), (0.5, 1, 2), shapes, (4, 8, 16, 32, 64)).numpy()
    want = _matterport_anchors((8, 16, 32, 64, 128), [0.5, 1, 2], shapes, (4, 8, 16, 32, 64))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # ratio is width / height: ratio 2 at a cell is twice as wide as high, centred on the corner (0, 0)
    np.testing.assert_allclose(got[2], [-8 / math.sqrt(2) / 2, -8 * math.sqrt(2) / 2, 8 / math.sqrt(2) / 2, 8 * math.sqrt(2) / 2])


@pytest.mark.parametrize("scipy", [True, False], ids=["scipy", "torch"])
def test_resize_constant_equals_scikit_image(scipy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    skimage_resize = pytest.importorskip("skimage.transform").resize
    rng = np.random.default_rng(0)
    cases = [(rng.random((28, 28)), (41, 17)), (rng.random((30, 20)), (11, 9)), (rng.random((5, 7)) + 2.0, (5, 16)),
             (rng.integers(0, 256, (3, 10, 13)).astype(np.float64), (3, 23, 7))]
    wants = [skimage_resize(np.moveaxis(a, 0, -1) if a.ndim == 3 else a, (size[1], size[2], 3) if len(size) == 3 else size,
                            order=1, mode="constant", cval=0, clip=True, preserve_range=True, anti_aliasing=False)
             for a, size in cases]
    if not scipy:  # the fallback without scipy: the same formula in torch
        monkeypatch.setitem(sys.modules, "scipy", None)
    for (a, size), want in zip(cases, wants):
        got = ops.resize_constant(torch.from_numpy(a), size[-2:]).numpy()
        if a.ndim == 3:
            got = np.moveaxis(got, 0, -1)
        np.testing.assert_allclose(got, want, rtol=0, atol=0 if scipy else 1e-12)
    # clipped to the input's range: the faded border of [2, 3] values stays >= 2, except exact zeros
    assert ops.resize_constant(torch.full((4, 4), 2.5, dtype=torch.float64), (9, 9)).min().item() == 2.5


def test_detection_step_on_hand_made_inputs() -> None:
    rois = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.5, 0.5, 0.7, 0.7], [0.1, 0.1, 0.3, 0.3],
                         [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]])
    probs = torch.tensor([[0.1, 0.8, 0.1],   # class 1, 0.8
                          [0.1, 0.85, 0.05],  # class 1, overlaps roi 0 (IoU 0.82): roi 0 suppressed
                          [0.2, 0.05, 0.75],  # class 2
                          [0.1, 0.1, 0.8],    # class 2, same box as roi 0 but another class: kept
                          [0.35, 0.3, 0.35],  # argmax class 0 (first max): background, dropped
                          [0.3, 0.65, 0.05]])  # below 0.7: dropped
    deltas = torch.zeros(6, 3, 4)
    deltas[2, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # dy = 1 * 0.1 * h: moves down 0.02
    window = torch.tensor([0.0, 0.0, 1.0, 1.0])
    boxes, labels, scores = refine_detections(rois, probs, deltas, window, std_dev=[0.1, 0.1, 0.2, 0.2],
                                              min_confidence=0.7, nms_threshold=0.3, max_instances=100)
    assert labels.tolist() == [1, 2, 2]
    assert torch.allclose(scores, torch.tensor([0.85, 0.8, 0.75]))
    assert torch.allclose(boxes[2], torch.tensor([0.52, 0.5, 0.72, 0.7]))
    # at most max_instances, best first
    _, labels, scores = refine_detections(rois, probs, deltas, window, std_dev=[0.1, 0.1, 0.2, 0.2],
                                          min_confidence=0.7, nms_threshold=0.3, max_instances=2)
    assert labels.tolist() == [1, 2] and torch.allclose(scores, torch.tensor([0.85, 0.8]))
    # clipped to the window
    boxes, _, _ = refine_detections(rois[2:3], probs[2:3], deltas[2:3], torch.tensor([0.0, 0.0, 0.6, 1.0]),
                                    std_dev=[0.1, 0.1, 0.2, 0.2], min_confidence=0.7, nms_threshold=0.3, max_instances=9)
    assert torch.allclose(boxes[0], torch.tensor([0.52, 0.5, 0.6, 0.7]))


def test_boxes_to_original_follows_unmold_detections() -> None:
    # a 100 x 90 image in a 128 x 128 square: scale 1.28 -> 128 x 115, window (0, 6, 128, 121)
    window, shape, original = (0, 6, 128, 121), (128, 128), (100, 90)
    box = torch.tensor([[0.25, 0.3, 0.5, 0.75]])
    got = boxes_to_original(box, window, shape, original)[0].tolist()
    wy1, wx1, wy2, wx2 = 0 / 127, 6 / 127, (128 - 1) / 127, (121 - 1) / 127
    b = [(0.25 - wy1) / (wy2 - wy1), (0.3 - wx1) / (wx2 - wx1), (0.5 - wy1) / (wy2 - wy1), (0.75 - wx1) / (wx2 - wx1)]
    want = [round(b[0] * 99), round(b[1] * 89), round(b[2] * 99 + 1), round(b[3] * 89 + 1)]
    assert got == want


# ---------------------------------------------------------------------------- the whole model


def test_detections_in_original_image_coordinates(predictor) -> None:
    img = _image()
    det = predictor.detect(img)[0]
    model = predictor.model
    assert len(det) > 0 and det.masks.shape[1:] == (100, 90)
    # the same steps by hand: square resize 100 x 90 -> 128 x 115, padded (0, 6) .. (128, 121)
    x = torch.from_numpy(img).permute(2, 0, 1).double()
    resized = torch.floor(ops.resize_constant(x, (128, 115)))
    padded = torch.zeros(3, 128, 128, dtype=torch.float64)
    padded[:, :, 6:121] = resized
    molded = (padded - torch.tensor([123.7, 116.8, 103.9], dtype=torch.float64)[:, None, None]).float()
    mine, info = model.mold(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
    assert info.window == (0, 6, 128, 121)
    assert torch.allclose(mine, molded, atol=1e-4)
    raw = model.detect([torch.from_numpy(img).permute(2, 0, 1).float() / 255.0])[0]
    np.testing.assert_array_equal(det.boxes, raw["boxes"].numpy())
    assert (det.boxes == np.round(det.boxes)).all() and det.boxes[:, 2].max() <= 90 and det.boxes[:, 3].max() <= 100
    skimage_resize = pytest.importorskip("skimage.transform").resize
    for i in range(min(len(det), 5)):  # Matterport's unmold_mask with scikit-image
        x1, y1, x2, y2 = det.boxes[i].astype(int)
        want = np.zeros((100, 90), bool)
        m = skimage_resize(raw["mask_probs"][i].numpy(), (y2 - y1, x2 - x1), order=1, mode="constant", cval=0,
                           clip=True, preserve_range=True, anti_aliasing=False)
        want[y1:y2, x1:x2] = m >= 0.5
        np.testing.assert_array_equal(det.masks[i], want)


def test_compat_load_weights_by_name_and_exclude(source: torch.nn.Module, h5file: Path, tmp_path: Path, predictor) -> None:
    from maskrcnn.compat.mrcnn import config as mconfig
    from maskrcnn.compat.mrcnn import model as modellib

    class Infer(mconfig.Config):
        NAME = "tiny"
        NUM_CLASSES = 5
        IMAGES_PER_GPU = 1
        BACKBONE = "resnet50"
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TOP_DOWN_PYRAMID_SIZE = 16
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        DETECTION_MIN_CONFIDENCE = 0.0
        POST_NMS_ROIS_INFERENCE = 200

    model = modellib.MaskRCNN(mode="inference", config=Infer(), model_dir=str(tmp_path))
    model.settings = model.settings.replace(architecture="matterport", backbone_width=8, mask_head_channels=16)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(maskrcnn.WeightsError, match="mrcnn_class_logits"):
        model.load_weights(str(h5file), by_name=True)  # 3 classes in the file, 5 here
    model.load_weights(str(h5file), by_name=True, exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    after, src = model.module.state_dict(), source.state_dict()
    for key in after:
        excluded = key.split(".")[2] in ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")
        assert torch.equal(after[key], before[key] if excluded else src[key]), key

    # by_name with a file that lacks a layer: it keeps its weights; without by_name it is an error
    partial = write_keras_h5(tmp_path / "partial.h5", source.net.layers, drop=("fpn_p2",))
    model.settings = model.settings.replace(num_classes=3)
    before = model.module.state_dict()["net.layers.fpn_p2.weight"].clone()
    model.load_weights(str(partial), by_name=True)
    assert torch.equal(model.module.state_dict()["net.layers.fpn_p2.weight"], before)
    assert torch.equal(model.module.state_dict()["net.layers.fpn_p3.weight"], src["net.layers.fpn_p3.weight"])
    with pytest.raises(maskrcnn.WeightsError, match="fpn_p2"):
        model.load_weights(str(partial))

    model.load_weights(str(h5file))  # the whole file: detect as Matterport's script does
    result = model.detect([_image()])[0]
    det = predictor.detect(_image())[0]
    np.testing.assert_array_equal(result["rois"], det.boxes[:, [1, 0, 3, 2]].astype(np.int32))
    np.testing.assert_array_equal(result["class_ids"], det.class_ids)
    np.testing.assert_array_equal(result["masks"], det.masks.transpose(1, 2, 0))


def test_h5_cannot_start_training(h5file: Path) -> None:
    from maskrcnn.commands.train import pretrained_model

    with pytest.raises(maskrcnn.WeightsError) as err:
        pretrained_model(Config.create(num_classes=3), str(h5file))
    msg = str(err.value)
    assert "\n" not in msg and "imagenet" in msg and "detection and evaluation" in msg


def test_our_config_over_matterports_defaults(h5file: Path) -> None:
    p = maskrcnn.load(h5file, config=Config.create(num_classes=3, detection_min_confidence=0.2), device="cpu")
    c = p.config
    assert c.detection_min_confidence == 0.2  # set: kept
    assert c.rpn_bbox_std_dev == [0.1, 0.1, 0.2, 0.2] and c.image_resize_mode == "square"  # unset: Matterport's
    assert c.image_max_dim == 1024 and c.pixel_std == [1 / 255] * 3


def test_detect_cli_with_h5_and_a_matterport_yaml(h5file: Path, tmp_path: Path) -> None:
    import json

    import yaml
    from PIL import Image

    from _bad_input import run_cli

    (tmp_path / "mp.yaml").write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in MP.items()}))
    Image.fromarray(_image()).save(tmp_path / "a.png")
    result = run_cli("detect", tmp_path / "a.png", "--weights", h5file, "--config", tmp_path / "mp.yaml",
                     "--out", tmp_path / "out", "--score", "0", "--device", "cpu", "--no-overlays")
    assert result.code == 0, result.err
    found = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    anns = found["annotations"] if isinstance(found, dict) else found
    want = maskrcnn.load(h5file, config=MP, device="cpu").detect(_image())[0]
    assert len(anns) == len(want) > 0


def test_convert_h5_to_our_checkpoint(h5file: Path, tmp_path: Path, predictor) -> None:
    import yaml

    from _bad_input import run_cli

    (tmp_path / "mp.yaml").write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in MP.items()}))
    out = tmp_path / "matterport.safetensors"
    result = run_cli("convert", "--weights", h5file, "--config", tmp_path / "mp.yaml", "--out", out)
    assert result.code == 0, result.err
    assert "matterport resnet50, 3 classes" in result.out
    again = maskrcnn.load(out, device="cpu")
    assert again.config == predictor.config
    a, b = again.detect(_image())[0], predictor.detect(_image())[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_evaluate_cli_with_h5(h5file: Path, tmp_path: Path) -> None:
    """``maskrcnn evaluate --weights x.h5``: ground truth made of the model's own detections scores AP 1."""
    import json

    import yaml
    from PIL import Image

    from _bad_input import run_cli
    from _evaluate_data import write_gt

    images = []
    (tmp_path / "images").mkdir()
    for k in range(2):
        images.append(tmp_path / "images" / f"img{k}.png")
        Image.fromarray(_image(384, 512, seed=k)).save(images[-1])
    mp = {**MP, "DETECTION_MIN_CONFIDENCE": 0.9, "DETECTION_MAX_INSTANCES": 5}
    (tmp_path / "mp.yaml").write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in mp.items()}))
    dets = maskrcnn.load(h5file, config=mp, device="cpu").detect(images)
    assert sum(len(d) for d in dets) > 0
    gt = write_gt(tmp_path / "images" / "gt.json", images, dets, [(1, "a"), (2, "b")], {1: 1, 2: 2})
    result = run_cli("evaluate", "--weights", h5file, "--config", tmp_path / "mp.yaml", "--data", gt,
                     "--out", tmp_path / "eval", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_predictions"] == sum(len(d) for d in dets)
    assert report["coco"]["segm"]["AP"] == pytest.approx(1.0)


def test_exclude_rpn_model_keeps_the_three_rpn_convolutions(source: torch.nn.Module, h5file: Path) -> None:
    from maskrcnn.weights import load_h5_into

    model = build_model(Config.create(**TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_h5_into(model, h5file, exclude=["rpn_model"])  # Matterport's nested model name
    assert {"rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"}.isdisjoint(loaded) and "conv1" in loaded
    for key, value in model.state_dict().items():
        want = before[key] if key.split(".")[2].startswith("rpn_") else source.state_dict()[key]
        assert torch.equal(value, want), key

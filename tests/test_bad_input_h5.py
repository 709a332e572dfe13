"""Bad Matterport ``.h5`` weights through ``maskrcnn.load``, ``maskrcnn detect --weights``,
``maskrcnn train --weights`` and the Matterport drop-in's ``load_weights``: each is one
WeightsError line naming the file (and the layer) and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")  # the matterport extra (in .[test])

from _bad_input import assert_clean_error, assert_one_line_error, run_cli  # noqa: E402
from _keras_h5 import randomize, write_keras_h5  # noqa: E402

import maskrcnn  # noqa: E402
import maskrcnn.engine  # noqa: E402
from maskrcnn import Config  # noqa: E402
from maskrcnn.errors import MaskRCNNError  # noqa: E402
from maskrcnn.modeling import build_model  # noqa: E402

TINY = dict(architecture="matterport", backbone="resnet50", num_classes=3, backbone_width=8, fpn_channels=16,
            box_head_dim=32, mask_head_channels=16)


@pytest.fixture(scope="module")
def layers() -> torch.nn.ModuleDict:
    model = build_model(Config.create(**TINY))
    randomize(model, seed=1)
    return model.net.layers


def _edit(path: Path, layer: str, name: str, fn: Callable[[h5py.Group, str], None]) -> None:
    with h5py.File(path, "r+") as f:
        fn(f["model_weights"][layer], name)


def _replace(array: np.ndarray) -> Callable[[h5py.Group, str], None]:
    def do(group: h5py.Group, name: str) -> None:
        del group[name]
        group.create_dataset(name, data=array)
    return do


def _nan(group: h5py.Group, name: str) -> None:
    a = group[name][()]
    a.flat[0] = np.nan
    group[name][...] = a


def _make(kind: str, path: Path, layers: torch.nn.ModuleDict) -> Path:
    if kind == "text":
        path.write_text("not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "signature-only":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    elif kind == "truncated":
        write_keras_h5(path, layers)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "no-layer-names":
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.zeros(3))
    else:
        write_keras_h5(path, layers, drop=("mrcnn_mask",) if kind == "missing-layer" else ())
        if kind == "wrong-shape":
            _edit(path, "fpn_p3", "fpn_p3/kernel:0", _replace(np.zeros((3, 3, 16, 8), np.float32)))
        elif kind == "nan":
            _edit(path, "res3a_branch2b", "res3a_branch2b/kernel:0", _nan)
        elif kind == "no-bias":
            def drop_bias(group: h5py.Group, name: str) -> None:
                group.attrs["weight_names"] = np.array([b"conv1/kernel:0"])
            _edit(path, "conv1", "", drop_bias)
        elif kind == "depth":
            def rename(group: h5py.Group, name: str) -> None:
                f = group.file["model_weights"]  # 7 res4 blocks: no Matterport depth
                f.copy("res4f_branch2a", "res4g_branch2a")
                f.attrs["layer_names"] = np.append(f.attrs["layer_names"], b"res4g_branch2a")
            _edit(path, "conv1", "", rename)
    return path


CASES = [
    ("text", ("not an hdf5 file", ".h5")),
    ("empty", ("empty file", "download it again")),
    ("signature-only", ("not a readable hdf5 file", "again")),
    ("truncated", ("again",)),
    ("no-layer-names", ("layer_names", "save_weights")),
    ("missing-layer", ("missing layer 'mrcnn_mask'", "by_name")),
    ("wrong-shape", ("'fpn_p3'", "kernel has shape (3, 3, 16, 8)", "(3, 3, 16, 16)")),
    ("nan", ("NaN", "res3a_branch2b")),
    ("no-bias", ("'conv1'", "lacks bias")),
    ("depth", ("has 7 res4 blocks", "resnet50", "23")),
]


@pytest.mark.parametrize("kind, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_h5_is_one_line(kind: str, fragments: tuple[str, ...], tmp_path: Path, layers: torch.nn.ModuleDict) -> None:
    path = _make(kind, tmp_path / f"mask_rcnn_{kind}.h5", layers)
    with pytest.raises(MaskRCNNError) as err:
        maskrcnn.load(path, device="cpu")
    assert_one_line_error(err, path.name, *fragments)


def test_detect_cli_with_a_bad_h5(tmp_path: Path, layers: torch.nn.ModuleDict) -> None:
    path = _make("wrong-shape", tmp_path / "mask_rcnn_bad.h5", layers)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = run_cli("detect", image, "--weights", path, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_error(result, "mask_rcnn_bad.h5", "fpn_p3")


def test_missing_h5py_names_the_extra(tmp_path: Path, layers: torch.nn.ModuleDict, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_keras_h5(tmp_path / "w.h5", layers)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MaskRCNNError) as err:
        maskrcnn.load(path, device="cpu")
    assert_one_line_error(err, "w.h5", "h5py", "maskrcnn[matterport]")


@pytest.mark.parametrize("config, fragments", [
    ({"NUM_CLASSES": 5}, ("NUM_CLASSES=3", "says 5")),
    ({"BACKBONE": "resnet101"}, ("BACKBONE='resnet50'", "resnet101")),
    ({"detection_min_confidence": 0.5}, ("'detection_min_confidence'", "UPPER_CASE")),
    (Config.create(num_classes=4), ("NUM_CLASSES=3", "says 4")),
], ids=["classes", "backbone", "our-field-in-dict", "our-config"])
def test_config_that_contradicts_the_file(config: object, fragments: tuple[str, ...], tmp_path: Path,
                                          layers: torch.nn.ModuleDict) -> None:
    path = write_keras_h5(tmp_path / "w.h5", layers)
    with pytest.raises(MaskRCNNError) as err:
        maskrcnn.load(path, config=config, device="cpu")
    assert_one_line_error(err, "w.h5", *fragments)


def test_train_from_h5_says_what_to_do(tmp_path: Path, layers: torch.nn.ModuleDict) -> None:
    path = write_keras_h5(tmp_path / "w.h5", layers)
    with pytest.raises(MaskRCNNError) as err:
        maskrcnn.engine.train(Config.create(**TINY), None, out_dir=tmp_path / "runs")
    assert_one_line_error(err, "architecture=matterport", "imagenet", "coco")
    from maskrcnn.commands.train import pretrained_model

    with pytest.raises(MaskRCNNError) as err:
        pretrained_model(Config.create(num_classes=3), str(path))
    assert_one_line_error(err, "w.h5", "detection and evaluation", "--weights imagenet")


def test_exclude_of_an_unknown_layer(tmp_path: Path, layers: torch.nn.ModuleDict) -> None:
    from maskrcnn.weights import load_h5_into

    path = write_keras_h5(tmp_path / "w.h5", layers)
    model = build_model(Config.create(**TINY))
    with pytest.raises(MaskRCNNError) as err:
        load_h5_into(model, path, by_name=True, exclude=["mrcnn_class_logitz"])
    assert_one_line_error(err, "mrcnn_class_logitz", "mrcnn_class_logits")


def test_export_of_matterport_network_is_refused() -> None:
    from maskrcnn.export.graph import check_exportable

    with pytest.raises(MaskRCNNError) as err:
        check_exportable(Config.create(**TINY))
    assert_one_line_error(err, "architecture=matterport", "not exportable", "v1/v2")
    with pytest.raises(MaskRCNNError) as err:
        Config.create(**TINY, fast=True)
    assert_one_line_error(err, "architecture=matterport", "fast: false")


def _serve_as_matterport_coco(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` the file behind ``matterport-coco`` (a file:// URL, a fresh cache)."""
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    entry = maskrcnn.weights.NAMED_WEIGHTS["matterport-coco"]
    monkeypatch.setitem(maskrcnn.weights.NAMED_WEIGHTS, "matterport-coco",
                        maskrcnn.weights.NamedWeights(entry.file, path.as_uri(), "matterport", "resnet101"))


def test_download_trained_weights_copies_matterports_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download_trained_weights fetches mask_rcnn_coco.h5 (81 classes, ResNet-101 layout) and writes it where asked;
    load_weights("matterport-coco") then runs it."""
    from maskrcnn.compat.mrcnn import utils

    source = build_model(Config.create(**{**TINY, "backbone": "resnet101", "num_classes": 81}))
    randomize(source, seed=2)
    served = write_keras_h5(tmp_path / "served.h5", source.net.layers)
    _serve_as_matterport_coco(served, tmp_path, monkeypatch)
    target = tmp_path / "mask_rcnn_coco.h5"
    assert utils.download_trained_weights(str(target), verbose=0) == target
    assert target.read_bytes() == served.read_bytes()
    predictor = maskrcnn.load("matterport-coco", config={"IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64}, device="cpu")
    assert predictor.config.num_classes == 81 and predictor.config.backbone == "resnet101"
    loaded = dict(predictor.model.named_parameters())["net.layers.mrcnn_class_logits.weight"]
    assert torch.equal(loaded, source.net.layers["mrcnn_class_logits"].weight)


def test_download_trained_weights_refuses_another_file(tmp_path: Path, layers: torch.nn.ModuleDict,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from maskrcnn.compat.mrcnn import utils

    _serve_as_matterport_coco(write_keras_h5(tmp_path / "served.h5", layers), tmp_path, monkeypatch)
    with pytest.raises(MaskRCNNError) as err:
        utils.download_trained_weights(str(tmp_path / "mask_rcnn_coco.h5"), verbose=0)
    assert_one_line_error(err, "mask_rcnn_coco.h5", "3 classes", "download again")
    assert not (tmp_path / "mask_rcnn_coco.h5").exists()

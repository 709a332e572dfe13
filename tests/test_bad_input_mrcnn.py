"""Bad input to the Matterport drop-in (``maskrcnn.compat.mrcnn``): each is one line that names
the argument or file and says what to use instead."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "compat"))

from _bad_input import assert_one_line_error  # noqa: E402
from _shapes_sample import InferenceConfig, ShapesConfig, shapes_datasets  # noqa: E402

import maskrcnn  # noqa: E402
from maskrcnn import weights as W  # noqa: E402
from maskrcnn.compat.mrcnn import model as modellib  # noqa: E402
from maskrcnn.compat.mrcnn import utils, visualize  # noqa: E402
from maskrcnn.errors import MaskRCNNError  # noqa: E402

LEAN = dict(backbone_width=8, mask_head_channels=16, num_workers=0)


@pytest.fixture(scope="module")
def datasets() -> tuple[Any, Any]:
    return shapes_datasets(train=2, val=1)


def _model(tmp_path: Path, mode: str = "training", config: Any = None) -> modellib.MaskRCNN:
    model = modellib.MaskRCNN(mode=mode, config=config or ShapesConfig(), model_dir=str(tmp_path))
    model.settings = model.settings.replace(**LEAN)
    return model


@pytest.mark.parametrize("mode, config, fragments", [
    ("train", None, ("mode='train'", "mode='training' or mode='inference'")),
    ("training", {"NUM_CLASSES": 2}, ("config", "dict", "subclass")),
    ("training", maskrcnn.Config(), ("maskrcnn.Config", "Matterport-style", "maskrcnn.load")),
])
def test_model_construction(tmp_path: Path, mode: str, config: Any, fragments: tuple[str, ...]) -> None:
    with pytest.raises(MaskRCNNError) as err:
        modellib.MaskRCNN(mode=mode, config=config if config is not None else ShapesConfig(), model_dir=str(tmp_path))
    assert_one_line_error(err, *fragments)


def test_settings_must_be_a_config(tmp_path: Path) -> None:
    model = _model(tmp_path)
    with pytest.raises(MaskRCNNError) as err:
        model.settings = {"num_workers": 0}
    assert_one_line_error(err, "settings", "replace")


def _train(model: modellib.MaskRCNN, datasets: tuple[Any, Any], **kw: Any) -> Any:
    args = dict(learning_rate=0.001, epochs=1, layers="heads")
    args.update(kw)
    return model.train(datasets[0], datasets[1], **args)


class _KerasCallback:
    def on_epoch_end(self, epoch: int, logs: Any = None) -> None: ...


@pytest.mark.parametrize("kw, fragments", [
    (dict(layers="nothing_is_called_this"), ("layers='nothing_is_called_this'", "preset")),
    (dict(layers="(mrcnn"), ("layers", "regex")),
    (dict(custom_callbacks=[_KerasCallback()]), ("custom_callbacks", "_KerasCallback", "HookBase")),
])
def test_train_arguments(tmp_path: Path, datasets: tuple[Any, Any], kw: dict, fragments: tuple[str, ...]) -> None:
    model = _model(tmp_path)
    with pytest.raises(MaskRCNNError) as err:
        _train(model, datasets, **kw)
    assert_one_line_error(err, *fragments)
    assert not list(Path(tmp_path).glob("*/mask_rcnn_*"))  # nothing trained


def test_train_needs_a_training_model_and_datasets(tmp_path: Path, datasets: tuple[Any, Any]) -> None:
    with pytest.raises(MaskRCNNError) as err:
        _train(_model(tmp_path, "inference", InferenceConfig()), datasets)
    assert_one_line_error(err, "train", "mode='training'")
    with pytest.raises(MaskRCNNError) as err:
        _model(tmp_path).train([1, 2], None, 0.001, 1, "heads")
    assert_one_line_error(err, "train_dataset", "list")
    with pytest.raises(MaskRCNNError) as err:
        _model(tmp_path).detect([datasets[0].load_image(0)])
    assert_one_line_error(err, "detect", "mode='inference'")


def test_missing_imgaug_is_named(tmp_path: Path, datasets: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imgaug", None)  # import imgaug -> ImportError
    with pytest.raises(MaskRCNNError) as err:
        _train(_model(tmp_path), datasets, augmentation=object())
    assert_one_line_error(err, "augmentation", "imgaug", "pip install imgaug")


def test_imgaug_that_fails_to_import_under_numpy2_is_named(tmp_path: Path, datasets: tuple[Any, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "imgaug.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'sctypes'\")\n")
    monkeypatch.delitem(sys.modules, "imgaug", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MaskRCNNError) as err:
        _train(_model(tmp_path / "logs"), datasets, augmentation=object())
    assert_one_line_error(err, "imgaug failed to import", "sctypes", "numpy<2")


def test_augmentation_that_is_not_imgaug(tmp_path: Path, datasets: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imgaug", types.SimpleNamespace(HooksImages=object))
    with pytest.raises(MaskRCNNError) as err:
        _train(_model(tmp_path), datasets, augmentation="fliplr")
    assert_one_line_error(err, "augmentation", "str", "not an imgaug augmenter")


@pytest.mark.parametrize("name", ["mask_rcnn_coco.h5", "logs/shapes20250101T0000/mask_rcnn_shapes_0003.H5"])
def test_h5_weights_for_training_say_what_to_use_instead(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(MaskRCNNError) as err:
        _model(tmp_path).load_weights(str(path), by_name=True)
    assert_one_line_error(err, name.rsplit("/", 1)[-1], ".h5", "mode='inference'", "'coco'", "get_imagenet_weights")
    with pytest.raises(MaskRCNNError) as err:  # inference: read, and a damaged file says so
        _model(tmp_path, mode="inference", config=InferenceConfig()).load_weights(str(path), by_name=True)
    assert_one_line_error(err, name.rsplit("/", 1)[-1], "not a readable HDF5 file", "again")


def test_weights_with_another_class_count_need_exclude(tmp_path: Path) -> None:
    class TwoClasses(ShapesConfig):
        NUM_CLASSES = 3

    source = _model(tmp_path)
    path = W.save_checkpoint(source.module, source.settings, tmp_path / "four.safetensors")
    model = _model(tmp_path, config=TwoClasses())
    with pytest.raises(MaskRCNNError) as err:
        model.load_weights(str(path), by_name=True)
    assert_one_line_error(err, "four.safetensors", "NUM_CLASSES=3", "exclude=['mrcnn_class_logits'")
    with pytest.raises(MaskRCNNError) as err:
        model.load_weights(str(path), exclude=["mrcnn_class_logits", "mrcnn_nothing"])
    assert_one_line_error(err, "exclude", "'mrcnn_nothing'", "mrcnn_bbox_fc")
    before = model.module.state_dict()["roi_heads.box_predictor.cls_score.weight"].clone()
    model.load_weights(str(path), exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    assert torch.equal(model.module.state_dict()["roi_heads.box_predictor.cls_score.weight"], before)


def test_find_last_without_runs(tmp_path: Path) -> None:
    model = _model(tmp_path / "logs")
    with pytest.raises(FileNotFoundError) as err:
        model.find_last()
    assert_one_line_error(err, "logs", "no run folder of 'shapes'", "train first")


def test_matterport_keras_attributes_say_what_to_use(tmp_path: Path) -> None:
    model = _model(tmp_path)
    with pytest.raises(AttributeError, match=r"keras_model: .*model\.module"):
        model.keras_model.summary()
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        model.nonsense  # noqa: B018
    with pytest.raises(AttributeError, match=r"mrcnn\.model\.data_generator: .*train\(\) feeds the data"):
        modellib.data_generator  # noqa: B018
    with pytest.raises(AttributeError, match=r"mrcnn\.utils\.resize_mask: .*load_image_gt"):
        utils.resize_mask  # noqa: B018
    with pytest.raises(AttributeError, match=r"mrcnn\.visualize\.plot_precision_recall: .*maskrcnn evaluate"):
        visualize.plot_precision_recall  # noqa: B018


def test_download_trained_weights_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKRCNN_CACHE", str(tmp_path / "cache"))
    entry = W.NAMED_WEIGHTS["matterport-coco"]
    assert entry.url == utils.COCO_MODEL_URL
    monkeypatch.setitem(W.NAMED_WEIGHTS, "matterport-coco",
                        W.NamedWeights(entry.file, (tmp_path / "nowhere" / entry.file).as_uri(), "matterport", "resnet101"))
    with pytest.raises(MaskRCNNError) as err:
        utils.download_trained_weights(str(tmp_path / "mask_rcnn_coco.h5"), verbose=0)
    assert_one_line_error(err, "cannot download", "offline?", "put the file at")
    assert not (tmp_path / "mask_rcnn_coco.h5").exists()


@pytest.mark.parametrize("call, fragments", [
    (lambda: utils.extract_bboxes(torch.zeros(4, 4).numpy()), ("extract_bboxes", "[H, W, N]")),
    (lambda: utils.resize_image(torch.zeros(4, 4).numpy(), 8, 8), ("resize_image", "[H, W, C]")),
])
def test_utils_shapes(call: Any, fragments: tuple[str, ...]) -> None:
    with pytest.raises(MaskRCNNError) as err:
        call()
    assert_one_line_error(err, *fragments)


@pytest.mark.parametrize("kw, fragments", [
    (dict(image_id=7), ("load_image_gt", "image_id 7", "prepare()")),
    (dict(image_id=0, augment=True), ("load_image_gt", "train()")),
])
def test_load_image_gt_arguments(datasets: tuple[Any, Any], kw: dict, fragments: tuple[str, ...]) -> None:
    with pytest.raises(MaskRCNNError) as err:
        modellib.load_image_gt(datasets[0], ShapesConfig(), **kw)
    assert_one_line_error(err, *fragments)

"""Bad input for the input transform: tiny, extreme-aspect and odd-sized images through every
resize mode via the predictor, and ``crop`` at inference.

Each image either gives valid detections (possibly none) at its own size, boxes inside it, or, when
the mode cannot resize it (``pad64`` scales the short side up to ``image_min_dim`` without a cap),
a one-line ``DataError`` naming the file and the modes that can take it. ``crop`` is refused with
a ``ConfigError`` naming ``image_resize_mode`` and the fix (``pad64``), in the API and the CLI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn import Config, ConfigError, DataError
from maskrcnn.data.resize import MAX_RESIZED_SIDE
from maskrcnn.inference.predictor import Predictor
from maskrcnn.weights import save_checkpoint

from _bad_input import assert_clean_error, assert_one_line_error, run_cli
from test_predictor_inputs import biased_model

SIZES = {"1x2000": (1, 2000), "2000x1": (2000, 1), "3x3000": (3, 3000), "3000x3": (3000, 3), "1x1": (1, 1),
         "5x7": (5, 7), "2x1": (2, 1), "97x61": (97, 61)}
MODES = ["minmax", "none", "square", "pad64"]


@pytest.fixture(scope="module")
def predictors() -> dict[str, Predictor]:
    return {m: Predictor(biased_model(image_resize_mode=m, image_min_dim=64, image_max_dim=128), device="cpu")
            for m in MODES}


def _image(tmp_path, size: tuple[int, int], seed: int = 0):
    h, w = size
    path = tmp_path / f"odd_{h}x{w}.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SIZES))
def test_odd_sizes_in_every_mode(predictors, tmp_path, mode, name):
    h, w = SIZES[name]
    path = _image(tmp_path, (h, w))
    predictor = predictors[mode]
    if mode == "pad64" and max(h, w) * 64 / min(h, w) > MAX_RESIZED_SIDE:
        with pytest.raises(DataError) as exc:
            predictor.detect(path)
        assert_one_line_error(exc, path.name, f"{h}x{w}", "image_resize_mode=pad64", "minmax or square")
        return
    (det,) = predictor.detect(path)
    assert det.image_size == (h, w) and det.file_name == path.name
    assert det.masks.shape == (len(det), h, w) and det.masks.dtype == bool
    assert len(det.class_ids) == len(det.scores) == len(det.boxes)
    if len(det):
        assert np.isfinite(det.boxes).all()
        assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
        assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
        assert set(det.class_ids.tolist()) <= {1, 2, 3}
    # the COCO conversion of these results works at this size too
    assert len(det.to_coco(1)) == len(det)


def test_a_refused_image_names_itself_in_a_batch(predictors, tmp_path):
    """In a list, the one image pad64 cannot take is named (the others are fine)."""
    good, bad = _image(tmp_path, (40, 50)), _image(tmp_path, (3, 3000), 1)
    with pytest.raises(DataError) as exc:
        predictors["pad64"].detect([good, bad])
    assert_one_line_error(exc, bad.name, "image_resize_mode=pad64")


def _crop_model(inference_resize_mode: str = "pad64"):
    return biased_model(image_resize_mode="crop", inference_resize_mode=inference_resize_mode,
                        image_min_dim=64, image_max_dim=128)


def test_crop_without_an_inference_mode_is_a_config_error_with_the_fix():
    with pytest.raises(ConfigError) as exc:
        Config(image_resize_mode="crop", image_min_dim=64)
    assert_one_line_error(exc, "inference_resize_mode", "image_resize_mode=crop", "pad64")
    with pytest.raises(ConfigError) as exc:
        Predictor(_crop_model(), device="cpu", resize_mode="crop")
    assert_one_line_error(exc, "inference_resize_mode=crop", "training only", "pad64")


def test_a_crop_trained_model_detects_with_its_inference_mode(tmp_path):
    pad64, square = _crop_model("pad64"), _crop_model("square")
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    assert pad64.transform.mode == "pad64" and square.transform.mode == "square"
    (det,) = Predictor(pad64, device="cpu").detect(image)
    assert det.image_size == (40, 50)
    # the model detects on whole images: 40x50 upscaled to the 64 px short side, then padded to 64
    batch = pad64.preprocess([torch.zeros(3, 40, 50)])
    assert batch.windows == [(0, 24, 64, 104)]  # Matterport centres the padding and tuple(batch.tensor.shape[-2:]) == (64, 128)
    # a checkpoint carries the mode: load and the CLI detect without being told
    ckpt = save_checkpoint(pad64, pad64.config, tmp_path / "crop.safetensors")
    assert maskrcnn.load(ckpt, device="cpu").transform.mode == "pad64"
    assert maskrcnn.load(ckpt, device="cpu", inference_resize_mode="square").transform.mode == "square"
    result = run_cli("detect", _image(tmp_path, (40, 50)), "--weights", ckpt, "--out", tmp_path / "out",
                     "--device", "cpu", "--no-overlays")
    assert result.code == 0, result.err


def test_a_folder_run_reports_and_skips_the_refused_image(predictors, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good, bad = _image(folder, (40, 50)), _image(folder, (3000, 3), 2)
    skipped: list[tuple[str, str]] = []
    stream = predictors["pad64"].stream(folder, skip_errors=True, on_skip=lambda n, exc: skipped.append((n, str(exc))))
    results = list(stream)
    assert [n for n, _ in results] == [good.name] and results[0][1].image_size == (40, 50)
    assert len(skipped) == 1 and bad.name in skipped[0][0]
    assert "image_resize_mode=pad64 would resize this 3000x3 image" in skipped[0][1]


@pytest.mark.parametrize("mode", ["minmax", "none", "square", "pad64", "crop"])
@pytest.mark.parametrize("size", [(1, 2000), (3000, 3)])
def test_training_samples_of_extreme_sizes(mode, size):
    """The training pipeline resizes with the same geometry: a valid sample, or a skip naming the image."""
    from maskrcnn import Config
    from maskrcnn.data.pipeline import SkippedSample, TrainingDataset

    from test_data_pipeline import MemDataset

    h, w = size
    masks = np.zeros((h, w, 1), dtype=bool)
    masks[:, : max(1, w // 2), 0] = True
    ds = MemDataset([{"image": np.full((h, w, 3), 128, np.uint8), "masks": masks, "ids": np.array([1])}])
    cfg = Config(num_classes=4, image_resize_mode=mode, image_min_dim=64, image_max_dim=128,
                 inference_resize_mode="pad64" if mode == "crop" else None)
    item = TrainingDataset(ds, cfg, train=False)[0]
    if mode in ("pad64", "crop"):  # the short side scaled up to 64 without a cap: 64 x 128000 or 192000 x 64
        assert isinstance(item, SkippedSample) and item.reference.endswith("img0")
        assert f"image_resize_mode={mode} would resize this {h}x{w} image" in item.message
        return
    image, target = item
    assert min(image.shape[1:]) >= 1 and target["orig_size"] == (h, w)
    assert target["masks"].shape[1:] == image.shape[1:]

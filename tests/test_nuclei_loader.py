"""The nuclei preset + the DSB mask-folder loader + TrainingDataset on two real nuclei images.

Uses ``../shared/data/nuclei`` (Data Science Bowl 2018, Kaggle layout) when it is there; skipped
otherwise. Two image folders are copied into a temporary folder so that only they are read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import maskrcnn.configs
from maskrcnn.config import Config
from maskrcnn.data.augment import boxes_from_masks
from maskrcnn.data.formats import InstanceMaskDataset, detect_format, load_dataset
from maskrcnn.data.pipeline import TrainingDataset, collate

NUCLEI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei"
PRESET = Path(maskrcnn.configs.__file__).resolve().parent / "nuclei.yaml"

pytestmark = pytest.mark.skipif(not (NUCLEI / "train").is_dir(), reason="../shared/data/nuclei is not available")


@pytest.fixture(scope="module")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first two training images (sorted by id) with their masks, in a folder of their own."""
    root = tmp_path_factory.mktemp("nuclei2")
    for folder in sorted(p for p in (NUCLEI / "train").iterdir() if (p / "images").is_dir())[:2]:
        shutil.copytree(folder, root / folder.name)
    return root


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.from_yaml(PRESET)


@pytest.fixture(scope="module")
def dataset(two_images: Path) -> InstanceMaskDataset:
    return load_dataset(two_images)


def contrast(image: np.ndarray, union: np.ndarray) -> float:
    """Mean grey level inside the nuclei minus outside (sign: bright or dark nuclei)."""
    grey = image.astype(np.float64).mean(axis=2)
    return float(grey[union].mean() - grey[~union].mean())


def test_preset_is_set_for_small_dense_objects(config: Config) -> None:
    assert config.num_classes == 2
    assert config.backbone == "resnet18" and config.optimizer == "adamw"
    assert min(config.rpn_anchor_scales) == 8
    assert config.max_gt_instances >= 400 and config.detection_max_instances >= 400
    assert config.image_resize_mode == "crop" and config.image_min_scale >= 2.0
    assert config.image_min_dim % 64 == 0  # inference uses pad64 with the same min dim
    assert config.train_bn  # from scratch: BatchNorm statistics must be learnt
    # fluorescence and stained histology in one set: one polarity, per-image statistics
    assert config.invert_bright_images and config.image_normalization == "per_image"
    assert config.detection_nms_threshold <= 0.3  # nuclei do not overlap


def test_loader_reads_kaggle_layout_as_rgb(two_images: Path, dataset: InstanceMaskDataset) -> None:
    assert detect_format(two_images) == "instance-masks"
    assert isinstance(dataset, InstanceMaskDataset)
    assert len(dataset.image_ids) == 2 and dataset.num_classes == 2
    for i in dataset.image_ids:
        image = dataset.load_image(i)
        masks, class_ids = dataset.load_mask(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3  # RGBA -> RGB
        folder = Path(dataset.image_info[i]["path"]).parents[1]
        n_files = len(list((folder / "masks").glob("*.png")))
        assert masks.shape == (*image.shape[:2], n_files) and masks.dtype == bool
        assert n_files > 0 and (class_ids == 1).all()
        assert masks.any(axis=(0, 1)).all()  # every mask file holds a nucleus
        assert masks.sum(axis=2).max() == 1  # nuclei do not overlap
        assert abs(contrast(image, masks.any(axis=2))) > 5  # masks lie on the nuclei


def test_training_samples_are_upscaled_crops_with_consistent_targets(dataset: InstanceMaskDataset, config: Config) -> None:
    td = TrainingDataset(dataset, config, train=True, seed=0, skip_errors=False)
    side = config.image_min_dim
    counts = {int(i): [] for i in range(len(td))}
    for epoch in range(3):
        td.set_epoch(epoch)
        for index in range(len(td)):
            image, target = td[index]
            assert image.dtype == torch.float32 and tuple(image.shape) == (3, side, side)
            assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
            masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
            n = len(labels)
            assert masks.dtype == torch.uint8 and tuple(masks.shape) == (n, side, side)
            assert boxes.dtype == torch.float32 and tuple(boxes.shape) == (n, 4)
            assert labels.dtype == torch.int64 and (labels == 1).all()
            assert n <= config.max_gt_instances
            if n:
                assert torch.equal(boxes, torch.from_numpy(boxes_from_masks(masks.numpy())))
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
                assert float(boxes.min()) >= 0 and float(boxes.max()) <= side
                assert int(masks.sum(dim=(1, 2)).min()) >= config.aug_min_area
            counts[index].append(n)
    for index, ns in counts.items():
        assert max(ns) > 0, f"image {index}: no nucleus in any of 3 random crops"
    batch = collate([td[0], td[1]])
    assert len(batch.images) == 2 and not batch.skipped


def test_unaugmented_crop_keeps_nuclei_on_the_image(dataset: InstanceMaskDataset, config: Config) -> None:
    """Without augmentation the crop is a 2x (or more) upscaled window: masks stay on the nuclei."""
    td = TrainingDataset(dataset, config, train=False, seed=0, skip_errors=False)
    for index, image_id in enumerate(dataset.image_ids):
        original = dataset.load_image(image_id)
        orig_masks = dataset.load_mask(image_id)[0]
        image, target = td[index]
        assert target["orig_size"] == original.shape[:2]
        n = len(target["labels"])
        assert 0 < n <= orig_masks.shape[2]
        sample = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        union = target["masks"].numpy().any(axis=0)
        c_orig, c_crop = contrast(original, orig_masks.any(axis=2)), contrast(sample, union)
        assert np.sign(c_orig) == np.sign(c_crop) and abs(c_crop) > 0.5 * abs(c_orig)
        # at least image_min_scale: the mean nucleus area grows by scale^2 (crop-cut nuclei aside)
        areas = target["masks"].numpy().reshape(n, -1).sum(axis=1)
        assert np.median(areas) > 2.0 * np.median(orig_masks.reshape(-1, orig_masks.shape[2]).sum(axis=0))


def test_inference_input_is_pad64_upscaled(dataset: InstanceMaskDataset, config: Config) -> None:
    """A crop-trained model detects with pad64 at the same scale (the mode stated explicitly)."""
    from maskrcnn.modeling.transform import InputTransform

    transform = InputTransform(config.replace(image_resize_mode="pad64"))
    for image_id in dataset.image_ids:
        original = dataset.load_image(image_id)
        info = transform.plan(*original.shape[:2])
        h, w = original.shape[:2]
        assert info.image_size[0] % 64 == 0 and info.image_size[1] % 64 == 0
        assert info.scale >= config.image_min_scale
        assert info.scaled_size == (round(h * info.scale), round(w * info.scale))

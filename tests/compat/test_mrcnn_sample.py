"""Matterport scripts run on ``maskrcnn.compat.mrcnn`` with only their imports changed.

The script part of each test is written as Matterport's samples are (``from
maskrcnn.compat.mrcnn import config, utils, model as modellib, visualize``); the assertions
compare with this project's own API (Predictor, evaluation) where the values must agree.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shapes_sample import InferenceConfig, ShapesConfig, shapes_datasets  # noqa: E402

from maskrcnn.compat.mrcnn import model as modellib  # noqa: E402
from maskrcnn.compat.mrcnn import utils, visualize  # noqa: E402

#: what Matterport has no attribute for: a lean ResNet stem and no loader processes (CI speed), and
#: inputs of unit scale (Matterport's 0-255 minus MEAN_PIXEL explodes in a randomly initialised net)
LEAN = dict(backbone_width=8, mask_head_channels=16, num_workers=0, pixel_mean=[0.5] * 3, pixel_std=[0.25] * 3)


def _params(model: modellib.MaskRCNN, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.module.state_dict().items() if k.startswith(prefix)}


def _changed(before: dict[str, torch.Tensor], model: modellib.MaskRCNN) -> bool:
    now = model.module.state_dict()
    return any(not torch.equal(v, now[k].cpu()) for k, v in before.items())


def test_config_derived_fields_and_display(capsys: pytest.CaptureFixture) -> None:
    cfg = ShapesConfig()
    assert cfg.BATCH_SIZE == 2
    assert cfg.IMAGE_SHAPE.tolist() == [64, 64, 3]
    assert cfg.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 4
    cfg.display()
    out = capsys.readouterr().out
    assert re.search(r"^BATCH_SIZE\s+2$", out, re.M) and re.search(r"^NAME\s+shapes$", out, re.M)
    assert "display" not in cfg.to_dict() and cfg.to_dict()["STEPS_PER_EPOCH"] == 4

    class CropConfig(ShapesConfig):
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 32
        IMAGE_CHANNEL_COUNT = 1

    assert CropConfig().IMAGE_SHAPE.tolist() == [32, 32, 1]  # crop mode: MIN_DIM square


def test_shapes_sample_trains_in_stages_then_detects(tmp_path: Path) -> None:
    # ---------------------------------------------------------------- the script, Matterport style
    torch.manual_seed(0)  # the same initial weights whatever ran before in this process
    config = ShapesConfig()
    dataset_train, dataset_val = shapes_datasets()
    model = modellib.MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    model.settings = model.settings.replace(**LEAN)
    backbone_before, heads_before = _params(model, "backbone.body."), _params(model, "roi_heads.")

    first = model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE, epochs=1, layers="heads")
    assert not _changed(backbone_before, model) and _changed(heads_before, model)  # heads only
    assert model.epoch == 1 and first.global_step == config.STEPS_PER_EPOCH  # 4 steps of 2 images > 6 images
    backbone_after_heads = _params(model, "backbone.body.")

    second = model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE / 10, epochs=3, layers="all")
    assert _changed(backbone_after_heads, model)  # now the backbone trains too
    assert model.epoch == 3 and second.epochs_completed == 3 and second.global_step == 2 * config.STEPS_PER_EPOCH

    assert model.train(dataset_train, dataset_val, learning_rate=0.001, epochs=3, layers="all") is None  # already there

    log_dir = Path(model.log_dir)
    assert re.fullmatch(r"shapes\d{8}T\d{4}", log_dir.name) and log_dir.parent == tmp_path
    names = sorted(p.name for p in log_dir.glob("mask_rcnn_*"))
    assert names == ["mask_rcnn_shapes_0001.safetensors", "mask_rcnn_shapes_0002.safetensors",
                     "mask_rcnn_shapes_0003.safetensors"]
    model_path = model.find_last()
    assert model_path == str(log_dir / "mask_rcnn_shapes_0003.safetensors")
    # the epoch file holds the weights that training ended with
    from maskrcnn.weights import load_checkpoint

    _, saved = load_checkpoint(model_path)
    now = model.module.state_dict()
    assert all(torch.equal(saved[k], now[k].cpu()) for k in saved)

    inference_config = InferenceConfig()
    model = modellib.MaskRCNN(mode="inference", config=inference_config, model_dir=str(tmp_path))
    model.settings = model.settings.replace(**LEAN)
    model.load_weights(model_path, by_name=True)
    assert model.epoch == 3 and model.log_dir == str(log_dir)  # Matterport: continue that run folder

    image_id = dataset_val.image_ids[0]
    image, image_meta, gt_class_id, gt_bbox, gt_mask = modellib.load_image_gt(dataset_val, inference_config, image_id,
                                                                              use_mini_mask=False)
    modellib.log("original_image", image)
    results = model.detect([image], verbose=1)
    r = results[0]
    ap, precisions, recalls, overlaps = utils.compute_ap(gt_bbox, gt_class_id, gt_mask,
                                                         r["rois"], r["class_ids"], r["scores"], r["masks"])
    fig, ax = plt.subplots(1, figsize=(4, 4))
    visualize.display_instances(image, r["rois"], r["masks"], r["class_ids"], dataset_val.class_names, r["scores"], ax=ax)

    # ---------------------------------------------------------------- checked against our API
    masks, class_ids = dataset_val.load_mask(image_id)  # 64 x 64 images: "square" 64 leaves them as they are
    np.testing.assert_array_equal(image, dataset_val.load_image(image_id))
    keep = masks.any(axis=(0, 1))
    np.testing.assert_array_equal(gt_mask, masks[:, :, keep])
    np.testing.assert_array_equal(gt_class_id, class_ids[keep])
    np.testing.assert_array_equal(gt_bbox, utils.extract_bboxes(masks[:, :, keep]))
    assert image_meta.shape == (inference_config.IMAGE_META_SIZE,)
    meta = modellib.parse_image_meta(image_meta[None])
    assert meta["original_image_shape"][0].tolist() == [64, 64, 3] and meta["window"][0].tolist() == [0, 0, 64, 64]
    assert meta["scale"][0] == 1.0 and meta["active_class_ids"][0].tolist() == [1, 1, 1, 1]
    assert len(results) == 1 and set(r) == {"rois", "class_ids", "scores", "masks"}
    n = len(r["scores"])
    assert n > 0 and r["rois"].shape == (n, 4) and r["rois"].dtype == np.int32
    assert r["masks"].shape == (64, 64, n) and r["masks"].dtype == bool
    from maskrcnn import load

    device = "cuda" if torch.cuda.is_available() else "cpu"  # where MaskRCNN.detect runs
    ours = load(model_path, device=device, detection_min_confidence=0.0).detect(image)[0]
    np.testing.assert_array_equal(r["rois"], np.round(ours.boxes[:, [1, 0, 3, 2]]).astype(np.int32))  # y1, x1, y2, x2
    np.testing.assert_array_equal(r["class_ids"], ours.class_ids)
    np.testing.assert_allclose(r["scores"], ours.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(r["masks"], ours.masks.transpose(1, 2, 0))
    from maskrcnn.evaluation.voc import compute_ap

    assert ap == compute_ap(gt_bbox, gt_class_id, gt_mask, r["rois"], r["class_ids"], r["scores"], r["masks"])[0]
    assert overlaps.shape == (n, len(gt_class_id)) and 0.0 <= ap <= 1.0
    drawn = [p for p in ax.patches]
    assert len(drawn) == int(np.any(r["rois"] != 0, axis=1).sum())
    first_box = drawn[0]
    y1, x1, y2, x2 = r["rois"][np.flatnonzero(np.any(r["rois"] != 0, axis=1))[0]]
    assert (first_box.get_x(), first_box.get_y(), first_box.get_width(), first_box.get_height()) == (x1, y1, x2 - x1, y2 - y1)
    assert len(ax.texts) == len(drawn) and ax.images[0].get_array().shape == (64, 64, 3)
    plt.close(fig)


def test_compute_ap_extract_bboxes_and_display_helpers_on_known_values() -> None:
    gt = np.zeros((20, 20, 2), dtype=bool)
    gt[0:5, 0:5, 0] = True
    gt[10:15, 10:15, 1] = True
    stray = np.zeros((20, 20, 1), dtype=bool)
    stray[0:5, 14:19, 0] = True
    pred = np.concatenate([gt[..., :1], stray, gt[..., 1:]], axis=2)
    gt_boxes = utils.extract_bboxes(gt)
    assert gt_boxes.tolist() == [[0, 0, 5, 5], [10, 10, 15, 15]] and gt_boxes.dtype == np.int32
    pred_boxes = utils.extract_bboxes(pred)
    # scores rank them TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    ap, precisions, recalls, overlaps = utils.compute_ap(gt_boxes, np.array([1, 2]), gt, pred_boxes, np.array([1, 1, 2]),
                                                         np.array([0.9, 0.8, 0.7]), pred)
    assert ap == pytest.approx(5 / 6)
    np.testing.assert_allclose(recalls, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(precisions, [1, 1, 2 / 3, 2 / 3, 0])
    assert overlaps.tolist() == [[1, 0], [0, 0], [0, 1]]
    assert utils.compute_overlaps_masks(gt, pred).tolist() == [[1, 0, 0], [0, 0, 1]]

    image = np.full((4, 4, 3), 100, dtype=np.uint8).astype(np.float64)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1, 2] = 1
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.5), alpha=0.5)
    assert out[1, 2].tolist() == [177.5, 50.0, 113.75] and out[0, 0].tolist() == [100, 100, 100]
    colors = visualize.random_colors(5)
    assert len(colors) == 5 and len(set(colors)) == 5 and all(0 <= v <= 1 for c in colors for v in c)

    figures = len(plt.get_fignums())
    visualize.display_instances(np.zeros((20, 20, 3), np.uint8), gt_boxes, gt, np.array([1, 2]), ["BG", "a", "b"])
    assert len(plt.get_fignums()) == figures + 1  # under Agg: drawn, not shown, left open for savefig
    fig = visualize.display_top_masks(np.zeros((20, 20, 3), np.uint8), gt, np.array([1, 2]), ["BG", "a", "b"], limit=2)
    assert [ax.get_title() for ax in fig.axes] == ["H x W=20x20", "a", "b"]  # equal areas: class order kept
    plt.close("all")


def test_load_image_gt_resizes_as_the_config_says() -> None:
    class Bigger(ShapesConfig):
        IMAGE_MIN_DIM = 96
        IMAGE_MAX_DIM = 128

    dataset, _ = shapes_datasets(train=1, val=1)
    image, meta, class_ids, bbox, mask = modellib.load_image_gt(dataset, Bigger(), 0, use_mini_mask=False)
    # 64 x 64 scaled by 96 / 64 to 96 x 96, centred in 128 x 128
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape[:2] == (128, 128)
    fields = modellib.parse_image_meta(meta[None])
    assert fields["window"][0].tolist() == [16, 16, 112, 112] and fields["scale"][0] == 1.5
    np.testing.assert_array_equal(bbox, utils.extract_bboxes(mask))
    assert not image[:16].any() and not mask[:16].any()
    _, _, mini_ids, mini_bbox, mini = modellib.load_image_gt(dataset, Bigger(), 0, use_mini_mask=True)
    assert mini.shape == (28, 28, len(class_ids)) and mini_bbox.tolist() == bbox.tolist()  # MINI_MASK_SHAPE
    np.testing.assert_array_equal(mini, utils.minimize_mask(bbox, mask, (28, 28)))  # the pipeline's rule
    square = np.zeros((128, 128, 1), dtype=bool)
    square[20:40, 30:60] = True  # a box is filled in its mini mask, and comes back exactly
    box = utils.extract_bboxes(square)
    assert utils.minimize_mask(box, square, (7, 7)).all()
    np.testing.assert_array_equal(utils.expand_mask(box, utils.minimize_mask(box, square, (7, 7)), (128, 128, 3)), square)


@pytest.mark.parametrize("mode, shape", [("L", (6, 5)), ("RGBA", (6, 5, 4)), ("RGB", (6, 5, 3))])
def test_dataset_load_image_is_rgb_as_matterport(tmp_path: Path, mode: str, shape: tuple[int, ...]) -> None:
    from PIL import Image

    pixels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    Image.fromarray(pixels).save(tmp_path / "a.png")  # L, RGBA or RGB from the shape
    dataset = utils.Dataset()
    dataset.add_class("x", 1, "thing")
    dataset.add_image("x", image_id="a", path=str(tmp_path / "a.png"))
    dataset.prepare()
    image = dataset.load_image(0)
    rgb = np.repeat(pixels[:, :, None], 3, axis=2) if mode == "L" else pixels[:, :, :3]
    np.testing.assert_array_equal(image, rgb)


def test_resize_image_matches_matterport_square_geometry() -> None:
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    out, window, scale, padding, crop = utils.resize_image(image, min_dim=64, max_dim=128, mode="square")
    # scale = 64 / 60 (short side up to MIN_DIM); 64 x 85 centred in 128 x 128
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert scale == pytest.approx(64 / 60) and window == (32, 21, 96, 106)
    assert padding == [(32, 32), (21, 22), (0, 0)] and crop is None
    assert not out[:32].any() and not out[:, :21].any()


class _Hooks:
    """imgaug.HooksImages' part the augmenters call."""

    def __init__(self, activator=None) -> None:  # noqa: ANN001
        self.activator = activator

    def is_activated(self, images, augmenter, parents, default):  # noqa: ANN001, ANN201
        return default if self.activator is None else self.activator(images, augmenter, parents, default)


class Fliplr:
    """A stand-in for imgaug.augmenters.Fliplr(1.0) (imgaug 0.4 does not import under NumPy 2)."""

    def to_deterministic(self):  # noqa: ANN201
        return self

    def augment_image(self, image, hooks=None, parents=()):  # noqa: ANN001, ANN201
        if hooks is not None and not hooks.is_activated([image], self, list(parents), True):
            return image
        return image[:, ::-1]


class Multiply(Fliplr):
    """Stand-in for imgaug.augmenters.Multiply(0.5): a colour change, never applied to masks."""

    def augment_image(self, image, hooks=None, parents=()):  # noqa: ANN001, ANN201
        if hooks is not None and not hooks.is_activated([image], self, list(parents), True):
            return image
        return (image * 0.5).astype(image.dtype)


class Sequential(Fliplr):
    def __init__(self, children) -> None:  # noqa: ANN001
        self.children = children
        self.seeds: list[int] = []

    def seed_(self, seed: int) -> None:
        self.seeds.append(seed)

    def augment_image(self, image, hooks=None, parents=()):  # noqa: ANN001, ANN201
        if hooks is not None and not hooks.is_activated([image], self, list(parents), True):
            return image
        for child in self.children:
            image = child.augment_image(image, hooks=hooks, parents=[*parents, self])
        return image


def test_imgaug_augmentation_changes_masks_only_for_geometric_augmenters(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "imgaug", types.SimpleNamespace(HooksImages=_Hooks))
    dataset, _ = shapes_datasets(train=2, val=1)
    model = modellib.MaskRCNN(mode="training", config=ShapesConfig(), model_dir=str(tmp_path))
    settings = model.settings.replace(**LEAN)
    augmentation = Sequential([Fliplr(), Multiply()])
    fn = modellib.imgaug_augment_fn(augmentation, dataset)
    from maskrcnn.data.pipeline import TrainingDataset

    plain = TrainingDataset(dataset, settings, train=True)
    augmented = TrainingDataset(dataset, settings, train=True, augment_fn=fn)
    image, target = plain.load(0)
    image_aug, target_aug = augmented.load(0)
    expected = (np.round(image.numpy() * 255).astype(np.uint8)[:, :, ::-1] * 0.5).astype(np.uint8) / 255.0  # [C, H, W]
    np.testing.assert_allclose(image_aug.numpy(), expected.astype(np.float32), atol=1e-6)  # flipped and darker
    h, w = image.shape[1:]
    boxes, boxes_aug = target["boxes"].numpy(), target_aug["boxes"].numpy()
    np.testing.assert_array_equal(boxes_aug[:, [0, 2]], w - boxes[:, [2, 0]])  # masks flipped, not darkened away
    np.testing.assert_array_equal(target_aug["labels"], target["labels"])
    assert len(augmentation.seeds) == 1  # one seeded draw per sample, from the sample's generator

    skipping = TrainingDataset(dataset, settings, train=True,
                               augment_fn=modellib.imgaug_augment_fn(augmentation, dataset, no_augmentation_sources=["shapes"]))
    np.testing.assert_array_equal(skipping.load(0)[0].numpy(), image.numpy())


def test_load_weights_by_name_and_exclude_keep_the_models_own_layers(tmp_path: Path) -> None:
    config = ShapesConfig()
    model = modellib.MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    model.settings = model.settings.replace(**LEAN)
    from maskrcnn.weights import save_checkpoint

    torch.manual_seed(1)
    source = modellib.MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    source.settings = source.settings.replace(**LEAN)
    path = save_checkpoint(source.module, source.settings, tmp_path / "elsewhere.safetensors")
    own_logits = _params(model, "roi_heads.box_predictor.cls_score.")
    model.load_weights(str(path), by_name=True, exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    now = model.module.state_dict()
    src = source.module.state_dict()
    assert all(torch.equal(now[k].cpu(), v) for k, v in own_logits.items())  # excluded: kept
    assert torch.equal(now["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])  # loaded
    assert not torch.equal(now["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                           src["roi_heads.mask_predictor.mask_fcn_logits.weight"])
    assert model.epoch == 0 and Path(model.log_dir).parent == tmp_path  # not one of train()'s names: a new run
    os.makedirs(model.log_dir)
    with pytest.raises(FileNotFoundError):  # Matterport's exception type, our one-line message
        model.find_last()


def test_load_weights_of_a_resnet_body_as_imagenet_weights_are(tmp_path: Path) -> None:
    config = ShapesConfig()
    model = modellib.MaskRCNN(mode="training", config=config, model_dir=str(tmp_path))
    model.settings = model.settings.replace(**LEAN)
    assert model.get_imagenet_weights() == "imagenet"  # the same path, downloaded by name
    torch.manual_seed(3)
    body = {k[len("backbone.body."):]: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in model.module.state_dict().items() if k.startswith("backbone.body.")}
    torch.save(body, tmp_path / "resnet18-body.pth")  # a torchvision ResNet's key names
    heads = _params(model, "roi_heads.")
    model.load_weights(str(tmp_path / "resnet18-body.pth"), by_name=True)
    now = model.module.state_dict()
    assert all(torch.equal(now["backbone.body." + k].cpu(), v) for k, v in body.items())
    assert all(torch.equal(now[k].cpu(), v) for k, v in heads.items())  # the rest keeps its initialisation

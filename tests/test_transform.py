"""The model's input transform (``maskrcnn.modeling.transform.InputTransform``): geometry of every
resize mode with hand-computed numbers, boxes original -> resized -> original, the batch it gives
the network (:class:`maskrcnn.structures.ImageBatch`), torchvision's transform bit for bit, and
the training path (already resized images, windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn import Config, ConfigError, DataError
from maskrcnn.data.resize import MAX_RESIZED_SIDE, plan_resize, resize_image
from maskrcnn.modeling.transform import InputTransform, normalize_input
from maskrcnn.structures import Batch, ImageBatch

BOX = [12.0, 18.0, 60.0, 72.0]  # x1, y1, x2, y2 in a 90 x 120 (H x W) image

# mode, config -> (scaled size, output size, window, the box in the output image)
GEOMETRY = {
    # scale = min(64/90, 96/120) = 0.7111: sides int(90 * s) = 64, int(120 * s) = 85; no padding
    "minmax": (dict(image_min_dim=64, image_max_dim=96), (64, 85), (64, 85), (0, 0, 64, 85),
               [12 * 85 / 120, 18 * 64 / 90, 60 * 85 / 120, 72 * 64 / 90]),
    "none": (dict(image_min_dim=64, image_max_dim=96), (90, 120), (90, 120), (0, 0, 90, 120), BOX),
    # scale max(1, 64/90) = 1, but the long side 120 > 96: scale 0.8 -> 72 x 96, centred in 96 x 96
    "square": (dict(image_min_dim=64, image_max_dim=96), (72, 96), (96, 96), (12, 0, 84, 96),
               [9.6, 26.4, 48.0, 69.6]),
    # scale 1, padded to 128 x 128: 19 rows on top, 4 columns on the left
    "pad64": (dict(image_min_dim=64, image_max_dim=96), (90, 120), (128, 128), (19, 4, 109, 124),
              [16.0, 37.0, 64.0, 91.0]),
    # image_min_scale 1.5 -> 135 x 180, padded to 192 x 192 (28 rows, 6 columns before)
    "pad64-min-scale": (dict(image_min_dim=64, image_max_dim=96, image_min_scale=1.5), (135, 180), (192, 192),
                        (28, 6, 163, 186), [24.0, 55.0, 96.0, 136.0]),
}


def _config(mode: str, **kw) -> Config:
    return Config(num_classes=3, image_resize_mode=mode.split("-")[0], **kw)


@pytest.mark.parametrize("case", list(GEOMETRY))
def test_geometry_and_box_round_trip(case):
    kw, scaled, out, window, resized_box = GEOMETRY[case]
    transform = InputTransform(_config(case, **kw))
    info = transform.plan(90, 120)
    assert (info.scaled_size, info.image_size, info.window) == (scaled, out, window)
    fwd = info.boxes_to_resized(np.array([BOX]))
    np.testing.assert_allclose(fwd, [resized_box], atol=1e-5, rtol=0)
    back = info.boxes_to_original(torch.tensor(fwd))
    assert back.dtype == torch.float32
    np.testing.assert_allclose(back.numpy(), [BOX], atol=1e-5, rtol=0)
    # the image the network sees has that geometry, and postprocess maps the box back
    batch = transform([torch.rand(3, 90, 120)])
    assert batch.image_sizes == [out] and batch.windows == [window] and batch.original_sizes == [(90, 120)]
    assert batch.padded_size == tuple(-(-s // 32) * 32 for s in out)
    results = transform.postprocess([{"boxes": torch.tensor(fwd)}], batch)
    np.testing.assert_allclose(results[0]["boxes"].numpy(), [BOX], atol=1e-5, rtol=0)


def test_crop_geometry_and_refusal_at_inference():
    """crop: training only; the box moves by the crop's origin (scale 1 here)."""
    info = plan_resize(90, 120, "crop", 64, 96, rng=np.random.default_rng(3))
    y, x, h, w = info.crop
    assert (h, w) == (64, 64) and info.image_size == (64, 64) and 0 <= y <= 26 and 0 <= x <= 56
    fwd = info.boxes_to_resized(np.array([BOX]))
    np.testing.assert_allclose(fwd, [[12 - x, 18 - y, 60 - x, 72 - y]], atol=1e-5)
    np.testing.assert_allclose(info.boxes_to_original(fwd, clip=False), [BOX], atol=1e-5)
    with pytest.raises(ConfigError, match="inference_resize_mode: required with image_resize_mode=crop.*pad64"):
        _config("crop", image_min_dim=64, image_max_dim=96)
    transform = InputTransform(_config("crop", image_min_dim=64, image_max_dim=96, inference_resize_mode="pad64"))
    info = transform.plan(90, 120)  # pad64 only upscales, then pads to multiples of 64
    assert (info.image_size, info.window) == ((128, 128), (19, 4, 109, 124))  # padding centred


def test_boxes_in_padding_are_clipped_to_the_image():
    info = InputTransform(_config("pad64", image_min_dim=64, image_max_dim=96)).plan(90, 120)
    back = info.boxes_to_original(torch.tensor([[0.0, 0.0, 128.0, 128.0], [2.0, 10.0, 20.0, 30.0]]))
    assert back.tolist() == [[0.0, 0.0, 120.0, 90.0], [0.0, 0.0, 16.0, 11.0]]


@pytest.mark.parametrize("mode", ["minmax", "none", "square", "pad64"])
@pytest.mark.parametrize("size", [(1, 2000), (2000, 1), (3, 3000), (3000, 3), (1, 1), (5, 7)])
def test_tiny_and_extreme_sizes_keep_every_side(mode, size):
    """Every side stays >= 1 pixel; pad64 (short side scaled up without a cap) refuses the extreme ones."""
    h, w = size
    transform = InputTransform(_config(mode, image_min_dim=64, image_max_dim=96))
    if mode == "pad64" and max(h, w) / min(h, w) * 64 > MAX_RESIZED_SIDE:
        with pytest.raises(DataError, match=rf"^tiny\.png: image_resize_mode=pad64 would resize this {h}x{w} image"):
            transform.plan(h, w, "tiny.png")
        return
    info = transform.plan(h, w)
    assert min(info.scaled_size) >= 1 and min(info.image_size) >= 1
    batch = transform([torch.rand(3, h, w)])
    assert batch.tensor.shape[-2] % 32 == 0 and batch.tensor.shape[-1] % 32 == 0
    assert torch.isfinite(batch.tensor).all()
    whole = info.boxes_to_resized(np.array([[0.0, 0.0, w, h]]))
    np.testing.assert_allclose(info.boxes_to_original(whole), [[0, 0, w, h]], rtol=1e-6)


def test_minmax_sizes_of_thin_images():
    """torchvision's rule (int(side * scale)) with every side at least 1: 1 x 2000 -> 1 x 1333."""
    cfg = _config("minmax")  # 800 / 1333
    t = InputTransform(cfg)
    assert t.plan(1, 2000).scaled_size == (1, 1333)
    assert t.plan(3000, 3).scaled_size == (1333, 1)
    assert t.plan(480, 640).scaled_size == (800, 1066)  # unchanged for ordinary images


def test_minmax_equals_torchvision_transform():
    """Bit for bit the tensor and sizes of GeneralizedRCNNTransform (normalise, resize, batch)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    cfg = _config("minmax", image_min_dim=64, image_max_dim=100)
    ref = GeneralizedRCNNTransform(64, 100, list(cfg.pixel_mean), list(cfg.pixel_std)).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 90, 120, generator=g), torch.rand(3, 50, 47, generator=g)]
    expected, _ = ref(images)
    batch = InputTransform(cfg)(images)
    assert batch.image_sizes == [tuple(s) for s in expected.image_sizes]
    assert torch.equal(batch.tensor, expected.tensors)


def test_matterport_modes_resize_then_normalise_with_the_window():
    """square/pad64: the resized [0, 1] image is padded with zeros and normalised afterwards, so
    padding is what a zero pixel becomes; per-image statistics come from the window."""
    cfg = _config("pad64", image_min_dim=64, image_max_dim=96, image_normalization="per_image")
    img = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(1))
    batch = InputTransform(cfg)([img])
    y1, x1, y2, x2 = batch.windows[0]
    inside = batch.tensor[0, :, y1:y2, x1:x2]
    mean, std = torch.tensor(cfg.pixel_mean), torch.tensor(cfg.pixel_std)
    assert torch.allclose(inside, normalize_input(img, mean, std, "per_image"), atol=1e-6)  # scale 1: the image itself
    outside = torch.ones(batch.padded_size, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert batch.tensor[0][:, outside].abs().max() == 0


def test_training_path_normalises_and_pads_only():
    cfg = _config("pad64", image_min_dim=64, image_max_dim=96)
    transform = InputTransform(cfg)
    resized, info = resize_image(torch.rand(3, 90, 120), "pad64", 64, 96)
    other = torch.rand(3, 64, 40)
    batch = transform([resized, other], resize=False, windows=[info.window, None], original_sizes=[(90, 120), (64, 40)])
    assert isinstance(batch, ImageBatch) and batch.resizes is None and batch.scales == [1.0, 1.0]
    assert batch.image_sizes == [(128, 128), (64, 40)] and batch.windows == [(19, 4, 109, 124), (0, 0, 64, 40)]
    assert batch.original_sizes == [(90, 120), (64, 40)] and tuple(batch.tensor.shape) == (2, 3, 128, 128)
    mean, std = torch.tensor(cfg.pixel_mean), torch.tensor(cfg.pixel_std)
    assert torch.equal(batch.tensor[1, :, :64, :40], normalize_input(other, mean, std))
    assert batch.tensor[1, :, 64:].abs().max() == 0 and batch.tensor[1, :, :, 40:].abs().max() == 0
    # the results of an unresized batch are left where they are
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(transform.postprocess([{"boxes": boxes}], batch)[0]["boxes"], boxes)


def test_image_batch_scales_and_one_batch_type():
    batch = InputTransform(_config("pad64", image_min_dim=64, image_max_dim=96, image_min_scale=1.5))(
        [torch.rand(3, 90, 120), torch.rand(3, 100, 64)])
    assert batch.scales == [1.5, 1.5] and len(batch) == 2
    assert batch.image_sizes == [(192, 192), (192, 128)]
    from maskrcnn.data import pipeline
    from maskrcnn.engine import loader

    assert pipeline.Batch is Batch and loader.Batch is Batch
    images, targets, skipped = Batch([torch.zeros(1)], [{}])
    assert len(images) == 1 and targets == [{}] and skipped == []

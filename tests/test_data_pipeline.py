"""Resize modes, mini-masks, the training pipeline and the shapes dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou, roi_align

from maskrcnn.config import Config
from maskrcnn.data.augment import boxes_from_masks
from maskrcnn.data.dataset import Dataset
from maskrcnn.data.minimask import expand_masks, mini_mask_rois, minimize_masks, pad_mini_masks
from maskrcnn.data.pipeline import SkippedSample, TrainingDataset, collate
from maskrcnn.data.resize import compute_scale, resample_image, resize_image
from maskrcnn.data.synthetic import ShapesDataset, draw_shape
from maskrcnn.errors import DataError

torch.set_num_threads(1)


def rect_mask(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w]
    return ((((c + 0.5 - cx) / rx) ** 2 + ((r + 0.5 - cy) / ry) ** 2) <= 1).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max(1, (a | b).sum())


# ------------------------------------------------------------------------------ resize modes


def test_minmax_matches_torchvision_exactly():
    from torchvision.models.detection.transform import _resize_image_and_masks

    g = torch.Generator().manual_seed(0)
    for h, w in [(48, 64), (30, 200), (57, 41)]:
        img = torch.rand(3, h, w, generator=g)
        out, info = resize_image(img, "minmax", 40, 90)
        ref, _ = _resize_image_and_masks(img, 40, 90)
        assert out.shape == ref.shape
        assert torch.equal(out, ref)
        scale = min(40 / min(h, w), 90 / max(h, w))
        assert info.scale == scale
        assert info.image_size == (int(h * scale), int(w * scale)) == info.scaled_size
        assert info.window == (0, 0, *info.image_size) and info.padding == ((0, 0), (0, 0))


def test_minmax_sizes_default_dims():
    assert compute_scale(480, 640, "minmax", 800, 1333)[1] == (800, 1066)
    assert compute_scale(100, 1000, "minmax", 800, 1333)[1] == (133, 1333)


def test_none_mode_untouched():
    img = torch.rand(3, 37, 50)
    out, info = resize_image(img, "none", 800, 1024, 2.0)  # min_scale ignored, as in Matterport
    assert torch.equal(out, img)
    assert info.scale == 1.0 and info.window == (0, 0, 37, 50) and info.crop is None


@pytest.mark.parametrize(
    "hw, min_dim, max_dim, min_scale, scale, scaled, padding",
    [
        ((100, 200), 128, 256, 0, 1.28, (128, 256), ((64, 64), (0, 0))),
        ((50, 300), 100, 256, 0, 256 / 300, (43, 256), ((106, 107), (0, 0))),  # max_dim cap scales down
        ((300, 300), 100, 1024, 2.0, 2.0, (600, 600), ((212, 212), (212, 212))),  # min_scale
        ((400, 200), 100, 500, 0, 1.0, (400, 200), ((50, 50), (150, 150))),  # never scales up past 1 needlessly
    ],
)
def test_square_mode(hw, min_dim, max_dim, min_scale, scale, scaled, padding):
    img = torch.rand(3, *hw) + 0.1
    out, info = resize_image(img, "square", min_dim, max_dim, min_scale)
    assert info.scale == pytest.approx(scale)
    assert info.scaled_size == scaled
    assert out.shape == (3, max_dim, max_dim) and info.image_size == (max_dim, max_dim)
    assert info.padding == padding
    (t, b), (l, r) = padding
    assert info.window == (t, l, t + scaled[0], l + scaled[1])
    y1, x1, y2, x2 = info.window
    inside = out[:, y1:y2, x1:x2]
    assert torch.equal(inside, resample_image(img, scaled))
    pad = out.clone()
    pad[:, y1:y2, x1:x2] = 0
    assert pad.abs().sum() == 0  # zero padding


def test_pad64_mode():
    img = torch.rand(1, 100, 130) + 0.1
    out, info = resize_image(img, "pad64", 128, 1024)
    assert info.scale == pytest.approx(1.28) and info.scaled_size == (128, 166)
    assert out.shape == (1, 128, 192)
    assert info.padding == ((0, 0), (13, 13)) and info.window == (0, 13, 128, 179)
    big = torch.rand(1, 200, 300)
    out, info = resize_image(big, "pad64", 128, 1024)  # no downscale, pad to 256 x 320
    assert info.scale == 1.0 and out.shape == (1, 256, 320)
    assert info.padding == ((28, 28), (10, 10))
    assert torch.equal(out[:, 28:228, 10:310], big)


def test_crop_mode_random_crop_after_upscale():
    img = torch.rand(3, 100, 150)
    out, info = resize_image(img, "crop", 128, 1024, rng=np.random.default_rng(5))
    assert info.scaled_size == (128, 192) and out.shape == (3, 128, 128)
    y, x, h, w = info.crop
    assert (h, w) == (128, 128) and y == 0 and 0 <= x <= 64
    assert info.window == (0, 0, 128, 128)
    assert torch.allclose(out, resample_image(img, (128, 192))[:, :, x:x + 128], atol=1e-5, rtol=0)
    again, info2 = resize_image(img, "crop", 128, 1024, rng=np.random.default_rng(5))
    assert info2.crop == info.crop and torch.equal(again, out)
    xs = {resize_image(img, "crop", 128, 1024, rng=np.random.default_rng(s))[1].crop[1] for s in range(20)}
    assert len(xs) > 5


@pytest.mark.parametrize("seed", range(6))
def test_crop_mode_computes_only_the_crop_with_the_full_resize_sample_points(seed):
    """The crop is interpolated from its source region only; it equals resizing everything and
    cropping (images to float rounding; mask pixels can differ only where the value is a tie at 0.5)."""
    rng = np.random.default_rng(seed)
    H, W = (int(v) for v in rng.integers(30, 90, size=2))
    img = torch.rand(3, H, W)
    masks = np.zeros((6, H, W), dtype=np.uint8)
    for k in range(5):  # blobs, and one instance far outside any crop-sized region is still handled
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
        masks[k, y:y + int(rng.integers(3, 20)), x:x + int(rng.integers(3, 20))] = 1
    masks[5] = rng.random((H, W)) < 0.3
    min_scale = [1.0, 1.37, 2.0, 2.5, 1.61, 3.0][seed]
    out, info = resize_image(img, "crop", 32, 0, min_scale, rng=rng)
    y, x, h, w = info.crop
    full = resample_image(img, info.scaled_size)
    assert out.shape == (3, 32, 32) and torch.allclose(out, full[:, y:y + h, x:x + w], atol=1e-5, rtol=0)
    got = info.resize_masks(masks)
    value = torch.nn.functional.interpolate(torch.from_numpy(masks).float()[:, None], size=info.scaled_size,
                                            mode="bilinear", align_corners=False)[:, 0, y:y + h, x:x + w]
    differ = torch.from_numpy(got != (value.numpy() >= 0.5))
    assert got.shape == (6, 32, 32) and got.dtype == np.uint8
    assert differ.sum() <= 0.005 * got.size and bool(((value[differ] - 0.5).abs() < 1e-4).all())
    assert got[:5].sum() > 0 or masks[:5, :, :].sum() == 0


def test_scale_jitter_multiplies_scale_within_limits():
    assert compute_scale(100, 200, "minmax", 100, 1000, jitter=0.5) == (0.5, (50, 100))
    # square: the long side still fits max_dim
    assert compute_scale(100, 200, "square", 128, 256, jitter=1.5)[1] == (128, 256)
    # crop: the short side stays >= min_dim so that the crop fits
    assert compute_scale(100, 200, "crop", 128, 256, jitter=0.5)[1] == (128, 256)


@pytest.mark.parametrize("mode", ["minmax", "none", "square", "pad64", "crop"])
def test_boxes_and_masks_map_back_to_original(mode):
    h, w = 90, 120
    img = torch.rand(3, h, w)
    out, info = resize_image(img, mode, 128, 200, rng=np.random.default_rng(1))
    if mode == "crop":
        # an object inside the crop: the crop starts at x = crop[1] / scale in the original
        x0 = int(np.ceil(info.crop[1] / info.scale_yx[1])) + 2
        box = np.array([[x0, 10, x0 + 60, 70]], dtype=np.float32)
    else:
        box = np.array([[17, 10, 95, 70]], dtype=np.float32)
    fwd = info.boxes_to_resized(box)
    assert np.allclose(info.boxes_to_original(fwd), box, atol=1e-4)
    # the mask of the object, resized with the image, has the forward-mapped box (+-1 px)
    m = rect_mask(h, w, *box[0].astype(int))[None]
    rm = info.resize_masks(m)
    assert rm.shape == (1, *info.image_size)
    assert np.abs(boxes_from_masks(rm) - fwd).max() <= 1.0
    back = info.masks_to_original(rm)
    assert back.shape == (1, h, w) and iou(back[0], m[0]) > 0.95
    # boxes outside the original image are clipped on the way back
    far = np.array([[-50, -50, 5000, 5000]], dtype=np.float32)
    assert np.array_equal(info.boxes_to_original(far), [[0, 0, w, h]])


def test_mask_resize_follows_image_content():
    h, w = 40, 60
    m = ellipse(h, w, 25, 18, 12, 9)
    img = torch.from_numpy(m.astype(np.float32))[None]
    for mode, lo, hi in [("square", 97, 97), ("minmax", 23, 31), ("pad64", 128, 128)]:  # up and down
        out, info = resize_image(img, mode, lo, hi)
        rm = info.resize_masks(m[None])[0]
        assert np.array_equal(rm.astype(bool), out[0].numpy() >= 0.5)


# ------------------------------------------------------------------------------ mini-masks


def test_minimask_round_trip():
    h, w = 80, 100
    masks = np.stack([ellipse(h, w, 40, 30, 25, 14), rect_mask(h, w, 60, 50, 67, 79), ellipse(h, w, 20, 60, 3, 3)])
    boxes = boxes_from_masks(masks)
    mini = minimize_masks(masks, boxes, (28, 28))
    assert mini.shape == (3, 28, 28) and mini.dtype == np.uint8
    assert mini[1].all()  # a rectangle fills its box
    back = expand_masks(mini, boxes, (h, w))
    for a, b in zip(back, masks):
        assert iou(a, b) > 0.9
    assert np.array_equal(back[1], masks[1])


def test_minimask_box_mapping_convention():
    # the left half of the box is on: the left half of the mini mask is on
    m = rect_mask(50, 60, 10, 5, 30, 45)
    m[:, 20:] = 0
    mini = minimize_masks(m[None], np.array([[10, 5, 30, 45]]), (8, 8))[0]
    assert mini[:, :4].all() and not mini[:, 4:].any()


def _roi_align_both(full: np.ndarray, mini_shape, props: torch.Tensor, aligned_full: bool):
    box = boxes_from_masks(full[None])
    mini = torch.from_numpy(minimize_masks(full[None], box, mini_shape)).float()[:, None]
    idx = torch.zeros(len(props), 1)
    ref = roi_align(torch.from_numpy(full).float()[None, None], torch.cat([idx, props], 1), (14, 14), 1.0, 2,
                    aligned=aligned_full)
    rois = mini_mask_rois(props, torch.from_numpy(box).repeat(len(props), 1), mini_shape,
                          half_pixel_shift=not aligned_full, border=1)
    got = roi_align(pad_mini_masks(mini, 1), torch.cat([idx, rois], 1), (14, 14), 1.0, 2, aligned=True)
    return ref, got


def test_mini_mask_rois_exact_when_mini_mask_is_the_box_crop():
    # mini shape == box size: the mini mask is the crop itself, so RoIAlign must agree exactly,
    # including proposals reaching outside the GT box (the zero border)
    full = ellipse(40, 50, 25, 19, 11, 13)
    x1, y1, x2, y2 = (int(v) for v in boxes_from_masks(full[None])[0])
    props = torch.tensor([[10.0, 4.0, 40.0, 36.0], [14.3, 6.2, 30.7, 20.9], [x1 - 0.7, y1 - 0.4, x2 + 0.6, y2 + 0.3]], dtype=torch.float32)
    for aligned_full in (True, False):
        ref, got = _roi_align_both(full, (y2 - y1, x2 - x1), props, aligned_full)
        assert torch.allclose(ref, got, atol=1e-5)


def test_mini_mask_rois_sample_same_points_as_full_masks():
    full = ellipse(64, 64, 30, 34, 20, 14)
    props = torch.tensor([[8.0, 18.0, 52.0, 50.0], [20.0, 25.0, 45.0, 44.0], [0.0, 10.0, 40.0, 40.0]])
    for aligned_full in (True, False):
        ref, got = _roi_align_both(full, (56, 56), props, aligned_full)
        assert (ref - got).abs().mean() < 0.015  # a half-pixel error gives 0.03
        assert ((ref >= 0.5) == (got >= 0.5)).float().mean() > 0.985


# ------------------------------------------------------------------------------ pipeline


class MemDataset(Dataset):
    """Images and annotations held in memory; an entry with ``path`` is read from disk."""

    def __init__(self, entries: list[dict]) -> None:
        super().__init__()
        for c in (1, 2, 3):
            self.add_class("mem", c, f"c{c}")
        for i, e in enumerate(entries):
            self.add_image("mem", image_id=f"img{i}", path=e.get("path"), entry=e)
        self.prepare()

    def load_image(self, image_id):
        e = self.image_info[image_id]["entry"]
        return super().load_image(image_id) if "path" in e else e["image"]

    def load_mask(self, image_id):
        e = self.image_info[image_id]["entry"]
        return e["masks"], e["ids"]

    def load_ignore_mask(self, image_id):
        return self.image_info[image_id]["entry"].get("ignore")


def _entry(h=48, w=64, rects=((5, 5, 25, 30), (30, 10, 60, 40)), ids=(1, 2), channels=3, seed=0, ignore=None):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    masks = np.stack([rect_mask(h, w, *r) for r in rects], axis=2).astype(bool) if rects else np.zeros((h, w, 0), bool)
    e = {"image": img, "masks": masks, "ids": np.array(ids, dtype=np.int32)}
    if ignore is not None:
        e["ignore"] = ignore
    return e


def _config(**kw) -> Config:
    base = dict(num_classes=4, image_resize_mode="square", image_min_dim=72, image_max_dim=96,
                aug_hflip=0.0, max_gt_instances=100)
    base.update(kw)
    return Config(**base)


def test_sample_follows_the_contract():
    ign = np.zeros((48, 64), bool)
    ign[0:10, 50:64] = True
    ds = MemDataset([_entry(ignore=ign)])
    image, t = TrainingDataset(ds, _config(), train=False)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
    assert 0.0 <= image.min() and image.max() <= 1.0
    # square 48x64 -> scale 72/48 = 1.5 -> 72x96, padded 12 rows top and bottom
    assert image[:, :12].abs().sum() == 0 and image[:, 84:].abs().sum() == 0
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (2, 96, 96)
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [1, 2]
    assert t["boxes"].dtype == torch.float32
    # rectangle (5, 5, 25, 30) -> x 7.5..37.5, y 12 + 7.5..45; bilinear >= 0.5 keeps the half pixels
    assert t["boxes"].tolist() == [[7.0, 19.0, 38.0, 57.0], [45.0, 27.0, 90.0, 72.0]]
    assert np.array_equal(t["boxes"].numpy(), boxes_from_masks(t["masks"].numpy()))
    assert t["image_id"] == 0 and t["orig_size"] == (48, 64)
    assert t["window"] == (12, 0, 84, 96)  # the real pixels, for per-image normalisation in the model
    assert t["ignore"].dtype == torch.bool and t["ignore"].shape == (96, 96)
    assert t["ignore"].sum() == 15 * 21  # rows 12..27, cols 75..96 of the resized image


def test_background_only_image_gives_empty_target():
    ds = MemDataset([_entry(rects=(), ids=())])
    for train in (False, True):
        image, t = TrainingDataset(ds, _config(aug_hflip=0.5, aug_crop=[40, 40]), train=train)[0]
        assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
        assert t["masks"].shape == (0, *image.shape[1:])
    image, t = TrainingDataset(ds, _config(use_mini_mask=True, mini_mask_shape=[14, 14]), train=False)[0]
    assert t["masks"].shape == (0, 14, 14)


def test_channel_mismatch_is_an_error_not_a_conversion():
    ds = MemDataset([_entry(channels=1)])
    item = TrainingDataset(ds, _config(), train=False)[0]
    assert isinstance(item, SkippedSample)
    assert "1 channel" in item.message and "image_channel_count=3" in item.message
    with pytest.raises(DataError, match="image_channel_count=3"):
        TrainingDataset(ds, _config(), train=False, skip_errors=False)[0]
    # the same image is fine for a 1-channel config
    image, _ = TrainingDataset(ds, _config(image_channel_count=1, pixel_mean=[0.5], pixel_std=[0.2]), train=False)[0]
    assert image.shape[0] == 1


def test_mask_errors_name_the_image():
    bad_count = _entry(ids=(1,))
    bad_size = _entry()
    bad_size["masks"] = bad_size["masks"][:40]
    bad_class = _entry(ids=(1, 7))
    ds = MemDataset([bad_count, bad_size, bad_class])
    td = TrainingDataset(ds, _config(), train=False, skip_errors=False)
    with pytest.raises(DataError, match=r"mem:img0: load_mask returned 2 masks but 1 class ids"):
        td[0]
    with pytest.raises(DataError, match=r"mem:img1: masks are 64x40 but the image is 64x48 \(WxH\)"):
        td[1]
    with pytest.raises(DataError, match=r"mem:img2: class id 7 is not a declared class \(ids 1\.\.3\).*set num_classes"):
        td[2]


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    good = _entry()
    ds = MemDataset([good, {"path": str(bad), "masks": good["masks"], "ids": good["ids"]}, _entry(seed=2)])
    td = TrainingDataset(ds, _config(), train=True)
    batch = collate([td[0], td[1], td[2]])
    images, targets, skipped = batch
    assert len(images) == len(targets) == 2
    assert [t["image_id"] for t in targets] == [0, 2]
    assert len(skipped) == 1
    s = skipped[0]
    assert (s.index, s.image_id, s.reference) == (1, 1, str(bad))
    assert "broken.png" in s.message and "\n" not in s.message
    assert collate([None, td[0]]).images[0].shape == images[0].shape


def test_empty_masks_dropped_and_instances_capped():
    e = _entry(rects=((0, 0, 8, 8), (10, 0, 18, 8), (20, 0, 28, 8), (30, 0, 38, 8), (40, 0, 48, 8)), ids=(1, 2, 3, 1, 2))
    e["masks"][:, :, 2] = False  # an empty mask
    ds = MemDataset([e])
    _, t = TrainingDataset(ds, _config(), train=False)[0]
    assert t["labels"].tolist() == [1, 2, 1, 2]
    capped = TrainingDataset(ds, _config(max_gt_instances=2), train=True)
    seen = set()
    for epoch in range(6):
        _, t = capped[(epoch, 0)]
        assert len(t["labels"]) == 2
        # each kept mask is one of the originals (x1 tells which)
        seen.add(tuple(int(x) // 15 for x in t["boxes"][:, 0]))
    assert len(seen) > 1


def test_samples_are_reproducible_from_seed_epoch_index():
    ds = MemDataset([_entry(seed=i) for i in range(3)])
    cfg = _config(aug_hflip=0.5, aug_vflip=0.5, aug_rot90=0.5, aug_scale_jitter=[0.7, 1.3], aug_crop=[64, 64],
                  aug_brightness=0.3, aug_contrast=0.3, aug_blur=0.5, use_mini_mask=True, mini_mask_shape=[14, 14])
    a, b = TrainingDataset(ds, cfg, seed=7), TrainingDataset(ds, cfg, seed=7)
    b.set_epoch(3)
    for i in (2, 0, 1):  # order does not matter
        a.set_epoch(3)
        ia, ta = a[i]
        ib, tb = b[i]
        it, tt = a[(3, i)]
        for x, y in ((ia, ib), (ia, it), (ta["masks"], tb["masks"]), (ta["boxes"], tb["boxes"]), (ta["labels"], tt["labels"])):
            assert torch.equal(x, y)
    a.set_epoch(4)
    differs = any(not torch.equal(a[i][0], b[i][0]) or a[i][0].shape != b[i][0].shape for i in range(3))
    assert differs
    c = TrainingDataset(ds, cfg, seed=8)
    c.set_epoch(3)
    assert any(c[i][0].shape != b[i][0].shape or not torch.equal(c[i][0], b[i][0]) for i in range(3))


def test_dataloader_workers_give_the_same_samples():
    ds = MemDataset([_entry(seed=i) for i in range(4)])
    cfg = _config(aug_hflip=0.5, aug_rot90=0.5, aug_brightness=0.3)
    td = TrainingDataset(ds, cfg, seed=1)
    td.set_epoch(2)
    expected = [td[i][0] for i in range(4)]
    loader = torch.utils.data.DataLoader(td, batch_size=2, num_workers=2, collate_fn=collate)
    got = [img for batch in loader for img in batch.images]
    assert all(torch.equal(x, y) for x, y in zip(got, expected))


def test_augmented_targets_stay_consistent():
    ds = MemDataset([_entry(seed=i) for i in range(4)])
    cfg = _config(aug_hflip=0.5, aug_vflip=0.5, aug_rot90=0.5, aug_scale_jitter=[0.6, 1.4], aug_crop=[50, 70],
                  aug_min_area=20)
    td = TrainingDataset(ds, cfg, seed=3)
    for epoch in range(3):
        for i in range(4):
            image, t = td[(epoch, i)]
            assert image.shape[1] <= 50 and image.shape[2] <= 70
            assert t["masks"].shape[1:] == image.shape[1:]
            assert np.array_equal(t["boxes"].numpy(), boxes_from_masks(t["masks"].numpy()))
            assert (t["masks"].flatten(1).sum(1) >= 20).all()
            assert len(t["labels"]) == len(t["masks"])


def test_mini_masks_in_samples_expand_to_full_masks():
    ds = MemDataset([_entry()])
    full_img, full = TrainingDataset(ds, _config(), train=False)[0]
    _, mini = TrainingDataset(ds, _config(use_mini_mask=True, mini_mask_shape=[20, 20]), train=False)[0]
    assert mini["masks"].shape == (2, 20, 20)
    assert torch.equal(mini["boxes"], full["boxes"])
    back = expand_masks(mini["masks"].numpy(), mini["boxes"].numpy(), full_img.shape[1:])
    for a, b in zip(back, full["masks"].numpy()):
        assert iou(a, b) > 0.95


# ------------------------------------------------------------------------------ shapes


def test_shapes_dataset_deterministic_and_valid():
    a, b = ShapesDataset(12, seed=3), ShapesDataset(12, seed=3)
    assert a.num_classes == 4 and a.class_names == ["BG", "square", "circle", "triangle"]
    differ = 0
    other = ShapesDataset(12, seed=4)
    for i in (0, 5, 11):
        assert np.array_equal(a.load_image(i), b.load_image(i))
        ma, ca = a.load_mask(i)
        mb, cb = b.load_mask(i)
        assert np.array_equal(ma, mb) and np.array_equal(ca, cb)
        differ += not np.array_equal(a.load_image(i), other.load_image(i))
    assert differ == 3
    for i in range(12):
        image = a.load_image(i)
        masks, ids = a.load_mask(i)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[:2] == (128, 128) and masks.shape[2] == len(ids)
        assert 1 <= len(ids) <= 4 and set(ids.tolist()) <= {1, 2, 3} and ids.dtype == np.int32
        assert masks.reshape(-1, masks.shape[2]).any(axis=0).all()
        bg, shapes = a.spec(i)
        for name, colour, (x, y, s) in shapes:
            assert 20 <= x <= 107 and 20 <= y <= 107 and 20 <= s <= 32
        # the visible part of each shape has its colour in the image
        for k in range(masks.shape[2]):
            colour = shapes[k][1]
            assert (image[masks[:, :, k]] == colour).all()


def test_shapes_occlusion():
    ds = ShapesDataset(60, seed=0)
    checked = 0
    for i in range(60):
        _, shapes = ds.spec(i)
        # heavy overlaps were removed: box IoU <= 0.3 between any two shapes
        bx = torch.tensor([[x - s, y - s, x + s, y + s] for _, _, (x, y, s) in shapes], dtype=torch.float32)
        assert (box_iou(bx, bx) - torch.eye(len(bx))).max() <= 0.3
        masks, _ = ds.load_mask(i)
        if masks.shape[2] != len(shapes):
            continue
        sil = [draw_shape(n, d, 128, 128) for n, _, d in shapes]
        for j in range(len(shapes)):
            later = np.zeros((128, 128), bool)
            for k in range(j + 1, len(shapes)):
                later |= sil[k]
            assert not (masks[:, :, j] & later).any()
            assert np.array_equal(masks[:, :, j], sil[j] & ~later)
            checked += int((sil[j] & later).any())
    assert checked >= 3  # some shapes really were partly occluded


def test_shape_rendering():
    sq = draw_shape("square", (50, 60, 20), 128, 128)
    assert sq.sum() == 41 * 41 and sq[40, 30] and sq[80, 70] and not sq[81, 70]
    circ = draw_shape("circle", (64, 64, 20), 128, 128)
    assert circ[64, 44] and circ[64, 84] and not circ[44, 44] and abs(circ.sum() - np.pi * 400) < 60
    tri = draw_shape("triangle", (64, 64, 20), 128, 128)
    assert tri[44, 64] and tri[84, 41] and tri[84, 87] and not tri[44, 60]
    assert boxes_from_masks(tri[None].astype(np.uint8)).tolist() == [[40.0, 44.0, 88.0, 85.0]]


def test_shapes_train_quickly_through_the_pipeline():
    ds = ShapesDataset(8, seed=1)
    cfg = Config(num_classes=4, image_resize_mode="square", image_min_dim=128, image_max_dim=128,
                 aug_hflip=0.5, use_mini_mask=True)
    td = TrainingDataset(ds, cfg, seed=0)
    images, targets, skipped = collate([td[i] for i in range(8)])
    assert len(images) == 8 and not skipped
    for t in targets:
        assert len(t["labels"]) >= 1 and t["masks"].shape[1:] == (56, 56)

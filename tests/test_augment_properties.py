"""Augmentation keeps image, masks, labels, boxes, ignore mask and window together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskrcnn.config import Config
from maskrcnn.data.augment import (
    Augmentation,
    Sample,
    adjust_brightness_contrast,
    boxes_from_masks,
    build_augmentation,
    crop,
    gaussian_blur,
    hflip,
    random_crop,
    rescale,
    rot90,
    vflip,
)

torch.set_num_threads(1)
FAST = settings(max_examples=25, deadline=None)


@st.composite
def samples(draw, with_window: bool = False) -> Sample:
    """Up to 4 rectangles painted in order (later ones on top) into a label map.

    Channel 0 holds the instance number * 40 + 20 (a unique colour per instance), channel 1 a
    random texture, so that any misalignment of masks and image shows.
    """
    h = draw(st.integers(6, 30))
    w = draw(st.integers(6, 30))
    n = draw(st.integers(0, 4))
    label = np.zeros((h, w), dtype=np.int64)
    for i in range(n):
        y1 = draw(st.integers(0, h - 1))
        x1 = draw(st.integers(0, w - 1))
        y2 = draw(st.integers(y1 + 1, h))
        x2 = draw(st.integers(x1 + 1, w))
        label[y1:y2, x1:x2] = i + 1
    ids = [i + 1 for i in range(n) if (label == i + 1).any()]
    masks = np.stack([(label == i) for i in ids]).astype(np.uint8) if ids else np.zeros((0, h, w), np.uint8)
    seed = draw(st.integers(0, 2**16))
    image = np.zeros((h, w, 2), dtype=np.uint8)
    image[:, :, 0] = label * 40 + 20
    image[:, :, 1] = np.random.default_rng(seed).integers(0, 256, (h, w))
    ignore = np.random.default_rng(seed + 1).random((h, w)) < 0.2
    window = None
    if with_window:
        wy1 = draw(st.integers(0, h - 1))
        wx1 = draw(st.integers(0, w - 1))
        window = (wy1, wx1, draw(st.integers(wy1 + 1, h)), draw(st.integers(wx1 + 1, w)))
    return Sample(image, masks, np.array(ids, dtype=np.int64), ignore, window)


def assert_aligned(s: Sample) -> None:
    """Each instance's mask is exactly where its colour is; boxes are the masks' boxes."""
    for m, label in zip(s.masks, s.labels):
        assert np.array_equal(m.astype(bool), s.image[:, :, 0] == label * 40 + 20)
    assert np.array_equal(s.boxes, boxes_from_masks(s.masks))
    assert s.masks.shape[1:] == s.image.shape[:2] == s.ignore.shape
    assert len(s.labels) == len(s.masks)


def window_image(s: Sample) -> np.ndarray:
    """A 0/1 image that is 1 exactly inside the window."""
    img = np.zeros(s.image.shape[:2], dtype=np.uint8)
    y1, x1, y2, x2 = s.full_window()
    img[y1:y2, x1:x2] = 1
    return img


def transform_box(box, op: str, h: int, w: int):
    x1, y1, x2, y2 = box
    if op == "h":
        return [w - x2, y1, w - x1, y2]
    if op == "v":
        return [x1, h - y2, x2, h - y1]
    # one counter-clockwise turn: (r, c) -> (w - 1 - c, r)
    return [y1, w - x2, y2, w - x1]


@FAST
@given(samples(with_window=True), st.sampled_from(["h", "v", "r1", "r2", "r3"]))
def test_flips_and_rotations_move_everything_together(s, op):
    h, w = s.size
    if op == "h":
        out = hflip(s)
        ref_img, ref_ign = s.image[:, ::-1], s.ignore[:, ::-1]
    elif op == "v":
        out = vflip(s)
        ref_img, ref_ign = s.image[::-1], s.ignore[::-1]
    else:
        k = int(op[1])
        out = rot90(s, k)
        ref_img, ref_ign = np.rot90(s.image, k), np.rot90(s.ignore, k)
    assert np.array_equal(out.image, ref_img) and np.array_equal(out.ignore, ref_ign)
    assert np.array_equal(out.labels, s.labels)
    assert_aligned(out)
    # boxes follow the analytic transform of the original boxes
    expected = []
    for b in s.boxes.tolist():
        if op in ("h", "v"):
            expected.append(transform_box(b, op, h, w))
        else:
            hh, ww = h, w
            for _ in range(int(op[1])):
                b = transform_box(b, "r", hh, ww)
                hh, ww = ww, hh
            expected.append(b)
    assert np.array_equal(out.boxes, np.array(expected, dtype=np.float32).reshape(-1, 4))
    # the window moves with the pixels
    win = window_image(s)
    moved = {"h": win[:, ::-1], "v": win[::-1]}.get(op)
    if moved is None:
        moved = np.rot90(win, int(op[1]))
    assert np.array_equal(window_image(out), moved)
    # the input is untouched
    assert_aligned(s)


@FAST
@given(samples(with_window=True), st.data())
def test_crop_keeps_visible_parts(s, data):
    h, w = s.size
    y = data.draw(st.integers(0, h - 1))
    x = data.draw(st.integers(0, w - 1))
    ch = data.draw(st.integers(1, h))
    cw = data.draw(st.integers(1, w))
    min_area = data.draw(st.integers(1, 6))
    out = crop(s, y, x, ch, cw, min_area)
    assert_aligned(out)
    assert np.array_equal(out.image, s.image[y:y + ch, x:x + cw])
    visible = [int(m[y:y + ch, x:x + cw].sum()) for m in s.masks]
    assert out.labels.tolist() == [lab for lab, a in zip(s.labels.tolist(), visible) if a >= min_area]
    assert out.masks.sum(axis=(1, 2)).tolist() == [a for a in visible if a >= min_area]
    assert np.array_equal(window_image(out), window_image(s)[y:y + ch, x:x + cw])


def test_crop_example_partial_and_tiny_instances():
    h, w = 40, 40
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 10:20, 0:10] = 1     # 10x10, half inside the crop below -> 50 px kept
    masks[1, 25:35, 3:7] = 1      # only 1x2 = 2 px inside -> dropped with its label
    masks[2, 12:18, 12:30] = 1    # entirely inside
    s = Sample(np.zeros((h, w, 3), np.uint8), masks, np.array([3, 1, 2]), None)
    out = crop(s, 5, 5, 21, 30, min_area=4)
    assert out.labels.tolist() == [3, 2]
    assert out.masks.sum(axis=(1, 2)).tolist() == [50, 108]
    assert out.boxes.tolist() == [[0, 5, 5, 15], [7, 7, 25, 13]]
    # min_area 1 keeps the 2-pixel remainder
    assert crop(s, 5, 5, 21, 30, min_area=1).labels.tolist() == [3, 1, 2]


@FAST
@given(samples(), st.integers(0, 1000), st.integers(4, 40), st.integers(4, 40))
def test_random_crop_is_a_crop(s, seed, ch, cw):
    out = random_crop(s, (ch, cw), np.random.default_rng(seed), 1)
    assert out.size == (min(ch, s.size[0]), min(cw, s.size[1]))
    assert_aligned(out)
    again = random_crop(s, (ch, cw), np.random.default_rng(seed), 1)
    assert np.array_equal(again.image, out.image)


@FAST
@given(samples(), st.floats(0.3, 2.5))
def test_rescale_scales_boxes_and_keeps_alignment(s, f):
    # one float indicator channel per instance: a resized mask must be exactly where the resized
    # image of its indicator is >= 0.5
    ind = np.stack([m.astype(np.float32) for m in s.masks] + [np.zeros(s.size, np.float32)], axis=2)
    s = Sample(ind, s.masks, s.labels, s.ignore)
    out = rescale(s, f)
    h, w = s.size
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    assert out.size == (nh, nw) and out.ignore.shape == (nh, nw)
    assert np.array_equal(out.boxes, boxes_from_masks(out.masks))
    lab_to_ch = {lab: i for i, lab in enumerate(s.labels.tolist())}
    for lab, m in zip(out.labels.tolist(), out.masks):
        assert np.array_equal(m.astype(bool), out.image[:, :, lab_to_ch[lab]] >= 0.5)
    dropped = set(s.labels.tolist()) - set(out.labels.tolist())
    for lab in dropped:  # only instances that vanished are dropped
        assert (out.image[:, :, lab_to_ch[lab]] < 0.5).all()
    sy, sx = nh / h, nw / w
    src = dict(zip(s.labels.tolist(), s.boxes))
    for lab, b in zip(out.labels.tolist(), out.boxes):
        x1, y1, x2, y2 = src[lab]
        exp = np.array([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
        # the box is the scaled box to within a pixel (occlusion can only shrink it)
        assert (b[:2] >= exp[:2] - 1).all() and (b[2:] <= exp[2:] + 1).all()
    if f >= 2:  # (only) an upscale by 2 or more keeps every pixel's centre, so no instance vanishes
        assert out.labels.tolist() == s.labels.tolist()


@FAST
@given(samples(with_window=True), st.floats(0.3, 1.7), st.floats(0.3, 1.7), st.floats(0.0, 2.0))
def test_photometric_changes_only_window_pixels(s, b, c, sigma):
    for out in (adjust_brightness_contrast(s, b, c), gaussian_blur(s, sigma)):
        assert out.image.dtype == s.image.dtype and out.image.shape == s.image.shape
        outside = window_image(s) == 0
        assert np.array_equal(out.image[outside], s.image[outside])
        assert out.masks is s.masks and out.labels is s.labels


def test_photometric_values():
    img = np.full((8, 10, 3), 0.4, np.float32)
    img[:, 5:] = 0.8
    s = Sample(img, np.zeros((0, 8, 10), np.uint8), np.zeros(0, np.int64))
    out = adjust_brightness_contrast(s, brightness=0.5).image
    assert np.allclose(out, img * 0.5)
    out = adjust_brightness_contrast(s, contrast=0.5).image
    assert np.allclose(out[:, :5], 0.5) and np.allclose(out[:, 5:], 0.7)
    out = adjust_brightness_contrast(s, brightness=2.0).image
    assert np.allclose(out[:, 5:], 1.0)  # clipped
    u8 = Sample((img * 255).astype(np.uint8), s.masks, s.labels)
    assert adjust_brightness_contrast(u8, brightness=0.5).image[0, 0, 0] == 51
    flat = Sample(np.full((9, 9, 1), 0.3, np.float32), s.masks[:, :9, :9], s.labels)
    assert np.allclose(gaussian_blur(flat, 1.5).image, 0.3)
    blurred = gaussian_blur(s, 1.0).image
    assert 0.4 < blurred[0, 4, 0] < 0.6 and 0.6 < blurred[0, 5, 0] < 0.8  # the edge is smoothed
    assert np.allclose(blurred[:, 0], 0.4, atol=1e-3) and np.allclose(blurred[:, -1], 0.8, atol=1e-3)
    assert np.allclose(blurred.mean(), img.mean(), atol=1e-3)


@FAST
@given(samples(), st.integers(0, 10_000))
def test_full_augmentation_keeps_alignment_and_is_deterministic(s, seed):
    aug = Augmentation(hflip=0.5, vflip=0.5, rot90=0.5, crop=(12, 12), min_area=2)
    out = aug(s, np.random.default_rng(seed))
    assert_aligned(out)
    assert (out.masks.sum(axis=(1, 2)) >= 2).all()
    again = aug(s, np.random.default_rng(seed))
    assert np.array_equal(out.image, again.image) and np.array_equal(out.masks, again.masks)


def test_build_augmentation_reads_config():
    cfg = Config(aug_hflip=0.25, aug_vflip=0.5, aug_rot90=0.75, aug_scale_jitter=[0.8, 1.2], aug_crop=[64, 48],
                 aug_brightness=0.1, aug_contrast=0.2, aug_blur=0.3, aug_min_area=7)
    aug = build_augmentation(cfg)
    assert aug == Augmentation(0.25, 0.5, 0.75, (0.8, 1.2), (64, 48), 0.1, 0.2, 0.3, 7)
    assert aug.enabled and not Augmentation().enabled
    factors = [aug.scale_factor(np.random.default_rng(i)) for i in range(50)]
    assert 0.8 <= min(factors) and max(factors) <= 1.2 and max(factors) - min(factors) > 0.2
    # probabilities are honoured: hflip 0 never flips, 1 always does
    s = Sample(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), np.zeros((0, 3, 4), np.uint8), np.zeros(0, np.int64))
    always = Augmentation(hflip=1.0)
    assert np.array_equal(always.geometric(s, np.random.default_rng(0)).image, s.image[:, ::-1])
    assert Augmentation().geometric(s, np.random.default_rng(0)) is s


def test_boxes_from_masks_convention():
    m = np.zeros((3, 5, 6), np.uint8)
    m[0, 1:3, 2:5] = 1
    m[1, 4, 5] = 1
    assert boxes_from_masks(m).tolist() == [[2, 1, 5, 3], [5, 4, 6, 5], [0, 0, 0, 0]]
    assert boxes_from_masks(np.zeros((0, 5, 6), np.uint8)).shape == (0, 4)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_is_counter_clockwise(k):
    img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    s = Sample(img, np.zeros((0, 2, 3), np.uint8), np.zeros(0, np.int64))
    assert np.array_equal(rot90(s, k).image[..., 0], np.rot90(img[..., 0], k))
    assert rot90(s, 1).image[0, 0, 0] == 2  # the top-right pixel goes to the top-left

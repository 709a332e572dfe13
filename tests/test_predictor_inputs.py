"""``Predictor.detect`` on every input kind: paths, PIL images, numpy arrays (gray, RGB, RGBA; uint8,
uint16, float) and tensors, alone or in batches; results in original pixels.

The tiny model is untrained; its class and mask logits are biased so that it returns detections
(of classes 1 and 2) with non-empty masks, whose boxes and masks still depend on the image content.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn import Config, DataError
from maskrcnn.inference.predictor import Predictor
from maskrcnn.modeling import build_model
from maskrcnn.weights import save_checkpoint

skimage_data = pytest.importorskip("skimage.data")


def tiny(**kw) -> Config:
    values = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                  num_classes=4, image_min_dim=64, image_max_dim=96, pre_nms_limit_inference=300,
                  post_nms_rois_inference=60, detection_max_instances=12, class_names=["BG", "a", "b", "c"])
    values.update(kw)
    return Config(**values)


def biased_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_model(tiny(**kw))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-6.0, 4.0, 3.5, -6.0]))
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.add_(5.0)  # masks covering part of their box
    return model.eval()


def photo(h: int, w: int, which: str = "astronaut") -> np.ndarray:
    return np.array(Image.fromarray(getattr(skimage_data, which)()).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(biased_model(), device="cpu")


def assert_same(a, b, exact: bool = True) -> None:
    assert len(a) == len(b) > 0
    assert np.array_equal(a.class_ids, b.class_ids)
    assert a.image_size == b.image_size and a.masks.shape == b.masks.shape
    if exact:
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.masks, b.masks)
    else:  # batched convolutions may differ in the last bits
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
        assert (a.masks != b.masks).sum() <= 0.001 * a.masks.size


def test_same_image_in_every_form(predictor, tmp_path):
    rgb = photo(70, 90)
    path = tmp_path / "astronaut.png"
    Image.fromarray(rgb).save(path)
    forms = {
        "path": path,
        "str": str(path),
        "pil": Image.open(path),
        "uint8": rgb,
        "uint16": rgb.astype(np.uint16) * 257,
        "float array": rgb.astype(np.float32) / 255,
        "float tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "half tensor": (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255).half(),
    }
    results = {k: predictor.detect(v) for k, v in forms.items()}
    ref = results["uint8"][0]
    assert len(ref) == 12 and set(ref.class_ids.tolist()) <= {1, 2}
    assert ref.names == [["BG", "a", "b", "c"][c] for c in ref.class_ids]
    for k, (det,) in results.items():
        if k == "half tensor":  # float16 rounds the pixels: close, not equal
            assert len(det) == len(ref)
            continue
        assert_same(det, ref)
    assert results["path"][0].file_name == "astronaut.png" and ref.file_name is None
    # geometry in original pixels: boxes inside the image, each mask inside its box scaled by 30/28
    assert ref.masks.shape == (12, 70, 90) and ref.masks.any(axis=(1, 2)).all()
    assert (ref.boxes >= 0).all() and (ref.boxes[:, [0, 2]] <= 90).all() and (ref.boxes[:, [1, 3]] <= 70).all()
    for box, mask in zip(ref.boxes, ref.masks):
        ys, xs = np.nonzero(mask)
        cx, cy, hw, hh = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2 * 30 / 28, (box[3] - box[1]) / 2 * 30 / 28
        assert xs.min() >= cx - hw - 1 and xs.max() <= cx + hw + 1
        assert ys.min() >= cy - hh - 1 and ys.max() <= cy + hh + 1


def test_pil_modes_match_reading_the_file(predictor, tmp_path):
    """A PIL image is converted as the file reader converts it: CMYK -> RGB (not CMY read as RGB plus
    a constant "alpha"), palette with a transparent index -> RGB like the same PNG read from disk."""
    rgb = photo(70, 90, "coffee")
    ref = predictor.detect(rgb)[0]
    assert_same(predictor.detect(Image.fromarray(rgb).convert("CMYK"))[0], ref)
    pal = Image.fromarray(rgb).quantize(32)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    from_disk = predictor.detect(tmp_path / "pal.png")[0]
    assert_same(predictor.detect(Image.open(tmp_path / "pal.png"))[0], from_disk)
    assert_same(from_disk, predictor.detect(np.array(pal.convert("RGB")))[0])


def test_batches_equal_one_by_one(predictor, tmp_path):
    """Three images of different sizes (their resized versions share the padded 64x96 canvas), as a
    list of mixed kinds, in chunks of 2 and of 3, give the one-by-one results in input order."""
    images = [photo(72, 88), photo(60, 90, "coffee"), photo(50, 66, "chelsea")]
    Image.fromarray(images[1]).save(tmp_path / "coffee.png")
    single = [predictor.detect(im)[0] for im in images]
    assert [d.masks.shape[1:] for d in single] == [(72, 88), (60, 90), (50, 66)]
    mixed = [images[0], tmp_path / "coffee.png", torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255]
    for batch_size in (2, 3):
        batched = predictor.detect(mixed, batch_size=batch_size)
        assert len(batched) == 3
        for b, s in zip(batched, single):
            assert_same(b, s, exact=False)
    assert [d.file_name for d in batched] == [None, "coffee.png", None]
    # a [B, C, H, W] tensor is a batch too
    same_size = [photo(60, 90, "coffee"), photo(60, 90, "astronaut")]
    stacked = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in same_size]).float() / 255
    for b, a in zip(predictor.detect(stacked), same_size):
        assert_same(b, predictor.detect(a)[0], exact=False)
    # lazy iteration gives the same
    lazy = list(predictor.detect_iter(iter(images), batch_size=2))
    for b, s in zip(lazy, single):
        assert_same(b, s, exact=False)


def test_score_threshold(predictor):
    rgb = photo(64, 80)
    full = predictor.detect(rgb)[0]
    cut = float(np.median(full.scores))
    part = predictor.detect(rgb, score_threshold=cut)[0]
    keep = full.scores >= cut
    assert 0 < len(part) < len(full)
    assert np.array_equal(part.boxes, full.boxes[keep]) and np.array_equal(part.masks, full.masks[keep])


def test_gray_into_rgb_model_warns_and_works(tmp_path):
    predictor = Predictor(biased_model(), device="cpu")
    gray = photo(70, 90).mean(axis=2).astype(np.uint8)
    with pytest.warns(UserWarning, match="grayscale"):
        det = predictor.detect(gray)[0]
    assert_same(det, predictor.detect(np.repeat(gray[:, :, None], 3, axis=2))[0])
    Image.fromarray(gray).save(tmp_path / "gray.png")  # an 8-bit "L" PNG read as [H, W, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(predictor.detect(tmp_path / "gray.png")[0], det)
        assert_same(predictor.detect(torch.from_numpy(gray).float() / 255)[0], det)  # [H, W] tensor


def test_alpha_channel(predictor):
    rgb = photo(70, 90)
    opaque = np.concatenate([rgb, np.full((70, 90, 1), 255, np.uint8)], axis=2)
    with pytest.warns(UserWarning, match="alpha"):
        det = Predictor(predictor.model).detect(opaque)[0]
    assert_same(det, predictor.detect(rgb)[0])
    varying = opaque.copy()
    varying[:10, :, 3] = 0
    with pytest.raises(DataError) as err:
        predictor.detect(varying)
    msg = str(err.value)
    assert "\n" not in msg and "4 channels" in msg and "takes 3" in msg and "image_channel_count: 4" in msg
    with pytest.raises(DataError):
        predictor.detect(Image.fromarray(varying, "RGBA"))


@pytest.mark.parametrize("bad, expect", [
    (np.zeros((20, 30, 2, 2), np.uint8), "shape (20, 30, 2, 2)"),
    (np.zeros((20, 30, 2), np.uint8), "2 channels"),
    (np.zeros((20, 30, 3), np.int64), "dtype int64"),
    (torch.zeros(2, 3, 20, 30, 1), "tensor of shape"),
    ("not an image at all", "file not found"),
    (12, "unsupported input type int"),
])
def test_unsupported_inputs_are_one_line_data_errors(predictor, bad, expect):
    with pytest.raises(DataError) as err:
        predictor.detect(bad)
    msg = str(err.value)
    assert "\n" not in msg and expect in msg


def test_one_channel_model(tmp_path):
    model = biased_model(1, image_channel_count=1, pixel_mean=[0.45], pixel_std=[0.25])
    ck = save_checkpoint(model, model.config, tmp_path / "gray.safetensors")
    predictor = maskrcnn.load(ck, device="cpu")
    gray = photo(70, 90, "coffee").mean(axis=2).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the model's own channel count
        det = predictor.detect(gray)[0]
        assert_same(predictor.detect(gray[:, :, None].astype(np.uint16) * 257)[0], det)
    assert len(det) == 12 and det.masks.shape == (12, 70, 90)
    with pytest.raises(DataError) as err:
        predictor.detect(np.repeat(gray[:, :, None], 3, axis=2))
    assert "3 channels but the model takes 1" in str(err.value)


# ------------------------------------------------------------------ input normalisation (Config.image_normalization)
def test_normalize_input_values():
    from maskrcnn.modeling.transform import normalize_input

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 30, generator=g) * torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    fixed = normalize_input(img, mean, std)
    assert torch.allclose(fixed[1], (img[1] - 0.5) / 0.25)
    per = normalize_input(img, mean, std, "per_image")
    assert torch.allclose(per.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per.std(dim=(1, 2), correction=0), torch.ones(3), atol=1e-5)
    # per-image standardisation ignores gain and offset of each channel (exposure, stain strength)
    shifted = img * torch.tensor([2.0, 0.5, 1.0])[:, None, None] + torch.tensor([0.1, 0.0, -0.05])[:, None, None]
    assert torch.allclose(normalize_input(shifted, mean, std, "per_image"), per, atol=1e-4)
    flat = torch.full((1, 8, 8), 0.3)  # a flat channel stays finite (std floored at 0.01)
    assert normalize_input(flat, mean[:1], std[:1], "per_image").abs().max() < 1e-3  # not rounding noise / 0
    # inversion only of images brighter than 0.5 on average
    bright = 0.5 + 0.5 * img
    assert torch.allclose(normalize_input(bright, mean, std, invert_bright=True), (1 - bright - mean[:, None, None]) / std[:, None, None])
    dark = 0.5 * img
    assert torch.equal(normalize_input(dark, mean, std, invert_bright=True), normalize_input(dark, mean, std))


def test_invert_bright_images_model_sees_one_polarity():
    """With invert_bright_images a bright-background image and its negative give the same detections."""
    model = biased_model(invert_bright_images=True)
    predictor = Predictor(model, device="cpu")
    rgb = photo(64, 80, "coffee")
    bright = np.clip(rgb.astype(np.int32) // 2 + 128, 0, 255).astype(np.uint8)  # mean above 0.5
    det = predictor.detect(bright)[0]
    assert_same(predictor.detect(255 - bright)[0], det, exact=False)
    plain = Predictor(biased_model(), device="cpu")  # same weights, no inversion: other boxes
    assert not np.allclose(plain.detect(bright)[0].boxes, plain.detect(255 - bright)[0].boxes, atol=1e-2)


def test_per_image_normalization_ignores_exposure():
    predictor = Predictor(biased_model(image_normalization="per_image"), device="cpu")
    rgb = photo(64, 80).astype(np.float32) / 255
    det = predictor.detect(rgb)[0]
    assert_same(predictor.detect(rgb * 0.5 + 0.2)[0], det, exact=False)


def test_padding_does_not_change_per_image_normalization():
    """Statistics and inversion use the window of real pixels; padding is neutral (0 after per_image)."""
    from maskrcnn.modeling.transform import normalize_input

    g = torch.Generator().manual_seed(1)
    real = 0.6 + 0.4 * torch.rand(3, 12, 16, generator=g)  # bright: inverted
    padded = torch.zeros(3, 20, 16)
    padded[:, 4:16] = real
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    for mode in ("per_image", "fixed"):
        out = normalize_input(padded, mean, std, mode, True, window=(4, 0, 16, 16))
        assert torch.allclose(out[:, 4:16], normalize_input(real, mean, std, mode, True), atol=1e-6)
        pad_value = torch.zeros(3) if mode == "per_image" else -mean / std  # as without the options
        assert torch.allclose(out[:, :4], pad_value[:, None, None].expand(3, 4, 16))
    # a window covering the whole image changes nothing
    assert torch.equal(normalize_input(real, mean, std, "per_image", True, window=(0, 0, 12, 16)),
                       normalize_input(real, mean, std, "per_image", True))


def test_pad64_predictions_do_not_depend_on_padding():
    """pad64 upscales a 60x50 image to 77x64 and pads it to 128x64: per-image statistics come from
    the 77x64 window only and the padding enters the network as 0 (the image mean)."""
    model = biased_model(image_normalization="per_image", invert_bright_images=True, image_resize_mode="pad64",
                         image_min_dim=64, image_max_dim=128)
    predictor = Predictor(model, device="cpu")
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    image = photo(60, 50, "coffee")
    predictor.detect(image)
    hook.remove()
    (batch,) = seen
    info = model.transform.plan(*image.shape[:2])
    y1, x1, y2, x2 = info.window
    assert (y1, x1, y2, x2) == (25, 0, 102, 64) and info.image_size == (128, 64) == tuple(batch.shape[-2:])
    inside = batch[0, :, y1:y2, x1:x2]
    assert torch.allclose(inside.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)  # stats of the real pixels only
    assert torch.allclose(inside.std(dim=(1, 2), correction=0), torch.ones(3), atol=1e-4)
    outside = torch.ones(info.image_size, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert batch[0][:, outside].abs().max() == 0  # padding stays at the (normalised) image mean

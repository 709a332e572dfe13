"""Test-time views (``tta_views``): image and box geometry of each flip/rotation, the fusion of the
views' detections, and the equivariance of the fused model."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import Config, ConfigError
from maskrcnn.modeling import build_model
from maskrcnn.modeling.tta import (TTA_VIEWS, boxes_from_view, boxes_to_view, fuse_detections, probs_from_view,
                                   scale_images, view_images)

torch.set_num_threads(1)
VIEWS = list(TTA_VIEWS)


def _box_of(mask: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) of the True pixels of ``mask [H, W]`` (pixel edges)."""
    ys, xs = torch.where(mask)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_named_views_are_the_torch_flips_and_rotations() -> None:
    img = torch.arange(12.0).view(1, 1, 3, 4)
    expected = {"hflip": torch.flip(img[0], [-1]), "vflip": torch.flip(img[0], [-2]),
                "rot180": torch.rot90(img[0], 2, [-2, -1]), "transpose": img[0].transpose(-1, -2),
                "rot90": torch.rot90(img[0], 1, [-2, -1]), "rot270": torch.rot90(img[0], 3, [-2, -1]),
                "antitranspose": torch.rot90(img[0], 2, [-2, -1]).transpose(-1, -2)}
    assert set(expected) == set(VIEWS)
    for view, want in expected.items():
        out, sizes = view_images(img, [(3, 4)], view)
        assert torch.equal(out[0], want), view
        assert sizes == [tuple(want.shape[-2:])]


@pytest.mark.parametrize("view", VIEWS)
def test_boxes_follow_the_pixels_into_each_view_and_back(view: str) -> None:
    """A rectangle of pixels in a padded batch: its box mapped into the view is the box of the viewed
    pixels; mapped back it is the original; the padding stays bottom/right."""
    t = torch.zeros(1, 1, 8, 12)
    t[0, 0, 1:4, 2:7] = 1.0  # frame (6, 10) inside the padded (8, 12)
    size = (6, 10)
    out, sizes = view_images(t, [size], view)
    vh, vw = sizes[0]
    assert (vh, vw) == ((10, 6) if TTA_VIEWS[view][0] else (6, 10))
    assert out.shape[-2:] == ((12, 8) if TTA_VIEWS[view][0] else (8, 12))
    assert out[0, 0, vh:].abs().sum() == 0 and out[0, 0, :, vw:].abs().sum() == 0
    box = _box_of(t[0, 0] > 0)
    assert torch.equal(boxes_to_view(box[None], size, view)[0], _box_of(out[0, 0] > 0))
    assert torch.equal(boxes_from_view(boxes_to_view(box[None], size, view), sizes[0], view)[0], box)
    # the mask crop of a box seen in the view, mapped back, is the crop in the original frame
    crop = t[0, 0, 1:4, 2:7]
    vb = boxes_to_view(box[None], size, view)[0].long()
    view_crop = out[0, 0, vb[1]:vb[3], vb[0]:vb[2]].clone()
    view_crop[0, 0] += 5  # a marked corner shows the orientation
    marked = crop.clone()
    back = probs_from_view(view_crop[None], view)[0]
    assert back.shape == crop.shape and back.sum() == marked.sum() + 5
    assert torch.equal(back > 1, _corner_in_original(view, crop.shape))


def _corner_in_original(view: str, shape: torch.Size) -> torch.Tensor:
    """Where the view crop's top-left pixel lies in the original crop."""
    t, h, v = TTA_VIEWS[view]
    rows, cols = shape
    r, c = 0, 0  # top-left in the view; undo the flips then the transpose
    vr, vc = (cols, rows) if t else (rows, cols)
    if h:
        c = vc - 1 - c
    if v:
        r = vr - 1 - r
    if t:
        r, c = c, r
    out = torch.zeros(shape, dtype=torch.bool)
    out[r, c] = True
    return out


def test_fusion_averages_scores_over_the_views_and_weights_boxes_by_score() -> None:
    boxes = torch.tensor([
        [10.0, 10.0, 20.0, 20.0],   # view 0: object A
        [10.0, 10.0, 22.0, 20.0],   # view 1: A, shifted (IoU 0.83)
        [11.0, 10.0, 21.0, 20.0],   # view 1: A again, weaker (IoU 0.82): counts in the weights, not twice in the score
        [50.0, 50.0, 60.0, 60.0],   # view 2: object B, seen only here
        [10.0, 10.0, 20.0, 20.0],   # view 2: A but another class
    ])
    scores = torch.tensor([0.9, 0.6, 0.3, 0.95, 0.5])
    labels = torch.tensor([1, 1, 1, 1, 2])
    views = torch.tensor([0, 1, 1, 2, 2])
    out = fuse_detections(boxes, scores, labels, views, num_views=3, iou_threshold=0.5, max_detections=10)
    # A: views 0 and 1 (best of view 1 is 0.6), none in view 2 -> (0.9 + 0.6) / 3; B: 0.95 / 3; class 2: 0.5 / 3
    assert torch.allclose(out["scores"], torch.tensor([0.5, 0.95 / 3, 0.5 / 3]))
    assert out["labels"].tolist() == [1, 1, 2]
    w = torch.tensor([0.9, 0.6, 0.3])
    expected_a = (boxes[:3] * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(out["boxes"][0], expected_a)
    assert torch.equal(out["boxes"][1], boxes[3]) and torch.equal(out["boxes"][2], boxes[4])
    # at most max_detections clusters, the best heads
    top = fuse_detections(boxes, scores, labels, views, num_views=3, iou_threshold=0.5, max_detections=1)
    assert top["labels"].tolist() == [1] and torch.allclose(top["scores"], torch.tensor([0.95 / 3]))
    empty = fuse_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0, dtype=torch.int64), 3, 0.5, 10)
    assert empty["boxes"].shape == (0, 4) and len(empty["scores"]) == 0


def _model(views: list[str]) -> torch.nn.Module:
    cfg = Config(num_classes=3, backbone="resnet18", backbone_width=8, fpn_channels=16, image_min_dim=64,
                 image_max_dim=64, rpn_anchor_scales=[8, 16, 32, 64, 128], detection_max_instances=30, tta_views=views)
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("op", ["hflip", "rot90"])
def test_fused_detections_are_equivariant(op: str) -> None:
    """With every dihedral view, detecting on a flipped/rotated image gives the flipped/rotated result
    (the same eight views in another order). Without views the model is not equivariant, so the test
    can fail."""
    torch.manual_seed(1)
    image = torch.rand(3, 64, 64)
    turned = view_images(image[None], [(64, 64)], op)[0][0]
    model = _model(VIEWS)
    with torch.no_grad():
        a, b = model([image])[0], model([turned])[0]
    assert len(a["scores"]) > 5
    a_in_view = boxes_to_view(a["boxes"], (64, 64), op)
    key = lambda boxes: torch.argsort(boxes[:, 0] * 1000 + boxes[:, 1])  # noqa: E731
    ia, ib = key(a_in_view), key(b["boxes"])
    assert torch.allclose(a["scores"][ia], b["scores"][ib], atol=1e-5)
    assert torch.allclose(a_in_view[ia], b["boxes"][ib], atol=1e-3)
    # b's masks seen back in the original orientation are a's
    assert torch.allclose(a["mask_probs"][ia], probs_from_view(b["mask_probs"][ib], op), atol=1e-4)
    plain = _model([])
    with torch.no_grad():
        p, q = plain([image])[0], plain([turned])[0]
    assert not (len(p["scores"]) == len(q["scores"]) and torch.allclose(p["scores"].sort().values, q["scores"].sort().values, atol=1e-5))


def test_no_flips_is_the_plain_detection_and_flips_change_it() -> None:
    torch.manual_seed(2)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    plain, fused = _model([]), _model(["hflip", "vflip", "rot180"])
    fused.load_state_dict(plain.state_dict())
    with torch.no_grad():
        p, f = plain(images), fused(images)
    for a, b in zip(p, f):
        assert set(a) == set(b) and b["mask_probs"].shape[1:] == a["mask_probs"].shape[1:]
        assert len(b["scores"]) <= 30 and bool((b["scores"][:-1] >= b["scores"][1:]).all())
        assert bool((b["mask_probs"] >= 0).all() and (b["mask_probs"] <= 1).all())
    assert not torch.equal(p[0]["scores"], f[0]["scores"][: len(p[0]["scores"])])


def test_bad_view_names_and_duplicates_name_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        Config(tta_views=["hflip", "hflip"])
    assert "tta_views" in str(info.value) and "each view once" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Config(tta_views=["rot45"])
    assert "tta_views" in str(info.value)


def test_an_export_detects_once_and_its_sidecar_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from maskrcnn.export.onnx import _meta

    meta = _meta(Config(tta_views=["hflip", "rot90"], tta_scales=[1.5]), "onnx")
    assert meta["config"]["tta_views"] == [] and meta["config"]["tta_scales"] == []
    assert "tta_views" in capsys.readouterr().err


def test_scale_views_resize_each_frame_and_pad_to_the_divisor() -> None:
    t = torch.zeros(2, 1, 64, 64)
    t[0, 0, :40, :50] = torch.rand(40, 50)
    t[1, 0, :64, :30] = torch.rand(64, 30)
    out, sizes = scale_images(t, [(40, 50), (64, 30)], 1.5, 32)
    assert sizes == [(60, 75), (96, 45)] and out.shape[-2:] == (96, 96)
    want = torch.nn.functional.interpolate(t[:1, :, :40, :50], size=(60, 75), mode="bilinear", align_corners=False)[0]
    assert torch.equal(out[0, :, :60, :75], want)
    assert out[0, :, 60:].abs().sum() == 0 and out[0, :, :, 75:].abs().sum() == 0


def test_scaled_detections_come_back_to_the_frame() -> None:
    """A 2x view finds its boxes in a 128 px frame; fused, every box lies in the 64 px one (the mapping
    back divides by 2), and the result differs from one pass."""
    torch.manual_seed(3)
    image = torch.rand(3, 64, 64)
    cfg = dict(num_classes=3, backbone="resnet18", backbone_width=8, fpn_channels=16, image_min_dim=64,
               image_max_dim=64, rpn_anchor_scales=[8, 16, 32, 64, 128], detection_max_instances=30)
    torch.manual_seed(0)
    plain = build_model(Config(**cfg)).eval()
    scaled = build_model(Config(**cfg, tta_scales=[2.0])).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        p, f = plain([image])[0], scaled([image])[0]
    assert len(f["scores"]) > 5
    assert float(f["boxes"].min()) >= 0 and float(f["boxes"].max()) <= 64 + 1e-3
    assert not (len(p["scores"]) == len(f["scores"]) and torch.allclose(p["scores"], f["scores"]))
    # a detection that both views make keeps its place: the best plain box has a fused box on it
    from torchvision.ops import box_iou

    assert float(box_iou(p["boxes"][:1], f["boxes"]).max()) > 0.5


def test_tta_argument_reads_named_sets_views_and_scales() -> None:
    import argparse

    from maskrcnn.commands.args import tta_views

    assert tta_views("flips,x1.25") == {"tta_views": ["hflip", "vflip", "rot180"], "tta_scales": [1.25]}
    assert tta_views("dihedral")["tta_views"] == VIEWS and tta_views("rot90,hflip")["tta_views"] == ["rot90", "hflip"]
    for bad in ("rot45", "x1", "x-2", "xabc", "flips,"):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            tta_views(bad)
        assert "x1.25" in str(info.value) and "dihedral" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Config(tta_scales=[1.0])
    assert "tta_scales" in str(info.value)

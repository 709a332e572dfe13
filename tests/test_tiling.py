"""Tiled detection: the grid, merging across tile borders (exact, with a rectangle-detecting stub),
equality with untiled detection, lazy image sources, compact masks and their COCO RLE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from maskrcnn.config import Config
from maskrcnn.errors import MaskRCNNError
from maskrcnn.inference.predictor import Predictor
from maskrcnn.inference.results import Detections
from maskrcnn.inference.tiling import crop_to_rle, detect_tiled, open_tiled_image, tile_grid, tile_starts
from maskrcnn.modeling import build_model
from maskrcnn.modeling.transform import InputTransform

torch.set_num_threads(1)


class RectPredictor(Predictor):
    """A stand-in detector with known output: each 4-connected component of pixels with red >= 128 is
    an instance (mask = the component, box = its extent), class 1 when green >= 128 else 2, score =
    blue / 255 (one value per object, so every tile that sees a piece of it gives the same score)."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.config = Config(num_classes=3)
        self.transform = InputTransform(self.config)  # to_array checks sizes with the model's transform
        self.class_names = ["BG", "one", "two"]
        self._warned: set[str] = set()
        self.calls: list[list[tuple[int, int]]] = []

    def detect(self, images, *, batch_size=4, score_threshold=None, mask_threshold=None):  # type: ignore[override]
        if not isinstance(images, (list, tuple)):
            images = [images]
        self.calls.append([tuple(np.shape(a)[:2]) for a in images])
        out = []
        for im in images:
            arr = self.to_array(im)
            labels, n = ndimage.label(arr[:, :, 0] >= 128)
            boxes, scores, cls, masks = [], [], [], []
            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                ys, xs = sl
                m = labels == k
                boxes.append([xs.start, ys.start, xs.stop, ys.stop])
                pix = arr[m][0]  # every pixel of an object has its colour
                scores.append(pix[2] / 255)
                cls.append(1 if pix[1] >= 128 else 2)
                masks.append(m)
            order = np.argsort(-np.asarray(scores), kind="stable")
            h, w = arr.shape[:2]
            d = Detections(np.asarray(boxes, np.float32).reshape(-1, 4)[order], np.asarray(cls, np.int64)[order],
                           np.asarray(scores, np.float32)[order],
                           np.asarray(masks, bool).reshape(-1, h, w)[order], self.class_names, (h, w))
            out.append(d if score_threshold is None else d.filter(score_threshold))
        return out


# (x0, y0, x1, y1) rectangles; an object is one or more rectangles (L shapes)
OBJECTS = {
    "wide, cut by two borders, in 3 tiles": [(150, 20, 420, 100)],
    "small, cut in tile 0, whole in tile 1": [(240, 150, 270, 180)],
    "at a 4-tile corner, whole in one tile": [(230, 215, 300, 285)],
    "larger than the overlap, in 6 tiles": [(500, 150, 700, 420)],
    "far from the origin": [(853, 611, 897, 689)],
    "wide A (2 px above B)": [(150, 470, 420, 520)],
    "wide B": [(150, 522, 420, 560)],
    "L1 (box overlaps L2's)": [(620, 450, 640, 590), (620, 570, 780, 590)],
    "L2": [(645, 450, 800, 470), (780, 450, 800, 565)],
    "whole in two tiles' overlap": [(395, 300, 430, 340)],
}
H, W = 700, 900


def scene() -> tuple[np.ndarray, list[np.ndarray]]:
    img = np.full((H, W, 3), 20, np.uint8)
    masks = []
    for i, rects in enumerate(OBJECTS.values()):
        m = np.zeros((H, W), bool)
        for x0, y0, x1, y1 in rects:
            m[y0:y1, x0:x1] = True
        img[m] = (200, 200 if i % 2 else 50, 250 - 10 * i)
        masks.append(m)
    return img, masks


def test_tile_grid_covers_the_image_with_equal_tiles():
    assert tile_starts(900, 256, 64) == [0, 192, 384, 576, 644]
    assert tile_starts(700, 256, 64) == [0, 192, 384, 444]
    assert tile_starts(200, 256, 64) == [0]
    tiles = tile_grid(700, 900, 256, 64)
    assert len(tiles) == 20 and tiles[0] == (0, 0, 256, 256) and tiles[-1] == (644, 444, 900, 700)
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in tiles} == {(256, 256)}
    cover = np.zeros((700, 900), int)
    for x0, y0, x1, y1 in tiles:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() == 1
    assert tile_grid(100, 300, 256, 64) == [(0, 0, 256, 100), (44, 0, 300, 100)]
    with pytest.raises(MaskRCNNError, match="overlap=256"):
        tile_grid(700, 900, 256, 256)


def test_objects_cut_by_tile_borders_are_merged_exactly():
    img, masks = scene()
    stub = RectPredictor()
    untiled = stub.detect(img)[0]
    assert len(untiled) == len(OBJECTS)  # the scene is as planned: 10 separate objects

    stub.calls.clear()
    tiled = detect_tiled(stub, img, tile_size=256, overlap=64, batch_size=3)
    assert [len(c) for c in stub.calls] == [3] * 6 + [2]  # 20 tiles of 256 x 256
    assert {s for c in stub.calls for s in c} == {(256, 256)}
    assert len(tiled) == len(OBJECTS)  # each object once: no pieces, no duplicates
    assert tiled.image_size == (H, W) and len(tiled.tiles) == 20
    # the same instances as detecting on the whole image: scores (distinct per object), classes,
    # boxes and full masks exactly, in original coordinates
    np.testing.assert_array_equal(tiled.scores, untiled.scores)
    np.testing.assert_array_equal(tiled.class_ids, untiled.class_ids)
    np.testing.assert_array_equal(tiled.boxes, untiled.boxes)
    for i in range(len(tiled)):
        np.testing.assert_array_equal(tiled.mask(i), untiled.masks[i])
    full = tiled.to_detections()
    np.testing.assert_array_equal(full.masks, untiled.masks)

    names = list(OBJECTS)
    by_score = {round(float(s) * 255): i for i, s in enumerate(tiled.scores)}
    wide = by_score[250]
    assert tiled.boxes[wide].tolist() == [150, 20, 420, 100] and tiled.areas[wide] == 270 * 80
    assert tiled.mask_offsets[wide].tolist() == [20, 150] and tiled.mask_crops[wide].shape == (80, 270)
    far = by_score[250 - 10 * names.index("far from the origin")]
    assert tiled.boxes[far].tolist() == [853, 611, 897, 689]
    assert tiled.mask_offsets[far].tolist() == [611, 853] and tiled.mask_crops[far].all()
    np.testing.assert_array_equal(tiled.mask_window(far, 850, 600, 900, 700)[11:89, 3:47], True)
    assert tiled.mask_window(far, 850, 600, 900, 700).sum() == 44 * 78


def test_without_merging_the_pieces_would_be_returned():
    """The same scene with tiles but a merge that can never match: pieces and duplicates remain
    (so the exact result above is the merging's doing)."""
    img, _ = scene()
    raw = detect_tiled(RectPredictor(), img, tile_size=256, overlap=64, merge_iou=1.01, merge_iom=None)
    assert len(raw) > 20
    wide = [i for i, s in enumerate(raw.scores) if round(float(s) * 255) == 250]
    assert sorted(raw.boxes[i].tolist() for i in wide) == [[150, 20, 256, 100], [192, 20, 420, 100],
                                                           [384, 20, 420, 100]]


def test_equal_to_untiled_detection_when_one_tile_covers_the_image():
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                 mask_head_convs=2, num_classes=3, image_min_dim=64, image_max_dim=128,
                 pre_nms_limit_inference=200, post_nms_rois_inference=50, detection_max_instances=20)
    predictor = Predictor(build_model(cfg))
    rng = np.random.default_rng(0)
    img = np.array(Image.fromarray(rng.integers(0, 255, (12, 16, 3), np.uint8)).resize((120, 90), Image.BILINEAR))
    ref = predictor.detect(img)[0]
    tiled = detect_tiled(predictor, img, tile_size=128, overlap=32)
    assert len(ref) > 0 and len(tiled.tiles) == 1
    got = tiled.to_detections()
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.class_ids, ref.class_ids)
    np.testing.assert_array_equal(got.masks, ref.masks)
    assert tiled.to_coco(3) == ref.to_coco(3)

    # several tiles with the real model: valid, in-bounds results whatever it detects
    big = np.array(Image.fromarray(rng.integers(0, 255, (20, 26, 3), np.uint8)).resize((260, 200), Image.BILINEAR))
    t2 = detect_tiled(predictor, big, tile_size=128, overlap=32, batch_size=2)
    assert len(t2.tiles) == 6 and len(t2) > 0
    for crop, (oy, ox) in zip(t2.mask_crops, t2.mask_offsets.tolist()):
        assert 0 <= oy and oy + crop.shape[0] <= 200 and 0 <= ox and ox + crop.shape[1] <= 260
        assert crop.shape == (0, 0) or (crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any())
    assert np.all(np.diff(t2.scores) <= 0)


def test_paths_are_read_lazily_and_give_the_same_result(tmp_path):
    img, _ = scene()
    stub = RectPredictor()
    ref = detect_tiled(stub, img, tile_size=256, overlap=64)
    Image.fromarray(img).save(tmp_path / "scene.png")
    import tifffile

    tifffile.imwrite(tmp_path / "scene.tif", img)  # uncompressed: memory-mapped
    tifffile.imwrite(tmp_path / "planar.tif", np.ascontiguousarray(img.transpose(2, 0, 1)), photometric="rgb",
                     planarconfig="separate")
    assert open_tiled_image(tmp_path / "scene.tif").kind == "memmap"
    assert open_tiled_image(tmp_path / "planar.tif").kind == "memmap"
    assert open_tiled_image(tmp_path / "scene.png").kind == "pil"
    pil = Image.fromarray(img)
    sources = [tmp_path / "scene.png", tmp_path / "scene.tif", tmp_path / "planar.tif", pil,
               torch.from_numpy(img).permute(2, 0, 1)]
    for src in sources:
        got = detect_tiled(stub, src, tile_size=256, overlap=64)
        np.testing.assert_array_equal(got.boxes, ref.boxes)
        np.testing.assert_array_equal(got.scores, ref.scores)
        assert all((a == b).all() for a, b in zip(got.mask_crops, ref.mask_crops))
    np.testing.assert_array_equal(np.asarray(pil), img)  # the caller's image is left open and unchanged
    assert detect_tiled(stub, tmp_path / "scene.png", tile_size=256, overlap=64).file_name == "scene.png"


def test_rle_from_crops_equals_pycocotools_on_the_full_mask():
    rng = np.random.default_rng(4)
    h, w = 37, 23
    cases = [(rng.random((9, 7)) < 0.5, 5, 3), (np.ones((37, 4), bool), 0, 6),  # full columns: runs join
             (np.ones((37, 23), bool), 0, 0), (rng.random((37, 5)) < 0.7, 0, 18), (np.zeros((3, 3), bool), 2, 2),
             (np.ones((1, 1), bool), 36, 22)]
    for crop, y0, x0 in cases:
        full = np.zeros((h, w), bool)
        full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        want = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        got = crop_to_rle(crop, y0, x0, h, w)
        assert got["size"] == [h, w] and got["counts"] == want["counts"].decode("ascii")
        np.testing.assert_array_equal(mask_utils.decode({"size": [h, w], "counts": got["counts"]}), full)

    img, _ = scene()
    tiled = detect_tiled(RectPredictor(), img, tile_size=256, overlap=64)
    coco = tiled.to_coco(5, category_ids=[0, 11, 12])
    ref = RectPredictor().detect(img)[0].to_coco(5, category_ids=[0, 11, 12])
    assert coco == ref and {d["category_id"] for d in coco} == {11, 12}

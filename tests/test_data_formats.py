"""Annotation-format loaders, format detection, COCO conversion and the convert command.

Every fixture is written by the test itself: tiny images with instances whose pixels are known.
Coordinates are pixel-edge coordinates: the square (0, 0)-(10, 10) covers pixels 0..9.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import tifffile
from PIL import Image

from maskrcnn.commands import convert as convert_cmd
from maskrcnn.data import Dataset
from maskrcnn.data.convert import dataset_to_coco, write_coco
from maskrcnn.data.formats import (
    CocoDataset,
    FORMATS,
    InstanceMaskDataset,
    detect_format,
    load_dataset,
)
from maskrcnn.errors import DataError

NUCLEI = Path(__file__).resolve().parents[1].parent / "shared/data/nuclei/train"


# --------------------------------------------------------------------------- helpers


def _image(path: Path, h: int, w: int, channels: int = 3, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, channels), value, dtype=np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :]  # not constant, so reading errors would show
    Image.fromarray(arr if channels > 1 else arr[..., 0]).save(path)
    return path


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Mask of rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _kinds(ds: Dataset) -> list[str]:
    return sorted(p["kind"] for p in ds.problems)


def _masks_by_image(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [ds.load_mask(i) for i in ds.image_ids]


# --------------------------------------------------------------------------- COCO


def _coco_fixture(tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    _image(tmp / "a.png", 30, 40)
    _image(tmp / "b.png", 20, 20)
    dog_rle = _box(30, 40, 20, 25, 30, 38)  # 40 px
    dog_compressed = _box(30, 40, 0, 3, 35, 40)  # 15 px
    crowd = _box(30, 40, 25, 30, 0, 6)  # 30 px
    enc = mask_utils.encode(np.asfortranarray(dog_compressed.astype(np.uint8)))
    enc["counts"] = enc["counts"].decode()
    data = {
        "images": [{"id": 11, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 12, "file_name": "b.png", "width": 20, "height": 20}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 9, "name": "unused"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 3, "iscrowd": 0,
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 2, "image_id": 11, "category_id": 7, "iscrowd": 0, "segmentation": _uncompressed_rle(dog_rle)},
            {"id": 3, "image_id": 11, "category_id": 7, "iscrowd": 0, "segmentation": enc},
            {"id": 4, "image_id": 11, "category_id": 3, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd)},
            {"id": 5, "image_id": 11, "category_id": 3, "iscrowd": 0, "segmentation": [[1, 1, 5, 5]]},
            {"id": 6, "image_id": 11, "category_id": 99, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]]},
            {"id": 7, "image_id": 999, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4]]},
            {"id": 8, "image_id": 11, "category_id": 3, "iscrowd": 0, "segmentation": [[12, 0, 18, 0, 18, 6, 12, 6],
                                                                                     [20, 0, 22, 0, 22, 2, 20, 2]]},
            {"id": 9, "image_id": 11, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 3, 3]},
        ],
    }
    expected = {
        "cat_square": _box(30, 40, 0, 10, 0, 10),
        "dog_rle": dog_rle,
        "dog_compressed": dog_compressed,
        "cat_two_parts": _box(30, 40, 0, 6, 12, 18) | _box(30, 40, 0, 2, 20, 22),
        "crowd": crowd,
    }
    return _write_json(tmp / "instances.json", data), expected


def test_coco_polygons_rle_crowd_gaps_and_background_images(tmp_path: Path) -> None:
    file, exp = _coco_fixture(tmp_path)
    ds = load_dataset(file)
    assert isinstance(ds, CocoDataset)
    assert ds.class_names == ["BG", "cat", "dog", "unused"]  # ids 3, 7, 9 -> 1, 2, 3
    assert ds.num_images == 2 and [i["id"] for i in ds.image_info] == [11, 12]
    masks, ids = ds.load_mask(0)
    assert masks.shape == (30, 40, 4) and masks.dtype == bool
    np.testing.assert_array_equal(ids, [1, 2, 2, 1])
    assert ids.dtype == np.int32
    for k, name in enumerate(["cat_square", "dog_rle", "dog_compressed", "cat_two_parts"]):
        np.testing.assert_array_equal(masks[:, :, k], exp[name], err_msg=name)
    assert [int(masks[:, :, k].sum()) for k in range(4)] == [100, 40, 15, 40]
    np.testing.assert_array_equal(ds.load_ignore_mask(0), exp["crowd"])
    bg_masks, bg_ids = ds.load_mask(1)
    assert bg_masks.shape == (20, 20, 0) and bg_ids.shape == (0,)
    assert ds.load_ignore_mask(1) is None
    assert _kinds(ds) == ["degenerate_polygon", "no_mask", "unknown_class", "unknown_image"]
    p = next(p for p in ds.problems if p["kind"] == "degenerate_polygon")
    assert p["instance"] == "annotation 5" and p["image"].endswith("a.png") and p["file"] == str(file)
    assert "instances.json" in p["message"] and "annotation 5" in p["message"] and "\n" not in p["message"]


def test_coco_class_ids_subset_keeps_matching_images_only(tmp_path: Path) -> None:
    file, exp = _coco_fixture(tmp_path)
    ds = load_dataset(file, class_ids=[7])
    assert ds.class_names == ["BG", "dog"] and ds.num_images == 1
    masks, ids = ds.load_mask(0)
    np.testing.assert_array_equal(ids, [1, 1])
    np.testing.assert_array_equal(masks[:, :, 0], exp["dog_rle"])
    with pytest.raises(DataError, match=r"class_ids \[5\] are not category ids"):
        load_dataset(file, class_ids=[5])


def test_coco_image_problems_and_fatal_errors(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "ok.png", 10, 12)
    _image(tmp_path / "img" / "wrong.png", 11, 12)
    _image(tmp_path / "img" / "rotated.png", 12, 10)
    data = {"images": [{"id": 1, "file_name": "ok.png", "width": 12, "height": 10},
                       {"id": 2, "file_name": "wrong.png", "width": 12, "height": 10},
                       {"id": 3, "file_name": "gone.png", "width": 12, "height": 10},
                       {"id": 4, "file_name": "rotated.png", "width": 12, "height": 10}],
            "categories": [{"id": 1, "name": "x"}], "annotations": []}
    file = _write_json(tmp_path / "ann" / "c.json", data)
    ds = load_dataset(file, image_dir=tmp_path / "img")
    assert ds.num_images == 1 and ds.image_info[0]["path"].endswith("ok.png")
    assert _kinds(ds) == ["missing_image", "size_mismatch", "size_mismatch"]
    assert any("EXIF-rotated" in p["message"] for p in ds.problems)
    with pytest.raises(DataError, match=r"c\.json: image .*wrong\.png is 12x11 \(WxH\) but the annotation says 12x10.*strict mode"):
        load_dataset(file, image_dir=tmp_path / "img", strict=True)
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON \(line 1"):
        load_dataset(tmp_path / "bad.json", format="coco")
    _write_json(tmp_path / "nocat.json", {"images": [], "annotations": []})
    with pytest.raises(DataError, match=r"nocat\.json: no 'categories' list"):
        load_dataset(tmp_path / "nocat.json", format="coco")


# --------------------------------------------------------------------------- VIA


def _via_regions(h: int, w: int) -> tuple[list[dict], list[tuple[np.ndarray, str]]]:
    regions = [
        {"shape_attributes": {"name": "polygon", "all_points_x": [2, 12, 12, 2], "all_points_y": [3, 3, 8, 8]},
         "region_attributes": {"type": "red"}},
        {"shape_attributes": {"name": "rect", "x": 20, "y": 5, "width": 6, "height": 4},
         "region_attributes": {"type": "blue"}},
        {"shape_attributes": {"name": "circle", "cx": 30, "cy": 20, "r": 3},
         "region_attributes": {"type": {"red": True, "blue": False}}},
        {"shape_attributes": {"name": "ellipse", "cx": 10, "cy": 20, "rx": 4, "ry": 2, "theta": 0},
         "region_attributes": {"type": "blue"}},
        {"shape_attributes": {"name": "point", "cx": 1, "cy": 1}, "region_attributes": {"type": "red"}},
        {"shape_attributes": {"name": "polygon", "all_points_x": [1, 5], "all_points_y": [1, 5]},
         "region_attributes": {"type": "red"}},
        {"shape_attributes": {"name": "rect", "x": 0, "y": 0, "width": 3, "height": 3}, "region_attributes": {}},
    ]
    ellipse = np.zeros((h, w), dtype=bool)
    ellipse[19:21, 6:14] = True
    ellipse[[18, 21], 7:13] = True
    expected = [(_box(h, w, 3, 8, 2, 12), "red"), (_box(h, w, 5, 9, 20, 26), "blue"),
                (_disc(h, w, 30, 20, 3), "red"), (ellipse, "blue")]
    return regions, expected


def test_via1_dict_regions_with_class_attribute(tmp_path: Path) -> None:
    _image(tmp_path / "b1.png", 30, 40)
    _image(tmp_path / "b2.png", 16, 16)
    regions, expected = _via_regions(30, 40)
    data = {"b1.png123": {"filename": "b1.png", "size": 123, "regions": {str(i): r for i, r in enumerate(regions)},
                          "file_attributes": {}},
            "b2.png9": {"filename": "b2.png", "size": 9, "regions": {}, "file_attributes": {}}}
    file = _write_json(tmp_path / "via_region_data.json", data)
    assert detect_format(file) == "via" and detect_format(tmp_path) == "via"
    ds = load_dataset(tmp_path, class_attribute="type")
    assert ds.class_names == ["BG", "blue", "red"]
    masks, ids = ds.load_mask(0)
    assert masks.shape == (30, 40, 4)
    assert [int(masks[:, :, k].sum()) for k in range(4)] == [50, 24, 32, 28]
    for k, (m, name) in enumerate(expected):
        np.testing.assert_array_equal(masks[:, :, k], m, err_msg=name)
        assert ds.class_names[ids[k]] == name
    assert ds.load_mask(1)[0].shape == (16, 16, 0)  # background-only image kept
    assert _kinds(ds) == ["degenerate_polygon", "missing_class", "unsupported_shape"]
    assert {p["instance"] for p in ds.problems} == {"region 4", "region 5", "region 6"}


def test_via2_list_regions_one_class_and_project_file(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "b1.png", 30, 40)
    regions, expected = _via_regions(30, 40)
    regions = regions[:4]
    export = {"b1.png1": {"filename": "b1.png", "size": 1, "regions": regions, "file_attributes": {}}}
    file = _write_json(tmp_path / "export.json", export)
    ds = load_dataset(file, image_dir=tmp_path / "imgs", class_name="balloon")
    assert ds.class_names == ["BG", "balloon"] and ds.problems == []
    masks, ids = ds.load_mask(0)
    np.testing.assert_array_equal(ids, [1, 1, 1, 1])
    for k, (m, _) in enumerate(expected):
        np.testing.assert_array_equal(masks[:, :, k], m)
    # VIA 2 project file: the class order comes from the attribute's declared options
    project = {"_via_settings": {}, "_via_img_metadata": export,
               "_via_attributes": {"region": {"type": {"type": "dropdown", "options": {"red": "", "blue": "", "green": ""}}},
                                   "file": {}}}
    pfile = _write_json(tmp_path / "project.json", project)
    ds2 = load_dataset(pfile, format="via", image_dir=tmp_path / "imgs", class_attribute="type")
    assert ds2.class_names == ["BG", "red", "blue", "green"]
    np.testing.assert_array_equal(ds2.load_mask(0)[1], [1, 2, 1, 2])


def test_via_rotated_ellipse_and_unknown_class(tmp_path: Path) -> None:
    _image(tmp_path / "e.png", 40, 40)
    regions = [{"shape_attributes": {"name": "ellipse", "cx": 20, "cy": 20, "rx": 4, "ry": 2, "theta": math.pi / 2},
                "region_attributes": {"c": "a"}},
               {"shape_attributes": {"name": "ellipse", "cx": 20, "cy": 20, "rx": 2, "ry": 4, "theta": 0},
                "region_attributes": {"c": "zzz"}}]
    file = _write_json(tmp_path / "v.json", {"e": {"filename": "e.png", "regions": regions}})
    ds = load_dataset(file, class_attribute="c", class_names=["a"])
    assert _kinds(ds) == ["unknown_class"]
    masks, _ = ds.load_mask(0)
    assert masks.shape[2] == 1
    upright = np.zeros((40, 40), dtype=bool)
    upright[16:24, 19:21] = True
    upright[17:23, [18, 21]] = True
    np.testing.assert_array_equal(masks[:, :, 0], upright)


# --------------------------------------------------------------------------- LabelMe


def _png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_labelme_shapes_groups_ignore_and_embedded_images(tmp_path: Path) -> None:
    _image(tmp_path / "pics" / "a.png", 30, 40)
    bitmap = np.zeros((3, 4), dtype=np.uint8)
    bitmap[1:, 1:] = 1
    shapes = [
        {"label": "cat", "points": [[0, 0], [10, 0], [10, 10], [0, 10]], "shape_type": "polygon", "group_id": None},
        {"label": "dog", "points": [[20, 0], [24, 4]], "shape_type": "rectangle", "group_id": 1},
        {"label": "dog", "points": [[30, 10], [26, 6]], "shape_type": "rectangle", "group_id": 1},
        {"label": "cat", "points": [[30, 20], [33, 20]], "shape_type": "circle", "group_id": None},
        {"label": "__ignore__", "points": [[0, 20], [5, 30]], "shape_type": "rectangle", "group_id": None},
        {"label": "cat", "points": [[1, 1], [5, 5]], "shape_type": "line", "group_id": None},
        {"label": "cow", "points": [[1, 1], [5, 1], [5, 5]], "shape_type": "polygon", "group_id": None},
        {"label": "dog", "points": [[10, 20], [14, 23]], "shape_type": "mask", "mask": _png_b64(bitmap), "group_id": None},
    ]
    _write_json(tmp_path / "ann" / "a.json", {"version": "5.4.1", "shapes": shapes, "imagePath": "../pics/a.png",
                                              "imageData": None, "imageHeight": 30, "imageWidth": 40})
    pixels = np.zeros((8, 6, 3), dtype=np.uint8)
    pixels[2:4, 1:5] = (200, 10, 30)
    emb_shapes = [{"label": "dog", "points": [[1, 2], [5, 4]], "shape_type": "rectangle", "group_id": None}]
    _write_json(tmp_path / "ann" / "emb.json", {"shapes": emb_shapes, "imagePath": "moved/emb.png",
                                                "imageData": _png_b64(pixels), "imageHeight": 8, "imageWidth": 6})
    (tmp_path / "ann" / "notes.json").write_text('{"hello": 1}')
    assert detect_format(tmp_path / "ann") == "labelme"
    ds = load_dataset(tmp_path / "ann", class_names=["cat", "dog"])
    assert ds.class_names == ["BG", "cat", "dog"] and ds.num_images == 2
    masks, ids = ds.load_mask(0)
    np.testing.assert_array_equal(ids, [1, 2, 1, 2])
    np.testing.assert_array_equal(masks[:, :, 0], _box(30, 40, 0, 10, 0, 10))
    np.testing.assert_array_equal(masks[:, :, 1], _box(30, 40, 0, 4, 20, 24) | _box(30, 40, 6, 10, 26, 30))
    np.testing.assert_array_equal(masks[:, :, 2], _disc(30, 40, 30, 20, 3))
    np.testing.assert_array_equal(masks[:, :, 3], _box(30, 40, 21, 23, 11, 14))
    np.testing.assert_array_equal(ds.load_ignore_mask(0), _box(30, 40, 20, 30, 0, 5))
    assert _kinds(ds) == ["invalid_annotation", "unknown_class", "unsupported_shape"]
    np.testing.assert_array_equal(ds.load_image(1), pixels)
    np.testing.assert_array_equal(ds.load_mask(1)[0][:, :, 0], _box(8, 6, 2, 4, 1, 5))
    # without class_names the classes are the sorted labels
    assert load_dataset(tmp_path / "ann").class_names == ["BG", "cat", "cow", "dog"]


# --------------------------------------------------------------------------- mask folders


def _dsb_fixture(root: Path) -> list[np.ndarray]:
    rgba = np.zeros((20, 24, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 40, 255
    (root / "img1" / "images").mkdir(parents=True)
    Image.fromarray(rgba, mode="RGBA").save(root / "img1" / "images" / "img1.png")
    masks = [_box(20, 24, 0, 5, 0, 6), _box(20, 24, 10, 20, 10, 12)]
    (root / "img1" / "masks").mkdir()
    for i, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "img1" / "masks" / f"m{i}.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "img1" / "masks" / "z_small.png")
    varying = rgba.copy()
    varying[0, 0, 3] = 0
    (root / "img2" / "images").mkdir(parents=True)
    Image.fromarray(varying, mode="RGBA").save(root / "img2" / "images" / "img2.png")
    return masks


def test_instance_mask_folders_drop_constant_alpha(tmp_path: Path) -> None:
    masks = _dsb_fixture(tmp_path)
    assert detect_format(tmp_path) == "instance-masks"
    ds = load_dataset(tmp_path)
    assert isinstance(ds, InstanceMaskDataset) and ds.class_names == ["BG", "object"]
    got, ids = ds.load_mask(0)
    assert got.shape == (20, 24, 2)
    np.testing.assert_array_equal(ids, [1, 1])
    for k, m in enumerate(masks):
        np.testing.assert_array_equal(got[:, :, k], m)
    image = ds.load_image(0)
    assert image.shape == (20, 24, 3) and int(image[0, 0, 0]) == 40
    assert _kinds(ds) == ["mask_size_mismatch", "unlabelled_image"]
    with pytest.raises(DataError, match=r"img2\.png: alpha channel is not constant"):
        ds.load_image(1)
    keep = load_dataset(tmp_path, format="instance-masks", drop_alpha=False, class_name="nucleus")
    assert keep.load_image(1).shape == (20, 24, 4) and keep.class_names == ["BG", "nucleus"]


def test_label_images_with_class_sidecars(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "x.png", 12, 10)
    _image(tmp_path / "images" / "sub" / "y.png", 12, 10)
    _image(tmp_path / "images" / "nolabel.png", 6, 6)
    lab = np.zeros((12, 10), dtype=np.uint16)
    lab[0:4, 0:5] = 300
    lab[6:12, 2:4] = 5
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    Image.fromarray(lab).save(tmp_path / "labels" / "x.png")
    tifffile.imwrite(tmp_path / "labels" / "sub" / "y.tif", (lab > 0).astype(np.uint8) * 9)
    Image.fromarray(lab).save(tmp_path / "labels" / "orphan.png")
    assert detect_format(tmp_path) == "label-images"
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["BG", "object"] and ds.num_images == 3
    paths = [Path(i["path"]).name for i in ds.image_info]
    x = ds.load_mask(paths.index("x.png"))
    assert x[0].shape == (12, 10, 2)
    np.testing.assert_array_equal(x[0][:, :, 0], lab == 5)  # increasing label value
    np.testing.assert_array_equal(x[0][:, :, 1], lab == 300)
    y = ds.load_mask(paths.index("y.png"))
    assert y[0].shape == (12, 10, 1) and int(y[0].sum()) == int((lab > 0).sum())
    assert ds.load_mask(paths.index("nolabel.png"))[0].shape == (6, 6, 0)
    assert _kinds(ds) == ["orphan_annotation", "unlabelled_image"]
    # classes: a per-image JSON beats the global class_map
    (tmp_path / "labels" / "x.json").write_text(json.dumps({"300": "nucleus", "5": "cell"}))
    ds2 = load_dataset(tmp_path, format="label-images", class_map={9: "cell"})
    assert ds2.class_names == ["BG", "cell", "nucleus"]
    np.testing.assert_array_equal(ds2.load_mask(paths.index("x.png"))[1], [1, 2])
    np.testing.assert_array_equal(ds2.load_mask(paths.index("y.png"))[1], [1])
    ds3 = load_dataset(tmp_path, format="label-images", class_map={1: "cell"})
    with pytest.raises(DataError, match=r"y\.tif: label value 9 has no class"):
        ds3.load_mask(paths.index("y.png"))


# --------------------------------------------------------------------------- YOLO


def _yolo_fixture(root: Path, names_file: str = "yaml") -> None:
    _image(root / "images" / "train" / "a.png", 20, 40)
    _image(root / "images" / "train" / "b.png", 10, 10)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0 0 0.25 0 0.25 0.5 0 0.5\n"
        "1 0.5 0.5 0.75 0.5 0.75 1 0.5 1\n"
        "0 0.5 0.5 0.2 0.2\n"
        "5 0 0 0.1 0 0.1 0.1\n"
        "\n"
    )
    if names_file == "yaml":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: person\n  1: car\n")
    else:
        (root / "classes.txt").write_text("person\ncar\n")


@pytest.mark.parametrize("names_file", ["yaml", "txt"])
def test_yolo_polygons_normalised_coordinates(tmp_path: Path, names_file: str) -> None:
    _yolo_fixture(tmp_path, names_file)
    assert detect_format(tmp_path) == "yolo"
    ds = load_dataset(tmp_path, split="train")
    assert ds.class_names == ["BG", "person", "car"]
    masks, ids = ds.load_mask(0)
    np.testing.assert_array_equal(ids, [1, 2])
    np.testing.assert_array_equal(masks[:, :, 0], _box(20, 40, 0, 10, 0, 10))
    np.testing.assert_array_equal(masks[:, :, 1], _box(20, 40, 10, 20, 20, 30))
    assert ds.load_mask(1)[0].shape == (10, 10, 0)
    assert _kinds(ds) == ["unknown_class", "unlabelled_image", "unsupported_shape"]
    assert {p["instance"] for p in ds.problems if p["instance"]} == {"line 3", "line 4"}


# --------------------------------------------------------------------------- detection and options


def test_detect_format_and_load_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        detect_format(tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg and all(f in msg for f in FORMATS) and "--format" in msg
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "nothing")
    _image(tmp_path / "v" / "a.png", 8, 8)
    _write_json(tmp_path / "v" / "v.json", {"a": {"filename": "a.png", "regions": []}})
    with pytest.raises(DataError, match=r"format 'via' has no option 'class_ids'; its options are: image_dir"):
        load_dataset(tmp_path / "v", class_ids=[1])
    with pytest.raises(DataError, match=r"unknown format 'pascal'; choose one of coco, via"):
        load_dataset(tmp_path / "v", format="pascal")


# --------------------------------------------------------------------------- COCO round trip


def _assert_same(a: Dataset, b: Dataset, images: bool = True) -> None:
    assert a.class_names == b.class_names and a.num_images == b.num_images
    for i in a.image_ids:
        (ma, ca), (mb, cb) = a.load_mask(i), b.load_mask(i)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)
        ia, ib = a.load_ignore_mask(i), b.load_ignore_mask(i)
        assert (ia is None or not ia.any()) == (ib is None or not ib.any())
        if ia is not None and ia.any():
            np.testing.assert_array_equal(ia, ib)
        if images:
            np.testing.assert_array_equal(a.load_image(i), b.load_image(i))


def _build_all_formats(tmp: Path) -> dict[str, tuple[Path, dict]]:
    coco, _ = _coco_fixture(tmp / "coco")
    _image(tmp / "via" / "b1.png", 30, 40)
    regions, _ = _via_regions(30, 40)
    _write_json(tmp / "via" / "v.json", {"k": {"filename": "b1.png", "regions": regions[:4]}})
    _image(tmp / "labelme" / "a.png", 12, 14)
    _write_json(tmp / "labelme" / "a.json", {"shapes": [
        {"label": "p", "points": [[1, 1], [9, 1], [5, 8]], "shape_type": "polygon", "group_id": None},
        {"label": "__ignore__", "points": [[10, 0], [14, 4]], "shape_type": "rectangle", "group_id": None}],
        "imagePath": "a.png", "imageHeight": 12, "imageWidth": 14})
    _dsb_fixture(tmp / "dsb")
    _yolo_fixture(tmp / "yolo")
    return {"coco": (coco, {}), "via": (tmp / "via" / "v.json", {"class_attribute": "type"}),
            "labelme": (tmp / "labelme", {}), "instance-masks": (tmp / "dsb", {}), "yolo": (tmp / "yolo", {})}


def test_every_format_round_trips_through_coco_json(tmp_path: Path) -> None:
    for fmt, (src, options) in _build_all_formats(tmp_path / "src").items():
        ds = load_dataset(src, fmt, **options)
        out = tmp_path / "out" / fmt / "gt.json"
        out.parent.mkdir(parents=True)
        coco = write_coco(ds, out)
        assert not list(out.parent.glob(".*tmp")), "temporary file left behind"
        assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
        assert all(Path(i["file_name"]).is_absolute() for i in coco["images"])  # images outside out/
        back = load_dataset(out)
        assert isinstance(back, CocoDataset) and back.problems == [], fmt
        # drop_alpha belongs to the instance-masks loader: the COCO file points at the RGBA files
        _assert_same(ds, back, images=fmt != "instance-masks")


def test_dataset_to_coco_fields(tmp_path: Path) -> None:
    file, exp = _coco_fixture(tmp_path)
    ds = load_dataset(file)
    coco = dataset_to_coco(ds)
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "unused"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert coco["images"][0] == {"id": 0, "file_name": str(tmp_path / "a.png").replace("\\", "/"), "width": 40, "height": 30}
    inst = [a for a in coco["annotations"] if not a["iscrowd"]]
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert [a["area"] for a in inst] == [100.0, 40.0, 15.0, 40.0]
    assert inst[1]["bbox"] == [30.0, 20.0, 8.0, 5.0] and inst[1]["category_id"] == 2
    assert isinstance(inst[0]["segmentation"]["counts"], str)
    assert len(crowd) == 1 and crowd[0]["category_id"] == 1 and crowd[0]["area"] == 30.0
    json.dumps(coco)  # JSON-serialisable as is
    sub = dataset_to_coco(ds, image_ids=[1])
    assert [i["id"] for i in sub["images"]] == [1] and sub["annotations"] == []


def test_unclassed_ignore_region_is_written_for_every_category(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", 10, 10)
    shapes = [{"label": "a", "points": [[0, 0], [4, 4]], "shape_type": "rectangle"},
              {"label": "b", "points": [[5, 5], [9, 9]], "shape_type": "rectangle"},
              {"label": "__ignore__", "points": [[0, 6], [3, 10]], "shape_type": "rectangle"}]
    _write_json(tmp_path / "a.json", {"shapes": shapes, "imagePath": "a.png", "imageHeight": 10, "imageWidth": 10})
    coco = dataset_to_coco(load_dataset(tmp_path / "a.json", format="labelme"))
    crowd = [a for a in coco["annotations"] if a["iscrowd"]]
    assert sorted(a["category_id"] for a in crowd) == [1, 2] and all(a["area"] == 12.0 for a in crowd)


# --------------------------------------------------------------------------- command


def test_convert_command_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "yolo"
    _yolo_fixture(src)
    parser = argparse.ArgumentParser(prog="maskrcnn")
    convert_cmd.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "gt.json"
    args = parser.parse_args(["convert", str(src), "--out", str(out), "--format", "yolo", "--option", "split=train"])
    assert convert_cmd.run(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: 2 images, 2 instances, 2 classes (person, car); 3 problems skipped")
    assert "\n" not in line
    data = json.loads(out.read_text())
    assert len(data["images"]) == 2 and data["images"][0]["file_name"] == "yolo/images/train/a.png"
    bad = parser.parse_args(["convert", str(src), "--out", str(out), "--option", "nonsense"])
    with pytest.raises(DataError, match="expected KEY=VALUE"):
        convert_cmd.run(bad)


# --------------------------------------------------------------------------- the shared nuclei set


@pytest.mark.skipif(not NUCLEI.is_dir(), reason="shared nuclei data not present")
def test_nuclei_train_loads_as_instance_mask_folders() -> None:
    ds = load_dataset(NUCLEI)
    assert isinstance(ds, InstanceMaskDataset) and ds.problems == []
    assert ds.num_images == 128
    assert sum(len(info["mask_paths"]) for info in ds.image_info) == 5659
    for i in (0, 1, 2):
        masks, ids = ds.load_mask(i)
        image = ds.load_image(i)
        assert masks.shape[2] == len(ds.image_info[i]["mask_paths"]) == len(ids) > 0
        assert image.shape == masks.shape[:2] + (3,) and image.dtype == np.uint8
        assert masks.sum(axis=2).max() == 1  # nuclei of one image do not overlap
        assert masks.reshape(-1, masks.shape[2]).any(axis=0).all()  # no empty mask

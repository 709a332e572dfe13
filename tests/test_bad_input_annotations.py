"""Malformed annotations in every format end in a one-line error or a reported skip.

Each case writes a tiny dataset (one 32x24 image) with one defect and states what must happen:

* ``error``: the whole file is unusable; ``load_dataset`` raises a one-line ``DataError`` and
  ``maskrcnn check-data`` exits 2 with one ``error:`` line, both naming the file and the fix;
* ``skip``: loading goes on; ``dataset.problems`` holds one entry of the expected kind whose
  message names the file, the annotation and what was done, and ``check-data`` lists it (exit 1
  when the kind is an error: annotated data was lost).

Then ``convert`` and ``train`` report what they dropped, and a polygon at 1e12 (which crashed
pycocotools with signal 11) runs through check-data, convert and train in child processes.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from _bad_input import assert_clean_error, assert_one_line_error, run_cli, run_cli_subprocess
from maskrcnn.data.formats import load_dataset
from maskrcnn.data.problems import severity_of, summary_lines
from maskrcnn.errors import DataError

H, W = 24, 32
SQUARE = [2, 2, 20, 2, 20, 20, 2, 20]


def _image(path: Path, h: int = H, w: int = W, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- builders


def coco(ann: dict[str, Any] | None = None, image: dict[str, Any] | None = None, raw: str | None = None,
         drop: tuple[str, ...] = (), **top: Any) -> Callable[[Path], Path]:
    """A COCO file ``c.json`` next to ``a.png``: one image, annotation 7 of category 1, changed as given."""

    def build(tmp: Path) -> Path:
        _image(tmp / "a.png")
        file = tmp / "c.json"
        if raw is not None:
            file.write_text(raw)
            return file
        a = {"id": 7, "image_id": 1, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0, **(ann or {})}
        data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H, **(image or {})}],
                "annotations": [a], "categories": [{"id": 1, "name": "cell"}], **top}
        for key in drop:
            data.pop(key)
        file.write_text(json.dumps(data))
        return file

    return build


def via(region: Any = None, entry: dict[str, Any] | None = None, raw: Any = None, drop_regions: bool = False,
        **attributes: Any) -> Callable[[Path], Path]:
    """A VIA 2 export ``via.json`` next to ``a.png`` with one region (a square polygon unless given)."""

    def build(tmp: Path) -> Path:
        _image(tmp / "a.png")
        file = tmp / "via.json"
        if raw is not None:
            file.write_text(raw if isinstance(raw, str) else json.dumps(raw))
            return file
        reg = region if region is not None else {
            "shape_attributes": {"name": "polygon", "all_points_x": [2, 20, 20, 2], "all_points_y": [2, 2, 20, 20]},
            "region_attributes": {}}
        e = {"filename": "a.png", "size": 100, "regions": [reg], "file_attributes": {}, **(entry or {})}
        if drop_regions:
            e.pop("regions")
        data: Any = {"a.png100": e}
        if attributes:
            data = {"_via_settings": {}, "_via_img_metadata": data, **attributes}
        file.write_text(json.dumps(data))
        return file

    return build


def labelme(shape: dict[str, Any] | None = None, doc: dict[str, Any] | None = None, with_image: bool = True,
            extra_raw: str | None = None) -> Callable[[Path], Path]:
    """A folder with ``a.json`` (LabelMe, one shape) and ``a.png``; ``extra_raw``: a second file ``b.json``."""

    def build(tmp: Path) -> Path:
        root = tmp / "lm"
        root.mkdir()
        if with_image:
            _image(root / "a.png")
        s = {"label": "cell", "points": [[2, 2], [20, 2], [20, 20], [2, 20]], "shape_type": "polygon",
             "group_id": None, **(shape or {})}
        data = {"version": "5.0.1", "shapes": [s], "imagePath": "a.png", "imageData": None,
                "imageHeight": H, "imageWidth": W, **(doc or {})}
        (root / "a.json").write_text(json.dumps(data))
        if extra_raw is not None:
            (root / "b.json").write_text(extra_raw)
        return root

    return build


def yolo(line: str | bytes, yaml: str | None = None) -> Callable[[Path], Path]:
    """``images/a.png`` + ``labels/a.txt`` holding ``line``; one class named in classes.txt."""

    def build(tmp: Path) -> Path:
        root = tmp / "yolo"
        _image(root / "images" / "a.png")
        (root / "labels").mkdir()
        label = root / "labels" / "a.txt"
        label.write_bytes(line if isinstance(line, bytes) else line.encode())
        if yaml is not None:
            (root / "data.yaml").write_text(yaml)
        else:
            (root / "classes.txt").write_text("cell\n")
        return root

    return build


def masks(mask_bytes: bytes | None = None, mask_size: tuple[int, int] | None = None,
          image_bytes: bytes | None = None) -> Callable[[Path], Path]:
    """DSB layout ``ds/s1/images/s1.png`` + ``masks/m1.png`` (a square), the mask or image replaced as given."""

    def build(tmp: Path) -> Path:
        root = tmp / "ds"
        img = _image(root / "s1" / "images" / "s1.png")
        if image_bytes is not None:
            img.write_bytes(image_bytes)
        (root / "s1" / "masks").mkdir()
        h, w = mask_size or (H, W)
        m = np.zeros((h, w), dtype=np.uint8)
        m[2:10, 2:10] = 255
        mfile = root / "s1" / "masks" / "m1.png"
        Image.fromarray(m).save(mfile)
        if mask_bytes is not None:
            mfile.write_bytes(mask_bytes)
        return root

    return build


def labels(sidecar: str | None = None, label_size: tuple[int, int] | None = None) -> Callable[[Path], Path]:
    """``lab/images/a.png`` + ``lab/labels/a.png`` (two instances), an optional sidecar ``labels/a.json``."""

    def build(tmp: Path) -> Path:
        root = tmp / "lab"
        _image(root / "images" / "a.png")
        (root / "labels").mkdir()
        lab = np.zeros(label_size or (H, W), dtype=np.uint8)
        lab[2:8, 2:8], lab[10:16, 10:16] = 1, 2
        Image.fromarray(lab).save(root / "labels" / "a.png")
        if sidecar is not None:
            (root / "labels" / "a.json").write_text(sidecar)
        return root

    return build


def _deep(n: int = 100_000) -> str:
    return '{"images": ' + "[" * n + "]" * n + "}"


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One malformed input: ``outcome`` "error" (fragments of the one-line message) or "skip"
    (``kind`` of the recorded problem, fragments of its message)."""

    build: Callable[[Path], Path]
    outcome: str
    fragments: tuple[str, ...]
    kind: str | None = None
    format: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def error(build: Callable[[Path], Path], *fragments: str, format: str | None = None, **options: Any) -> Case:
    return Case(build, "error", fragments, None, format, options)


def skip(build: Callable[[Path], Path], kind: str, *fragments: str, format: str | None = None, **options: Any) -> Case:
    return Case(build, "skip", fragments, kind, format, options)


ANN = ("c.json", "annotation 7")  # every COCO annotation message names the file and the annotation

CASES: dict[str, Case] = {
    # ---- COCO: the whole file is unusable
    "coco-invalid-json": error(coco(raw='{"images": [1, 2'), "c.json", "not valid JSON", "re-export", format="coco"),
    "coco-binary": error(coco(raw="\x00\x9c\x01garbage"), "c.json", "not valid JSON", format="coco"),
    "coco-nested-100k": error(coco(raw=_deep()), "c.json", "nested too deeply", "re-export", format="coco"),
    "coco-top-level-list": error(coco(raw="[1, 2, 3]"), "c.json", "no 'images' list", "pass a COCO", format="coco"),
    "coco-images-missing": error(coco(drop=("images",)), "c.json", "no 'images' list", format="coco"),
    "coco-categories-missing": error(coco(drop=("categories",)), "c.json", "no 'categories'", "add the categories"),
    "coco-category-id-string": error(coco(categories=[{"id": "1", "name": "cell"}]), "c.json", "categories[0]",
                                     "integer 'id'", "fix the category list"),
    "coco-category-id-zero": error(coco(categories=[{"id": 0, "name": "cell"}]), "c.json", "ids must be >= 1"),
    "coco-category-duplicate": error(coco(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]), "c.json",
                                     "listed twice", "own id"),
    "coco-annotations-dict": error(coco(annotations={"id": 7}), "c.json", "'annotations' must be a list", "fix the file"),
    "coco-class-ids-option": error(coco(), "class_ids", "list of integer", format="coco", class_ids="1"),
    "coco-class-names-option": error(labelme(), "class_names", "list of names", format="labelme", class_names=5),
    # ---- COCO: one annotation or image is skipped (or repaired)
    "coco-seg-list-of-dicts": skip(coco({"segmentation": [{"x": 1}]}), "invalid_annotation", *ANN, "polygon", "skipped"),
    "coco-seg-dict-of-lists": skip(coco({"segmentation": {"counts": [[1]], "size": [[1], [2]]}}), "invalid_annotation",
                                   *ANN, "not [height, width]", "re-export"),
    "coco-seg-dict-no-counts": skip(coco({"segmentation": {"a": [1, 2]}}), "invalid_annotation", *ANN,
                                    "must be polygons", "RLE"),
    "coco-seg-string": skip(coco({"segmentation": "abc"}), "invalid_annotation", *ANN, "must be polygons"),
    "coco-seg-missing": skip(coco({"segmentation": None}), "no_mask", *ANN, "needs masks"),
    "coco-category-as-string": skip(coco({"category_id": "1"}), "unknown_class", *ANN, "category ids are integers: write 1"),
    "coco-category-as-list": skip(coco({"category_id": [1]}), "unknown_class", *ANN, "fix the id"),
    "coco-category-undeclared": skip(coco({"category_id": 5}), "unknown_class", *ANN, "category_id 5", "add the category"),
    "coco-rle-garbage": skip(coco({"segmentation": {"size": [H, W], "counts": "zz!!~~"}}), "invalid_annotation", *ANN,
                             "compressed RLE counts are invalid"),
    "coco-rle-non-ascii": skip(coco({"segmentation": {"size": [H, W], "counts": "é☃"}}), "invalid_annotation", *ANN,
                               "compressed RLE"),
    "coco-rle-overflow": skip(coco({"segmentation": {"size": [H, W], "counts": [2 ** 40, 5]}}), "invalid_annotation",
                              *ANN, "out of range"),
    "coco-rle-negative": skip(coco({"segmentation": {"size": [H, W], "counts": [-5, H * W + 5]}}), "invalid_annotation",
                              *ANN, "out of range"),
    "coco-rle-wrong-sum": skip(coco({"segmentation": {"size": [H, W], "counts": [5, 5]}}), "invalid_annotation", *ANN,
                               "sum to 10", f"height*width={H * W}"),
    "coco-rle-float-counts": skip(coco({"segmentation": {"size": [H, W], "counts": [1e12, 5]}}), "invalid_annotation",
                                  *ANN, "must be integers"),
    "coco-rle-string-counts-in-list": skip(coco({"segmentation": {"size": [H, W], "counts": ["x", 5]}}),
                                           "invalid_annotation", *ANN, "must be integers"),
    "coco-rle-counts-int": skip(coco({"segmentation": {"size": [H, W], "counts": 5}}), "invalid_annotation", *ANN,
                                "string or a list"),
    "coco-rle-size-mismatch": skip(coco({"segmentation": {"size": [10, 10], "counts": [100]}}), "mask_size_mismatch",
                                   *ANN, "[24, 32]", "re-export"),
    "coco-polygon-nan": skip(coco(raw=None, ann={"segmentation": [[2, 2, float("nan"), 2, 20, 20]]}),
                             "invalid_annotation", *ANN, "NaN or infinity"),
    "coco-polygon-odd": skip(coco({"segmentation": [[2, 2, 20, 2, 20]]}), "invalid_annotation", *ANN, "odd number"),
    "coco-polygon-two-points": skip(coco({"segmentation": [[2, 2, 20, 20]]}), "degenerate_polygon", *ANN, "at least 3"),
    "coco-polygon-outside": skip(coco({"segmentation": [[100, 100, 140, 100, 140, 140]]}), "outside_image", *ANN,
                                 "outside the 32x24 image", "skipped"),
    "coco-polygon-1e12": skip(coco({"segmentation": [[1, 1, 1e12, 1, 1e12, 1e12]]}), "out_of_bounds", *ANN, "clipped"),
    "coco-polygon-negative": skip(coco({"segmentation": [[-50, -50, 20, -50, 20, 20]]}), "out_of_bounds", *ANN, "clipped"),
    "coco-iscrowd-string": skip(coco({"iscrowd": "z"}), "invalid_annotation", *ANN, "0 or 1"),
    "coco-bbox-string": skip(coco({"bbox": "x"}), "ignored_field", *ANN, "'bbox'", "computed from the mask"),
    "coco-area-list": skip(coco({"area": [1]}), "ignored_field", *ANN, "'area'", "ignored"),
    "coco-image-id-list": skip(coco(image={"id": [1]}), "invalid_annotation", "c.json", "images[0]", "must be an integer"),
    "coco-image-file-name-int": skip(coco(image={"file_name": 5}), "invalid_annotation", "c.json", "images[0]",
                                     "file_name a string"),
    "coco-image-without-file-name": skip(coco(image={"file_name": ""}), "invalid_annotation", "c.json", "images[0]",
                                         "no 'id' or 'file_name'"),
    "coco-duplicate-image-id": skip(coco(images=[{"id": 1, "file_name": "a.png", "width": W, "height": H}] * 2),
                                    "duplicate_image", "c.json", "image id 1", "listed twice"),
    "coco-annotation-unknown-image": skip(coco({"image_id": 99}), "unknown_image", *ANN, "image id 99", "fix image_id"),
    "coco-annotation-image-id-list": skip(coco({"image_id": [1]}), "unknown_image", *ANN, "fix image_id"),
    "coco-annotation-not-object": skip(coco(annotations=[5]), "invalid_annotation", "c.json", "annotations[0]",
                                       "not an object"),
    "coco-no-annotations": skip(coco(drop=("annotations",)), "no_annotations", "c.json", "background-only"),
    "coco-wrong-width": skip(coco(image={"width": 50}), "size_mismatch", "c.json", "a.png", "fix width/height"),
    "coco-image-missing-file": skip(coco(image={"file_name": "nope.png"}), "missing_image", "c.json", "nope.png",
                                    "fix the path"),
    # ---- VIA
    "via-3-project": error(via(raw={"project": {}, "file": {}, "metadata": {}}), "via.json", "VIA 3", "export it as COCO",
                           format="via"),
    "via-empty": error(via(raw={}), "via.json", "lists no images", format="via"),
    "via-nested-100k": error(via(raw=_deep()), "via.json", "nested too deeply", format="via"),
    "via-not-via": error(via(raw=[1, 2]), "via.json", "not a VIA", "export annotations as JSON", format="via"),
    "via-regions-missing": skip(via(drop_regions=True), "invalid_annotation", "via.json", "a.png", "no 'regions'",
                                '"regions": []', format="via"),
    "via-regions-int": skip(via(entry={"regions": 5}), "invalid_annotation", "via.json", "a.png", "neither a list"),
    "via-filename-list": skip(via(entry={"filename": ["a.png"]}), "invalid_annotation", "via.json", "no 'filename'"),
    "via-polygon-lengths": skip(via({"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, 3],
                                                          "all_points_y": [1, 2]}}),
                                "invalid_annotation", "via.json", "a.png region 0", "all_points_x has 3"),
    "via-polygon-strings": skip(via({"shape_attributes": {"name": "polygon", "all_points_x": ["a", "b", "c"],
                                                          "all_points_y": [1, 2, 3]}}),
                                "invalid_annotation", "via.json", "a.png region 0", "not numbers"),
    "via-circle-nan": skip(via(raw=None, region={"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": float("nan")}}),
                           "invalid_annotation", "via.json", "a.png region 0", "NaN or infinity"),
    "via-rect-strings": skip(via({"shape_attributes": {"name": "rect", "x": "a", "y": 1, "width": 5, "height": 5}}),
                             "invalid_annotation", "via.json", "a.png region 0", "not numbers"),
    "via-ellipse-infinite": skip(via(raw=None, region={"shape_attributes": {"name": "ellipse", "cx": 5, "cy": 5,
                                                                            "rx": float("inf"), "ry": 3}}),
                                 "invalid_annotation", "via.json", "region 0", "NaN or infinity"),
    "via-polygon-outside": skip(via({"shape_attributes": {"name": "polygon", "all_points_x": [100, 140, 140],
                                                          "all_points_y": [100, 100, 140]}}),
                                "outside_image", "via.json", "a.png region 0", "skipped"),
    "via-point": skip(via({"shape_attributes": {"name": "point", "cx": 3, "cy": 3}}), "unsupported_shape", "via.json",
                      "region 0", "use polygon"),
    "via-shape-name-list": skip(via({"shape_attributes": {"name": ["rect"]}}), "unsupported_shape", "via.json",
                                "region 0", "no area"),
    "via-no-shape-attributes": skip(via({"region_attributes": {}}), "invalid_annotation", "via.json", "region 0",
                                    "no 'shape_attributes'"),
    "via-region-not-object": skip(via(5), "invalid_annotation", "via.json", "region 0", "no 'shape_attributes'"),
    "via-class-missing": skip(via(), "missing_class", "via.json", "region 0", "set its class", class_attribute="name"),
    "via-attributes-list": skip(via(_via_attributes=[1, 2]), "missing_class", "via.json", "region 0",
                                class_attribute="name"),
    # ---- LabelMe
    "labelme-imagedata-not-base64": skip(labelme(doc={"imageData": "%%%not base64%%%"}, with_image=False),
                                         "unreadable_image", "a.json", "imageData", "skipped"),
    "labelme-imagedata-not-image": skip(labelme(doc={"imageData": base64.b64encode(b"hello world").decode()},
                                                with_image=False), "unreadable_image", "a.json", "imageData"),
    "labelme-imagedata-number": skip(labelme(doc={"imageData": 5}, with_image=False), "unreadable_image", "a.json",
                                     "imageData"),
    "labelme-points-nan": skip(labelme(shape={"shape_type": "rectangle", "points": [[1, 1], [float("nan"), 5]]}),
                               "invalid_annotation", "a.json", "shape 0", "NaN or infinity"),
    "labelme-points-flat": skip(labelme(shape={"points": [1, 2, 3, 4, 5, 6]}), "invalid_annotation", "a.json", "shape 0",
                                "[[x, y], ...]"),
    "labelme-circle-infinite": skip(labelme(shape={"shape_type": "circle", "points": [[5, 5], [1e400, 5]]}),
                                    "invalid_annotation", "a.json", "shape 0", "NaN or infinity"),
    "labelme-group-id-list": skip(labelme(shape={"group_id": [1]}), "invalid_annotation", "a.json", "shape 0", "group_id"),
    "labelme-mask-not-png": skip(labelme(shape={"shape_type": "mask", "points": [[1, 1], [5, 5]], "mask": "bm90IGEgcG5n"}),
                                 "invalid_annotation", "a.json", "shape 0", "'mask' is not a base64 PNG"),
    "labelme-outside": skip(labelme(shape={"points": [[100, 100], [140, 100], [140, 140]]}), "outside_image", "a.json",
                            "shape 0", "skipped"),
    "labelme-shape-not-object": skip(labelme(doc={"shapes": ["x"]}), "invalid_annotation", "a.json", "shape 0",
                                     "not an object"),
    "labelme-line": skip(labelme(shape={"shape_type": "line", "points": [[1, 1], [5, 5]]}), "unsupported_shape",
                         "a.json", "shape 0", "no area"),
    "labelme-broken-second-file": skip(labelme(extra_raw="{not json"), "invalid_annotation", "b.json", "not valid JSON",
                                       "skipped"),
    "labelme-nested-second-file": skip(labelme(extra_raw=_deep()), "invalid_annotation", "b.json", "nested too deeply"),
    # ---- YOLO
    "yolo-two-points": skip(yolo("0 0.1 0.1 0.5 0.5\n"), "unsupported_shape", "a.txt", "line 1", "at least 3 points"),
    "yolo-odd-coordinates": skip(yolo("0 0.1 0.1 0.5 0.5 0.9\n"), "invalid_annotation", "a.txt", "line 1", "even"),
    "yolo-one-point": skip(yolo("0 0.1 0.1\n"), "degenerate_polygon", "a.txt", "line 1", "at least 6"),
    "yolo-class-nan": skip(yolo("nan 0.1 0.1 0.5 0.1 0.5 0.5\n"), "invalid_annotation", "a.txt", "line 1",
                           "not a class index"),
    "yolo-class-huge": skip(yolo("1e400 0.1 0.1 0.5 0.1 0.5 0.5\n"), "invalid_annotation", "a.txt", "line 1",
                            "not a class index"),
    "yolo-class-fraction": skip(yolo("0.5 0.1 0.1 0.5 0.1 0.5 0.5\n"), "invalid_annotation", "a.txt", "not a class index"),
    "yolo-text": skip(yolo("cell a b c d e f\n"), "invalid_annotation", "a.txt", "line 1", "not numbers"),
    "yolo-coordinates-nan": skip(yolo("0 0.1 nan 0.5 0.1 0.5 0.5\n"), "invalid_annotation", "a.txt", "line 1",
                                 "NaN or infinity"),
    "yolo-outside": skip(yolo("0 2 2 3 2 3 3\n"), "outside_image", "a.txt", "line 1", "skipped"),
    "yolo-unknown-class": skip(yolo("5 0.1 0.1 0.5 0.1 0.5 0.5\n"), "unknown_class", "a.txt", "line 1", "class 5"),
    "yolo-binary-labels": skip(yolo(b"\xff\xfe\x00\x9c"), "invalid_annotation", "a.txt", "cannot be read"),
    "yolo-broken-yaml": error(yolo("0 0.1 0.1 0.5 0.1 0.5 0.5\n", yaml="names: [a, b\n  : :"), "data.yaml",
                              "not valid YAML", "fix it"),
    # ---- mask folders (Kaggle DSB) and label images
    "masks-mask-not-image": skip(masks(mask_bytes=b"not a png at all"), "unreadable_mask", "m1.png", "skipped"),
    "masks-mask-wrong-size": skip(masks(mask_size=(10, 12)), "mask_size_mismatch", "m1.png", "s1.png",
                                  "re-export the mask"),
    "masks-image-unreadable": skip(masks(image_bytes=b"\x89PNG\r\n\x1a\n garbage"), "unreadable_image", "s1.png",
                                   "skipped"),
    "labels-sidecar-nested": skip(labels(sidecar=_deep(5000).replace('"images": ', '"1": ')), "invalid_annotation",
                                  "a.json", "nested too deeply"),
    "labels-sidecar-list": skip(labels(sidecar="[1, 2]"), "invalid_annotation", "a.json", "it is ignored"),
    "labels-sidecar-keys": skip(labels(sidecar='{"x": "cell"}'), "invalid_annotation", "a.json", "it is ignored"),
    "labels-wrong-size": skip(labels(label_size=(10, 10)), "mask_size_mismatch", "a.png", "the image is skipped"),
    "labels-class-map-option": error(labels(), "class_map", "label values", format="label-images",
                                     class_map=["cell"]),
}


def _source(case: Case, tmp_path: Path) -> Path:
    return case.build(tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_loader_api(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    src = _source(case, tmp_path)
    if case.outcome == "error":
        with pytest.raises(DataError) as info:
            load_dataset(src, format=case.format, **case.options)
        assert_one_line_error(info, *case.fragments)
        return
    ds = load_dataset(src, format=case.format, **case.options)
    hits = [p for p in ds.problems if p["kind"] == case.kind]
    assert hits, f"no {case.kind} problem in {ds.problems}"
    message = hits[0]["message"]
    assert "\n" not in message and "Traceback" not in message
    for fragment in case.fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    # what was skipped is really gone: masks load, and no instance has an empty mask
    for image_id in ds.image_ids:
        m, ids = ds.load_mask(int(image_id))
        assert m.shape[2] == len(ids) and (m.shape[2] == 0 or m.any(axis=(0, 1)).all())


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.options])  # check-data takes no loader options
def test_check_data_cli(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    src = _source(case, tmp_path)
    argv = ["check-data", src, "--max-per-kind", "50"] + (["--format", case.format] if case.format else [])
    result = run_cli(*argv)
    if case.outcome == "error":
        assert_clean_error(result, *case.fragments)
        return
    assert "Traceback" not in result.err and result.code in (0, 1), result.err
    lines = [ln for ln in result.out.splitlines() if case.kind in ln]
    assert lines, result.out
    severity = severity_of(next(p for p in load_dataset(src, format=case.format).problems if p["kind"] == case.kind))
    if severity == "error":
        assert result.code == 1 and "FAILED" in result.out
    assert any(ln.startswith(severity) and all(f.lower() in ln.lower() for f in case.fragments) for ln in lines), lines


def test_at_least_sixty_cases_across_every_format() -> None:
    prefixes = {name.split("-")[0] for name in CASES}
    assert len(CASES) >= 60 and prefixes == {"coco", "via", "labelme", "yolo", "masks", "labels"}


# ----------------------------------------------------------------------------- convert


def _convert(src: Path, out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    result = run_cli("convert", src, "--out", out, *extra)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    return json.loads(out.read_text()), result.err


def test_convert_drops_and_reports_polygons_outside_and_empty_masks(tmp_path: Path) -> None:
    # VIA: region 1 lies outside the image, region 2 is a sliver between pixel centres (empty mask)
    _image(tmp_path / "a.png")
    region = lambda xs, ys: {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},  # noqa: E731
                             "region_attributes": {}}
    data = {"a": {"filename": "a.png", "size": 1, "regions": [
        region([2, 20, 20, 2], [2, 2, 20, 20]), region([100, 140, 140], [100, 100, 140]),
        region([2.1, 2.3, 2.2], [2.1, 2.1, 2.3])]}}
    (tmp_path / "via.json").write_text(json.dumps(data))
    coco_out, err = _convert(tmp_path / "via.json", tmp_path / "out.json")
    assert len(coco_out["annotations"]) == 1 and coco_out["annotations"][0]["area"] == 18 * 18
    assert "outside_image 1" in err and "empty_mask 1" in err
    assert "a.png region 1" in err and "a.png region 2" in err and "not written" in err


def test_convert_yolo_outside_and_empty_mask_file(tmp_path: Path) -> None:
    root = yolo("0 0.1 0.1 0.5 0.1 0.5 0.5\n0 2 2 3 2 3 3\n")(tmp_path)
    coco_out, err = _convert(root, tmp_path / "y.json")
    assert len(coco_out["annotations"]) == 1 and "outside_image 1" in err and "line 2" in err

    ds = masks()(tmp_path)
    Image.fromarray(np.zeros((H, W), dtype=np.uint8)).save(ds / "s1" / "masks" / "m0_empty.png")
    coco_out, err = _convert(ds, tmp_path / "m.json")
    assert len(coco_out["annotations"]) == 1 and coco_out["annotations"][0]["area"] == 64
    assert "empty_mask 1" in err and "m0_empty.png" in err


def test_convert_reports_undeclared_category_and_keeps_the_rest(tmp_path: Path) -> None:
    src = coco(annotations=[{"id": 7, "image_id": 1, "category_id": 9, "segmentation": [SQUARE], "iscrowd": 0},
                            {"id": 8, "image_id": 1, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0}])(tmp_path)
    coco_out, err = _convert(src, tmp_path / "out.json")
    assert [a["category_id"] for a in coco_out["annotations"]] == [1]
    assert "unknown_class 1" in err and "annotation 7" in err and "category_id 9" in err


def test_dataset_to_coco_skips_images_whose_masks_fail_and_names_them(tmp_path: Path) -> None:
    from maskrcnn.data.convert import dataset_to_coco

    root = masks()(tmp_path)
    (root / "s2" / "images").mkdir(parents=True)
    _image(root / "s2" / "images" / "s2.png", seed=1)
    (root / "s2" / "masks").mkdir()
    (root / "s2" / "masks" / "bad.png").write_bytes(b"not a png")
    ds = load_dataset(root, verify_images=False)  # the bad mask is only found when masks are loaded
    out = dataset_to_coco(ds)
    assert [i["file_name"].endswith("s1.png") for i in out["images"]] == [True]
    (p,) = [p for p in ds.problems if p["kind"] == "unreadable_mask"]
    assert "bad.png" in p["message"] and "not written" in p["message"]


# ----------------------------------------------------------------------------- reports


def test_summary_counts_by_kind_lists_errors_first_and_says_where_the_rest_are(tmp_path: Path) -> None:
    anns = [{"id": 10 + k, "image_id": 1, "category_id": 5, "segmentation": [SQUARE], "iscrowd": 0} for k in range(6)]
    anns.append({"id": 99, "image_id": 1, "category_id": 1, "segmentation": [[-50, 2, 20, 2, 20, 20]], "iscrowd": 0})
    src = coco(annotations=anns)(tmp_path)
    ds = load_dataset(src)
    lines = summary_lines(ds.problems, str(src), limit=3)
    assert lines[0].startswith(f"loading {src}: 7 problems") and "unknown_class 6, out_of_bounds 1" in lines[0]
    assert [ln.split(":")[0].strip() for ln in lines[1:4]] == ["error"] * 3 and "annotation 10" in lines[1]
    assert lines[-1] == f"  ... 4 more: run `maskrcnn check-data {src}` to list them all"
    assert summary_lines([], "x") == []


def test_notes_alone_are_not_reported_as_problems(tmp_path: Path) -> None:
    root = yolo("0 0.1 0.1 0.5 0.1 0.5 0.5\n")(tmp_path)
    _image(root / "images" / "b.png", seed=2)  # no label file: a background image (a note)
    ds = load_dataset(root)
    assert [p["kind"] for p in ds.problems] == ["unlabelled_image"]
    assert summary_lines(ds.problems, "y") == []


def test_strict_mode_raises_the_first_problem_as_one_line(tmp_path: Path) -> None:
    src = coco({"category_id": 5})(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset(src, strict=True)
    assert_one_line_error(info, "c.json", "annotation 7", "strict mode")


# ----------------------------------------------------------------------------- train


def _tiny_config(path: Path, num_classes: int = 2) -> Path:
    from maskrcnn.config import Config

    Config.create(
        name="bad", num_classes=num_classes, backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32,
        mask_head_channels=8, mask_head_convs=1, image_resize_mode="none", image_min_dim=64,
        rpn_anchor_scales=[8, 16, 32, 64, 128], train_rois_per_image=16, pre_nms_limit_training=200,
        post_nms_rois_training=50, pre_nms_limit_inference=100, post_nms_rois_inference=20,
        detection_max_instances=10, images_per_gpu=1, epochs=1, learning_rate=0.01, base_batch_size=1,
        warmup_iters=1, num_workers=0, deterministic=True).to_yaml(path)
    return path


def test_train_prints_what_loading_dropped(tmp_path: Path) -> None:
    anns = [{"id": 7, "image_id": 1, "category_id": 9, "segmentation": [SQUARE], "iscrowd": 0},
            {"id": 8, "image_id": 1, "category_id": 1, "segmentation": [[100, 100, 140, 100, 140, 140]], "iscrowd": 0},
            {"id": 9, "image_id": 1, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0}]
    src = coco(annotations=anns)(tmp_path)
    result = run_cli("train", "--config", _tiny_config(tmp_path / "c.yaml"), "--data", src, "--out", tmp_path / "runs",
                     "--no-progress")
    assert result.code == 0, result.err
    assert f"loading {src}: 2 problems" in result.err
    assert "outside_image 1" in result.err and "unknown_class 1" in result.err
    assert "annotation 7" in result.err and "category_id 9" in result.err and "annotation 8" in result.err


def test_polygon_at_1e12_survives_check_data_convert_and_train(tmp_path: Path) -> None:
    """pycocotools died with signal 11 on it; now it is clipped (and reported) before rasterising."""
    src = coco({"segmentation": [[2, 2, 1e12, 2, 1e12, 1e12, 2, 20]]})(tmp_path)
    checked = run_cli_subprocess("check-data", src, timeout=120)
    assert checked.code == 0, checked.err
    assert "out_of_bounds" in checked.out and "annotation 7" in checked.out and "clipped" in checked.out
    converted = run_cli_subprocess("convert", src, "--out", tmp_path / "out.json", timeout=120)
    assert converted.code == 0, converted.err
    (ann,) = json.loads((tmp_path / "out.json").read_text())["annotations"]
    # the clipped polygon covers, inside the image, what the unclipped one does: x from 2, rows 2.. down to the diagonal
    assert ann["bbox"][:2] == [2.0, 2.0] and ann["bbox"][2] == W - 2 and math.isclose(ann["bbox"][3], H - 2)
    trained = run_cli_subprocess("train", "--config", _tiny_config(tmp_path / "c.yaml"), "--data", src, "--out",
                                 tmp_path / "runs", "--no-progress", timeout=300)
    assert trained.code == 0, trained.err[-2000:]
    assert "out_of_bounds 1" in trained.err and "annotation 7" in trained.err

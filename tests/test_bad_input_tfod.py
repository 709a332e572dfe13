"""Malformed TF Object Detection API inputs end in a one-line error or a reported skip.

* label maps and pipeline.config files that cannot be used: a one-line ``DataError`` /
  ``ConfigError`` naming the file (and line) and the fix; the CLI exits 2 with one ``error:`` line;
* a bad record or object in a TFRecord: loading goes on, ``dataset.problems`` holds one entry of
  the expected kind whose message names the file and the record index, and ``check-data`` lists
  it (exit 1 for an error kind: annotated data was lost).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bad_input import assert_clean_error, assert_one_line_error, run_cli  # noqa: E402
from _pipelines import RESNET101_COSINE  # noqa: E402
from _tfrecord import LABEL_MAP, example, frame, od_example, png, shapes  # noqa: E402

from maskrcnn.compat.tfod.pipeline import config_from_pipeline  # noqa: E402
from maskrcnn.data.formats import load_dataset  # noqa: E402
from maskrcnn.data.problems import severity_of  # noqa: E402
from maskrcnn.config import ConfigError  # noqa: E402
from maskrcnn.errors import DataError  # noqa: E402

H, W = 24, 32


def _truth() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8), shapes(rng, H, W, 2)


def record(label_map: str | None = LABEL_MAP, payload: bytes | None = None, mangle: Callable[[bytes], bytes] | None = None,
           **kw: Any) -> Callable[[Path], Path]:
    """``r.tfrecord`` (+ ``label_map.pbtxt``) holding one good record and then the record under test."""

    def build(tmp: Path) -> Path:
        image, masks = _truth()
        good = od_example(image, masks, labels=[1, 3], filename="good.png")
        args = dict(labels=[1, 3], filename="bad.png")
        args.update(kw)
        bad = payload if payload is not None else od_example(image, masks, **args)
        data = frame(good) + frame(bad)
        file = tmp / "r.tfrecord"
        file.write_bytes(mangle(data) if mangle else data)
        if label_map is not None:
            (tmp / "label_map.pbtxt").write_text(label_map) if isinstance(label_map, str) else \
                (tmp / "label_map.pbtxt").write_bytes(label_map)
        return file

    return build


def _flip(offset_from_end: int) -> Callable[[bytes], bytes]:
    def mangle(data: bytes) -> bytes:
        raw = bytearray(data)
        raw[len(raw) - offset_from_end] ^= 0xFF
        return bytes(raw)

    return mangle


_IMAGE, _MASKS = _truth()


def _gzipped(tmp: Path) -> Path:
    """A GZIP-compressed TFRecord file (TF's TFRecordOptions(compression_type="GZIP"))."""
    (tmp / "label_map.pbtxt").write_text(LABEL_MAP)
    file = tmp / "r.tfrecord"
    file.write_bytes(gzip.compress(frame(example({"a": 1}))))
    return file

# --------------------------------------------------------------------------- whole-file errors

ERRORS = {
    "pbtxt unterminated item": (record(label_map="item { id: 1 name: 'cat' \n"), ["label_map.pbtxt", "never closed"]),
    "pbtxt unterminated string": (record(label_map="item { id: 1 name: 'cat }"), ["label_map.pbtxt", "line 1", "unterminated"]),
    "pbtxt item without id": (record(label_map="item { name: 'cat' }"), ["label_map.pbtxt", "no 'id'", "id: N"]),
    "pbtxt id 0": (record(label_map="item { id: 0 name: 'bg' }"), ["label_map.pbtxt", "reserved", "start at 1"]),
    "pbtxt id not an integer": (record(label_map="item { id: 1.5 name: 'cat' }"), ["label_map.pbtxt", "not an integer"]),
    "pbtxt duplicate id": (record(label_map="item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }"),
                           ["label_map.pbtxt", "line 2", "used twice"]),
    "pbtxt unquoted name": (record(label_map="item { id: 1 name: cat }"), ["label_map.pbtxt", "quoted string"]),
    "pbtxt other top-level field": (record(label_map="items { id: 1 name: 'cat' }"),
                                    ["label_map.pbtxt", "unexpected field", "item"]),
    "pbtxt empty": (record(label_map="# nothing\n"), ["label_map.pbtxt", "no item"]),
    "pbtxt binary": (record(label_map=b"\xff\xfe\x00item"), ["label_map.pbtxt", "not a text file"]),  # type: ignore[arg-type]
    "missing label map": (record(label_map=None), ["r.tfrecord", "label_map.pbtxt", "--option label_map"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_unusable_file_is_one_line_error(case, tmp_path):
    build, fragments = ERRORS[case]
    path = build(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert_one_line_error(err, *fragments)
    assert_clean_error(run_cli("check-data", path), *fragments)


def test_missing_records_path_and_empty_folder(tmp_path):
    assert_clean_error(run_cli("convert", tmp_path / "nope.tfrecord", "--out", tmp_path / "c.json"), "nope.tfrecord", "not found")
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("check-data", tmp_path / "empty", "--format", "tfrecord"), "empty", "no TFRecord files")


# --------------------------------------------------------------------------- reported skips

SKIPS = {
    # name: (builder, kind, fragments of the message, instances kept: the good record's 2 + the bad one's)
    "data checksum": (record(mangle=_flip(10)), "corrupt_record", ["record 1", "data checksum", "skipped"], 2),
    "truncated record": (record(mangle=lambda d: d[:-7]), "corrupt_record", ["record 1", "truncated", "rest of the file"], 2),
    "non-Example payload": (record(payload=b"\x00\x01not a protobuf at all"), "corrupt_record",
                            ["record 1", "not a tf.train.Example"], 2),
    "Example without features": (record(payload=b""), "corrupt_record", ["record 1", "no features"], 2),
    "no image/encoded": (record(drop=["image/encoded"]), "invalid_annotation", ["record 1", "image/encoded"], 2),
    "corrupt image bytes": (record(extra={"image/encoded": b"\x89PNG\r\n\x1a\n garbage"}), "unreadable_image",
                            ["record 1", "bad.png", "skipped"], 2),
    "declared size differs": (record(extra={"image/height": H + 1}), "size_mismatch",
                              ["record 1", f"{W}x{H}", f"{W}x{H + 1}"], 2),
    "label is a float list": (record(extra={"image/object/class/label": [1.0, 3.0]}), "invalid_annotation",
                              ["record 1", "class/label is a float_list", "int64_list"], 2),
    "unknown class label": (record(labels=[1, 9]), "unknown_class", ["record 1 object 1", "class/label 9", "ids 1, 3, 7"], 3),
    "background label 0": (record(labels=[0, 3]), "unknown_class", ["record 1 object 0", "class/label 0", "background"], 3),
    "unknown class text": (record(labels=None, texts=["cat", "cow"]), "unknown_class",
                           ["record 1 object 1", "'cow'", "label map"], 3),
    "label and text counts differ": (record(labels=[1, 3], texts=["cat"]), "invalid_annotation",
                                     ["record 1", "2 class/label", "1 class/text"], 2),
    "objects without a class": (record(labels=None), "missing_class", ["record 1", "class/label or /text"], 2),
    "wrong mask count": (record(extra={"image/object/mask": [png(m.astype(np.uint8) * 255) for m in [*_MASKS, _MASKS[0]]]}),
                         "invalid_annotation", ["record 1", "3 entries for 2 objects"], 2),
    "raw float mask of the wrong length": (record(extra={"image/object/mask": [0.0] * (2 * H * W - 1)}),
                                           "invalid_annotation", ["record 1", f"need 2x{H}x{W}"], 2),
    "mask PNG of another size": (record(extra={"image/object/mask": [png(np.zeros((H, W + 2), np.uint8)),
                                                                     png(_MASKS[1].astype(np.uint8) * 255)]}),
                                 "mask_size_mismatch", ["record 1 object 0", f"{W + 2}x{H}"], 3),
    "mask bytes not an image": (record(extra={"image/object/mask": [b"not a png", png(_MASKS[1].astype(np.uint8) * 255)]}),
                                "unreadable_mask", ["record 1 object 0", "mask"], 3),
    "boxes only": (record(drop=["image/object/mask"]), "no_mask", ["record 1", "object 0", "needs masks"], 2),
    "bbox in pixels, not normalised": (record(boxes=np.array([[2, 2, 20, 20], [0.1, 0.1, 0.5, 0.5]])), "ignored_field",
                                       ["record 1 object 0", "not normalised", "[0, 1]"], 4),
    "bbox xmin > xmax": (record(boxes=np.array([[0.5, 0.1, 0.2, 0.4], [0.1, 0.1, 0.5, 0.5]])), "ignored_field",
                         ["record 1 object 0", "xmin <= xmax"], 4),
    "is_crowd of the wrong length": (record(extra={"image/object/is_crowd": [0]}), "ignored_field",
                                     ["record 1", "is_crowd has 1 values for 2 objects"], 4),
    "gzip-compressed file": (lambda tmp: _gzipped(tmp), "corrupt_record", ["record 0", "gzip", "uncompressed"], 0),
}


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_bad_record_or_object_is_reported_and_skipped(case, tmp_path):
    build, kind, fragments, kept = SKIPS[case]
    path = build(tmp_path)
    ds = load_dataset(path)
    assert {p["kind"] for p in ds.problems} == {kind}, ds.problems
    message = ds.problems[0]["message"]
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    instances = sum(len(info["instances"]) for info in ds.image_info)
    assert instances == kept
    if kept:
        masks, _ = ds.load_mask(0)
        assert np.array_equal(masks.transpose(2, 0, 1), _MASKS)
    result = run_cli("check-data", path)
    assert result.code == (1 if severity_of(ds.problems[0]) == "error" else 0), result.out + result.err
    assert fragments[0] in result.out


# --------------------------------------------------------------------------- pipeline.config

PIPELINE_ERRORS = {
    "syntax error": ("model { faster_rcnn { num_classes 3 } }", ["pipeline.config", "line 1", "expected ':'"]),
    "unclosed message": ("model {\n  faster_rcnn {\n num_classes: 3\n}", ["pipeline.config", "never closed"]),
    "not a pipeline": ("item { id: 1 name: 'cat' }", ["pipeline.config", "not a TF OD API pipeline"]),
    "num_classes a string": ("model { faster_rcnn { num_classes: 'three' } }",
                             ["pipeline.config", "line 1", "num_classes", "not an integer"]),
    "batch size 0": ("train_config { batch_size: 0 }", ["pipeline.config", "batch_size", "at least 1"]),
    "negative anchor scale": ("model { faster_rcnn { first_stage_anchor_generator { grid_anchor_generator "
                              "{ scales: [-1.0] } } } }", ["pipeline.config", "scales", "positive"]),
    "invalid mapped value": ("model { faster_rcnn { first_stage_nms_iou_threshold: 1.5 } }",
                             ["pipeline.config", "rpn_nms_threshold", "--set"]),
    "boolean not true/false": ("model { faster_rcnn { second_stage_box_predictor { mask_rcnn_box_predictor "
                               "{ predict_instance_masks: maybe } } } }", ["pipeline.config", "true or false"]),
}


@pytest.mark.parametrize("case", sorted(PIPELINE_ERRORS))
def test_bad_pipeline_config_is_one_line_error(case, tmp_path):
    text, fragments = PIPELINE_ERRORS[case]
    p = tmp_path / "pipeline.config"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        config_from_pipeline(p)
    assert_one_line_error(err, *fragments)
    assert_clean_error(run_cli("config", "--from-pipeline", p), *fragments)


def test_pipeline_flags(tmp_path):
    assert_clean_error(run_cli("config", "--from-pipeline", tmp_path / "nope.config"), "nope.config", "not found")
    assert_clean_error(run_cli("config", "--num-images", "5"), "--num-images", "--from-pipeline")
    p = tmp_path / "pipeline.config"
    p.write_text(RESNET101_COSINE)
    assert_clean_error(run_cli("config", "--from-pipeline", p, "--set", "epochs=0"), "epochs")


def test_missing_protobuf_names_the_extra(tmp_path, monkeypatch):
    from maskrcnn.compat.tfod import example as ex

    path = record()(tmp_path)
    ex.example_class.cache_clear()
    monkeypatch.setitem(sys.modules, "google.protobuf", None)  # import fails as when it is not installed
    try:
        with pytest.raises(DataError) as err:
            load_dataset(path)
        assert_one_line_error(err, "protobuf", "pip install 'maskrcnn[tfod]'")
    finally:
        ex.example_class.cache_clear()

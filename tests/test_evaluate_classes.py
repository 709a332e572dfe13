"""A model's class ids meet a dataset's category ids by id, else by name (evaluation/classes.py).

The end-to-end cases evaluate a model on a COCO file made of its own detections, which must
score AP 1.0 whatever ids the file uses, through ``evaluate_model`` and ``maskrcnn evaluate``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _bad_input import assert_one_line_error, run_cli
from _evaluate_data import detecting_model, save_model, write_gt, write_images

import maskrcnn
from maskrcnn.data import Dataset
from maskrcnn.data.formats import load_dataset
from maskrcnn.evaluation import EvaluationError, evaluate_model
from maskrcnn.inference.predictor import Predictor
from maskrcnn.evaluation.classes import Category, dataset_categories, describe_match, match_classes
from maskrcnn.weights import COCO_CLASSES

CATS_WITH_GAPS = [(1, "person"), (17, "cat"), (18, "dog"), (44, "bottle")]


# ------------------------------------------------------------------------------- the rule
def cats(*pairs: tuple[int, str], internal: bool = True) -> list[Category]:
    return [Category(i, n, k + 1 if internal else i) for k, (i, n) in enumerate(pairs)]


def test_same_ids_and_names_pair_by_id_and_other_model_classes_are_unscored():
    m = match_classes(COCO_CLASSES, cats(*CATS_WITH_GAPS))
    assert {c: cat.key for c, cat in m.pairs.items()} == {1: 1, 17: 2, 18: 3, 44: 4}
    assert set(m.matched_by.values()) == {"id"}
    assert len(m.unscored) == 80 - 4 and "car" in m.unscored.values() and "N/A" not in m.unscored.values()
    keep, keys = m.select(np.array([17, 3, 44, 12, 17]))  # 3 is 'car', 12 an unused 'N/A' id
    assert keep.tolist() == [True, False, True, False, True] and keys.tolist() == [2, 4, 2]
    summary = m.summary()
    assert summary["dropped_predictions"] == {"car": 1, "class 12": 1}
    assert describe_match(summary) == ("classes: 4 matched by id; 76 model classes are not in the data; 2 predictions of "
                                       "classes not in the data were not scored (car 1, class 12 1)")


def test_shifted_ids_pair_by_name_and_agreeing_ids_stay_by_id():
    # a model trained on a COCO file with gaps has the internal ids 1..3 of its classes
    m = match_classes(["BG", "person", "cat", "bottle"], cats((1, "person"), (17, "Cat"), (44, "bottle")))
    assert {c: cat.id for c, cat in m.pairs.items()} == {1: 1, 2: 17, 3: 44}
    assert m.matched_by == {1: "id", 2: "name", 3: "name"} and not m.unscored
    # same id, other name: the name decides (model 2 'dog' is category 7, not category 2 'cat')
    m = match_classes(["BG", "cat", "dog"], cats((2, "cat"), (7, "dog")))
    assert {c: cat.id for c, cat in m.pairs.items()} == {1: 2, 2: 7}


def test_nameless_model_pairs_by_id_or_by_position_when_it_has_the_dataset_s_class_count():
    m = match_classes([None] * 19, cats((1, "a"), (17, "b")))
    assert {c: cat.key for c, cat in m.pairs.items()} == {1: 1, 17: 2} and len(m.unscored) == 16
    m = match_classes([None] * 4, cats((1, "a"), (3, "b"), (17, "c")))  # trained on the internal ids 1..3
    assert {c: cat.key for c, cat in m.pairs.items()} == {1: 1, 2: 2, 3: 3}
    assert set(m.matched_by.values()) == {"position"}


def test_unmatched_categories_are_one_line_errors_naming_both_sides_and_the_fix():
    with pytest.raises(EvaluationError) as exc:
        match_classes(["BG", "cat", "dog"], cats((1, "kitten"), (9, "zebra")), model="m.safetensors", data="gt.json")
    msg = assert_one_line_error(exc, "gt.json", "1 'kitten'", "9 'zebra'", "m.safetensors", "id 1 is 'cat' in the model",
                                "2 'dog'", "rename")
    assert "1 'cat'" in msg  # listed as a model class without a category
    with pytest.raises(EvaluationError) as exc:
        match_classes([None] * 5, cats((1, "a"), (17, "b")))
    assert_one_line_error(exc, "17 'b'", "class_names")


def test_dataset_categories_use_the_source_ids_only_when_they_are_the_files_own():
    class Two(Dataset):
        def __init__(self, entries):
            super().__init__()
            for source, i, name in entries:
                self.add_class(source, i, name)
            self.prepare()

    assert [(c.id, c.name, c.key) for c in dataset_categories(Two([("coco", 3, "cat"), ("coco", 17, "dog")]))] == \
        [(3, "cat", 1), (17, "dog", 2)]
    # YOLO's 0-based classes and several sources: the internal ids
    assert [c.id for c in dataset_categories(Two([("yolo", 0, "a"), ("yolo", 1, "b")]))] == [1, 2]
    assert [c.id for c in dataset_categories(Two([("x", 1, "a"), ("y", 1, "b")]))] == [1, 2]


# -------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def coco_layout(tmp_path_factory):
    """A 91-class model with COCO's names that detects 'cat' (id 17), its images and detections."""
    root = tmp_path_factory.mktemp("coco_layout")
    model = detecting_model({17: 4.0}, num_classes=91, class_names=list(COCO_CLASSES))
    ck = save_model(model, root / "coco91.safetensors")
    images = write_images(root, 3)
    predictor = maskrcnn.load(str(ck), device="cpu")
    dets = predictor.detect([str(p) for p in images], batch_size=2)
    assert all(len(d) and set(d.class_ids.tolist()) == {17} for d in dets)
    return root, ck, images, predictor, dets


def _aps(report: dict) -> tuple[float, float]:
    return report["coco"]["segm"]["AP"], report["coco"]["bbox"]["AP"]


def test_own_detections_at_coco_ids_with_gaps_score_ap_one(coco_layout):
    root, ck, images, predictor, dets = coco_layout
    gt = write_gt(root / "gaps.json", images, dets, CATS_WITH_GAPS, {17: 17})
    report = evaluate_model(predictor, load_dataset(gt), batch_size=2)
    assert _aps(report) == (pytest.approx(1.0), pytest.approx(1.0))
    assert report["coco"]["segm"]["per_class_AP"]["cat"] == pytest.approx(1.0)
    assert report["num_predictions"] == sum(len(d) for d in dets) and report["ignored_predictions"] == 0
    assert {p["name"]: (p["category_id"], p["by"]) for p in report["class_match"]["pairs"]}["cat"] == (17, "id")


def test_own_detections_through_the_cli_score_ap_one(coco_layout, tmp_path):
    root, ck, images, _, dets = coco_layout
    gt = write_gt(root / "gaps_cli.json", images, dets, CATS_WITH_GAPS, {17: 17})
    res = run_cli("evaluate", "--weights", ck, "--data", gt, "--out", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["coco"]["segm"]["AP"] == pytest.approx(1.0) and saved["coco"]["bbox"]["AP"] == pytest.approx(1.0)
    assert "classes: 4 matched by id; 76 model classes are not in the data" in res.out
    assert "images: 3 of 3 evaluated" in res.out


def test_names_matching_with_ids_shifted_score_ap_one(coco_layout, tmp_path):
    root, ck, images, predictor, dets = coco_layout
    gt = write_gt(root / "shifted.json", images, dets, [(2, "dog"), (5, "cat"), (9, "person")], {17: 5})
    report = evaluate_model(predictor, load_dataset(gt), batch_size=2)
    assert _aps(report) == (pytest.approx(1.0), pytest.approx(1.0))
    by = {p["name"]: (p["model_class_id"], p["category_id"], p["by"]) for p in report["class_match"]["pairs"]}
    assert by == {"dog": (18, 2, "name"), "cat": (17, 5, "name"), "person": (1, 9, "name")}
    res = run_cli("evaluate", "--weights", ck, "--data", gt, "--out", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["coco"]["segm"]["AP"] == pytest.approx(1.0)


def test_classes_that_cannot_be_matched_are_a_one_line_error(coco_layout, tmp_path):
    root, ck, images, predictor, dets = coco_layout
    gt = write_gt(root / "unicorn.json", images, dets, [(17, "kitten"), (3, "unicorn")], {17: 17})
    with pytest.raises(EvaluationError) as exc:
        evaluate_model(predictor, load_dataset(gt), model_name=str(ck), data_name=str(gt))
    assert_one_line_error(exc, "unicorn.json", "17 'kitten'", "3 'unicorn'", "id 17 is 'cat'", "rename")


def test_a_subset_dataset_drops_and_reports_predictions_of_classes_it_lacks(tmp_path):
    # the model detects 'car' (3) and 'cat' (17) on every box; the data has only 'cat' and 'dog'
    model = detecting_model({3: 4.0, 17: 4.0}, num_classes=91, class_names=list(COCO_CLASSES))
    images = write_images(tmp_path, 2, seed=1)
    dets = Predictor(model, device="cpu").detect([str(p) for p in images], batch_size=2)
    n_car = sum(int((d.class_ids == 3).sum()) for d in dets)
    assert n_car > 0 and all((d.class_ids == 17).any() for d in dets)
    gt = write_gt(tmp_path / "cats.json", images, dets, [(17, "cat"), (18, "dog")], {17: 17})
    report = evaluate_model(model, load_dataset(gt), batch_size=2)  # a MaskRCNN, not a Predictor
    assert _aps(report) == (pytest.approx(1.0), pytest.approx(1.0))
    assert report["class_match"]["dropped_predictions"] == {"car": n_car}
    assert report["ignored_predictions"] == n_car and len(report["class_match"]["unscored_model_classes"]) == 78


def test_contiguous_ids_are_unchanged_and_a_nameless_model_pairs_by_position(tmp_path):
    images = write_images(tmp_path, 2, seed=2)
    named = detecting_model({2: 4.0})  # classes BG, cell, debris: detects 'debris'
    dets = Predictor(named, device="cpu").detect([str(p) for p in images], batch_size=2)
    gt = write_gt(tmp_path / "contiguous.json", images, dets, [(1, "cell"), (2, "debris")], {2: 2})
    report = evaluate_model(named, load_dataset(gt), batch_size=2)
    assert _aps(report) == (pytest.approx(1.0), pytest.approx(1.0))
    assert {p["by"] for p in report["class_match"]["pairs"]} == {"id"}
    # without class names, trained on a COCO file with gaps (internal ids 1, 2 are categories 4, 9)
    nameless = detecting_model({2: 4.0}, class_names=None)
    gt = write_gt(tmp_path / "gaps.json", images, dets, [(4, "cell"), (9, "debris")], {2: 9})
    report = evaluate_model(nameless, load_dataset(gt), batch_size=2)
    assert _aps(report) == (pytest.approx(1.0), pytest.approx(1.0))
    assert {p["by"] for p in report["class_match"]["pairs"]} == {"position"}

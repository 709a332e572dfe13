"""Which model class is which ground-truth category: the one rule every evaluation uses.

A model's class ids are those of the data it was trained on: COCO's 91-id layout with gaps for
torchvision's files and our ``coco`` weights (names in :data:`maskrcnn.weights.COCO_CLASSES`,
``"N/A"`` at the unused ids), the training dataset's internal ids ``1..K`` for our checkpoints
(names in ``Config.class_names``). A dataset's categories have the ids its annotation file uses
(a COCO file's ``category_id``, gaps and all) and internal ids ``1..K`` (see
:class:`maskrcnn.data.Dataset`). So ids alone cannot pair them, and names alone are not always
known. :func:`match_classes` pairs each model class ``c`` (name ``n``) with a category:

1. **by id**: the category whose id is ``c``, when its name is ``n`` or ``n`` is unknown;
2. **by name**: otherwise the category named ``n`` (names compared case-insensitively);
3. **by position**: only for a model without class names whose class count is the dataset's
   (a model trained on this dataset's internal ids), when ids leave a category unpaired.

Each category takes one model class. Every category must be paired (else a one-line
:class:`EvaluationError` names what is missing on each side and the fix); model classes left
over (the dataset has a subset of the model's classes) are *unscored*: their predictions are
dropped and the report lists them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import EvaluationError

__all__ = ["Category", "ClassMatch", "dataset_categories", "describe_match", "gt_categories", "match_classes", "model_class_names"]

#: Name of the unused ids in COCO's 91-id layout (``maskrcnn.weights.COCO_CLASSES``): not a class.
UNUSED_NAME = "N/A"
_SHOW = 5  # ids listed in a message before "(+N more)"


@dataclass(frozen=True)
class Category:
    """A ground-truth category: ``id`` as the annotation file has it (compared with model class
    ids), ``name``, and ``key``, the ``category_id`` predictions get in the evaluated ground truth."""

    id: int
    name: str
    key: int


@dataclass
class ClassMatch:
    """Model class id -> ground-truth category, as decided by :func:`match_classes`."""

    pairs: dict[int, Category]
    matched_by: dict[int, str]
    unscored: dict[int, str] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    def select(self, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(keep [N] bool, category keys [keep.sum()] int64)`` of predicted model class ids ``[N]``.

        Predictions of unscored classes are left out and counted in :attr:`dropped`.
        """
        class_ids = np.asarray(class_ids).reshape(-1).astype(np.int64)
        keep = np.array([int(c) in self.pairs for c in class_ids], dtype=bool)
        for c in class_ids[~keep]:
            self.dropped[int(c)] += 1
        return keep, np.array([self.pairs[int(c)].key for c in class_ids[keep]], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """The report's ``class_match``: how each category was paired, unscored classes, dropped predictions."""
        return {
            "pairs": [{"model_class_id": c, "category_id": cat.id, "name": cat.name, "by": self.matched_by[c]}
                      for c, cat in sorted(self.pairs.items(), key=lambda kv: kv[1].key)],
            "unscored_model_classes": [self.unscored[c] for c in sorted(self.unscored)],
            "dropped_predictions": {self._name(c): n for c, n in sorted(self.dropped.items())},
        }

    def _name(self, class_id: int) -> str:
        return self.unscored.get(class_id, f"class {class_id}")


def describe_match(summary: dict[str, Any]) -> str:
    """One console line from :meth:`ClassMatch.summary`, e.g.
    ``classes: 3 matched by id; 77 model classes are not in the data; 12 predictions of classes not in the
    data were not scored (car 5, ...)``."""
    ways = Counter(p["by"] for p in summary["pairs"])
    line = "classes: " + ", ".join(f"{n} matched by {way}" for way, n in sorted(ways.items()))
    unscored, dropped = summary["unscored_model_classes"], summary["dropped_predictions"]
    if unscored:
        line += f"; {len(unscored)} model classes are not in the data"
    if dropped:
        top = sorted(dropped.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {n}" for name, n in top[:_SHOW]) + (", ..." if len(top) > _SHOW else "")
        line += f"; {sum(dropped.values())} predictions of classes not in the data were not scored ({shown})"
    return line


def model_class_names(model: Any) -> list[str | None] | None:
    """The model's class names by class id (``[0]`` background; ``None`` entries when unknown).

    ``model``: a :class:`~maskrcnn.inference.predictor.Predictor` or
    :class:`~maskrcnn.modeling.MaskRCNN` (anything with a ``config``); ``None`` when it has no
    config (then its class ids are taken to be the dataset's category ids).
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    if config.class_names:
        return [str(n) for n in config.class_names]
    return [None] * int(config.num_classes)


def dataset_categories(dataset: Any) -> list[Category]:
    """The categories of a prepared :class:`~maskrcnn.data.Dataset`, in internal id order.

    ``id`` is the source's own category id when the dataset has one source whose ids are distinct
    integers >= 1 (a COCO file's ids, gaps kept), else the internal id (e.g. YOLO's 0-based
    classes, several sources); ``key`` is the internal id (:func:`maskrcnn.data.convert.dataset_to_coco`'s).
    """
    infos = dataset.class_info[1:]
    source_ids = [info.get("id") for info in infos]
    own = (len({info.get("source") for info in infos}) == 1
           and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 1 for i in source_ids)
           and len(set(source_ids)) == len(source_ids))
    return [Category(int(source_ids[k]) if own else k + 1, str(dataset.class_names[k + 1]), k + 1) for k in range(len(infos))]


def gt_categories(gt_coco: dict[str, Any]) -> list[Category]:
    """The categories of a COCO ground-truth dict (``id`` and ``key`` both its ``category_id``)."""
    return [Category(int(c["id"]), str(c["name"]), c["id"]) for c in gt_coco["categories"]]


def _norm(name: str | None) -> str | None:
    return None if name is None else str(name).strip().casefold()


def _listing(items: Sequence[tuple[int, str | None]]) -> str:
    shown = ", ".join(f"{i} {n!r}" if n is not None else str(i) for i, n in items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def match_classes(model_names: Sequence[str | None] | None, categories: Sequence[Category], *,
                  model: str = "the model", data: str = "the dataset") -> ClassMatch:
    """Pair the model's classes with ``categories`` (see the module docstring).

    Args:
        model_names: the model's class names by class id, ``[0]`` the background; ``None``
            entries for unknown names; ``None`` for a model whose class ids are the category ids.
        categories: the ground truth's categories (:func:`dataset_categories`, :func:`gt_categories`).
        model, data: how messages name the two sides (e.g. the ``--weights`` and ``--data`` values).

    Raises:
        EvaluationError: a category that no model class can be paired with (one line: the
            unpaired categories, the model classes left over, and the fix).
    """
    if not categories:
        raise EvaluationError(f"{data}: has no categories; declare the classes its annotations use")
    if model_names is None:
        return ClassMatch({c.id: c for c in categories}, {c.id: "id" for c in categories})
    classes = {i: n for i, n in enumerate(model_names) if i > 0 and n != UNUSED_NAME}
    by_id = {c.id: c for c in categories}
    by_name: dict[str | None, Category] = {}
    for c in categories:
        by_name.setdefault(_norm(c.name), c)
    pairs: dict[int, Category] = {}
    matched_by: dict[int, str] = {}
    taken: set[int] = set()

    def pair(class_id: int, cat: Category | None, how: str) -> None:
        if cat is not None and cat.key not in taken and class_id not in pairs:
            pairs[class_id], matched_by[class_id] = cat, how
            taken.add(cat.key)

    for i, n in classes.items():
        cat = by_id.get(i)
        if cat is not None and (n is None or _norm(n) == _norm(cat.name)):
            pair(i, cat, "id")
    for i, n in classes.items():
        if n is not None:
            pair(i, by_name.get(_norm(n)), "name")
    missing = [c for c in categories if c.key not in taken]
    if missing and all(n is None for n in classes.values()) and len(classes) == len(categories):
        pairs, matched_by = {}, {}
        for i, cat in zip(sorted(classes), sorted(categories, key=lambda c: c.key)):
            pairs[i], matched_by[i] = cat, "position"
        missing = []
    if missing:
        left = [(i, n) for i, n in classes.items() if i not in pairs]
        differ = [f"id {c.id} is {classes[c.id]!r} in the model" for c in missing
                  if classes.get(c.id) is not None and c.id not in pairs]
        raise EvaluationError(
            f"{data}: {model} has no class for categor{'y' if len(missing) == 1 else 'ies'} "
            f"{_listing([(c.id, c.name) for c in missing])} "
            f"({'; '.join(differ[:_SHOW]) + '; ' if differ else ''}"
            f"model classes not in the data: {_listing(left) or 'none'}); "
            + ("give the model class names (class_names in its config) or categories with the model's ids"
               if all(n is None for n in classes.values()) else
               "rename those categories to the model's class names, or evaluate a model trained on these classes")
        )
    unscored = {i: (n if n is not None else str(i)) for i, n in classes.items() if i not in pairs}
    return ClassMatch(pairs, matched_by, unscored)

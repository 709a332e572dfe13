"""TF Object Detection API label maps (``label_map.pbtxt``)::

    item { id: 1 name: '/m/01g317' display_name: 'person' }
    item { id: 3 name: 'car' }

``id`` is the class id used in the TFRecords (``image/object/class/label``); 0 is background and
ids may have gaps (they are kept). ``name`` is the label matched against
``image/object/class/text``; ``display_name`` (optional) is the human-readable name, also matched.
Our class name is ``display_name`` when given, else ``name``. Fields other than these
(``keypoints``, ``frequency``, ...) are allowed and not used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...errors import DataError
from .textformat import Identifier, TextFormatError, TextMessage, parse, read_text_file

__all__ = ["LabelMapItem", "LabelMap", "read_label_map", "parse_label_map"]


@dataclass(frozen=True)
class LabelMapItem:
    id: int
    name: str
    display_name: str | None = None

    @property
    def class_name(self) -> str:
        """The name we show: ``display_name`` when given, else ``name``."""
        return self.display_name or self.name


@dataclass(frozen=True)
class LabelMap:
    """The items of a label map, in increasing id order; ``file`` names it in messages."""

    items: tuple[LabelMapItem, ...]
    file: str

    @property
    def ids(self) -> list[int]:
        return [i.id for i in self.items]

    def by_id(self, class_id: int) -> LabelMapItem | None:
        return next((i for i in self.items if i.id == class_id), None)

    def id_of(self, text: str) -> int | None:
        """The id whose ``name`` (or else ``display_name``) is ``text``; None when none is."""
        for item in self.items:
            if item.name == text:
                return item.id
        for item in self.items:
            if item.display_name == text:
                return item.id
        return None


def read_label_map(path: str | os.PathLike[str]) -> LabelMap:
    """Read and check a ``.pbtxt`` label map; every problem is a one-line :class:`DataError`."""
    text = read_text_file(path, "label map", DataError, "item { id: 1 name: 'cat' }",
                          "pass the label_map.pbtxt the TFRecords were written with")
    return parse_label_map(text, str(path))


def parse_label_map(text: str, file: str = "label map") -> LabelMap:
    """Parse label-map text; ``file`` names it in the one-line :class:`DataError` messages."""
    fix = "fix the label map (item { id: 1 name: 'cat' })"
    try:
        root = parse(text)
    except TextFormatError as exc:
        raise DataError(f"{file}: {exc}; {fix}") from None
    other = [n for n in root.names() if n != "item"]
    if other:
        line = root.entries(other[0])[0].line
        raise DataError(f"{file}: line {line}: unexpected field {other[0]!r} at the top level; a label map holds only "
                        f"item {{ ... }} entries: {fix}")
    entries = root.entries("item")
    if not entries:
        raise DataError(f"{file}: no item {{ ... }} entries; {fix}")
    items: list[LabelMapItem] = []
    for entry in entries:
        if not isinstance(entry.value, TextMessage):
            raise DataError(f"{file}: line {entry.line}: 'item' must be a message item {{ id: 1 name: 'cat' }}, "
                            f"not {entry.value!r}; {fix}")
        items.append(_item(entry.value, entry.line, file))
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for item, entry in zip(items, entries):
        if item.id in seen_ids:
            raise DataError(f"{file}: line {entry.line}: id {item.id} is used twice (also line {seen_ids[item.id]}); "
                            "give each class its own id")
        if item.name in seen_names:
            raise DataError(f"{file}: line {entry.line}: name {item.name!r} is used twice (also line "
                            f"{seen_names[item.name]}); give each class its own name")
        seen_ids[item.id] = entry.line
        seen_names[item.name] = entry.line
    return LabelMap(tuple(sorted(items, key=lambda i: i.id)), file)


def _item(msg: TextMessage, line: int, file: str) -> LabelMapItem:
    where = f"{file}: line {line}: item"
    for key in ("id", "name", "display_name"):
        if len(msg.entries(key)) > 1:
            raise DataError(f"{where} has {key!r} twice; keep one")
    cid = msg.get("id")
    if cid is None:
        raise DataError(f"{where} has no 'id'; add id: N (the class/label value in the TFRecords, from 1)")
    if not isinstance(cid, int) or isinstance(cid, bool):
        raise DataError(f"{where}: id {cid!r} is not an integer; write id: N")
    if cid < 1:
        raise DataError(f"{where}: id {cid} is reserved (0 is background); class ids start at 1")
    name, display = msg.get("name"), msg.get("display_name")
    for key, value in (("name", name), ("display_name", display)):
        if value is not None and (not isinstance(value, str) or isinstance(value, Identifier)):
            raise DataError(f"{where} {cid}: {key} must be a quoted string such as {key}: 'cat', not {value!r}")
    if not name and not display:
        raise DataError(f"{where} {cid} has no name; add name: 'class name'")
    return LabelMapItem(int(cid), str(name or display), str(display) if display else None)

"""What loading a dataset dropped or repaired: ``dataset.problems``, recorded and summarised here.

Every loader (and :func:`maskrcnn.data.convert.dataset_to_coco`) appends to the one list
``dataset.problems`` a dict ``{"kind", "message", "image", "instance", "file"}`` (optionally
``"severity"``) for each image, annotation or shape it skipped or changed; the kinds are listed
in :mod:`maskrcnn.data.formats`. ``check-data`` lists them all as findings, ``train`` and
``convert`` print :func:`summary_lines` (counts by kind, the first few, where the rest are), so
no command trains on or writes fewer instances than annotated without saying so.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Literal

__all__ = ["SEVERITY", "add_problem", "instance_ref", "severity_of", "summary_lines"]

Severity = Literal["error", "warning", "info"]

#: Severity of each problem kind. Errors: an image or an instance was skipped, so annotated data
#: would be lost; warnings: something was repaired, or skipped that carries no object.
SEVERITY: dict[str, Severity] = {
    **dict.fromkeys(("missing_image", "unreadable_image", "size_mismatch", "unknown_image", "invalid_annotation",
                     "no_mask", "unknown_class", "missing_class", "mask_size_mismatch", "unreadable_mask",
                     "outside_image", "corrupt_record"), "error"),
    **dict.fromkeys(("duplicate_image", "orphan_annotation", "degenerate_polygon", "unsupported_shape",
                     "out_of_bounds", "outside_root", "ignored_field", "empty_mask",
                     "missing_shard"), "warning"),
    **dict.fromkeys(("unlabelled_image", "no_annotations"), "info"),
}


def severity_of(problem: dict[str, Any]) -> Severity:
    """The problem's own ``severity``, else its kind's (unknown kinds: warning)."""
    severity = problem.get("severity") or SEVERITY.get(str(problem.get("kind")), "warning")
    return severity if severity in ("error", "warning", "info") else "warning"


def add_problem(problems: list[dict[str, Any]], kind: str, message: str, *, image: str | None = None,
                instance: Any = None, file: str | os.PathLike[str] | None = None,
                severity: Severity | None = None) -> None:
    """Append one problem (``message``: one line naming the file and instance and what was done)."""
    entry: dict[str, Any] = {"image": image, "instance": instance, "kind": kind, "message": message,
                             "file": None if file is None else str(file)}
    if severity is not None:
        entry["severity"] = severity
    problems.append(entry)


def summary_lines(problems: list[dict[str, Any]], source: str, *, limit: int = 5, action: str = "loading") -> list[str]:
    """A short report of ``problems`` (empty when there are none).

    The first line counts the errors and warnings by kind, then up to ``limit`` messages (errors
    first), then where to see the rest and the notes (info kinds such as ``unlabelled_image``):
    ``maskrcnn check-data SOURCE`` lists every one.
    """
    notes = [p for p in problems if severity_of(p) == "info"]
    problems = [p for p in problems if severity_of(p) != "info"]
    if not problems:
        return []
    kinds = Counter(str(p.get("kind")) for p in problems)
    order = {"error": 0, "warning": 1, "info": 2}
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [f"{action} {source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} "
             f"(skipped or repaired; {counts}):"]
    shown = sorted(problems, key=lambda p: order[severity_of(p)])[:limit]
    lines += [f"  {severity_of(p)}: {str(p.get('message') or p.get('kind')).splitlines()[0]}" for p in shown]
    if len(problems) > limit or notes:
        more = f"{len(problems) - limit} more" if len(problems) > limit else "notes"
        extra = f" (and {len(notes)} note{'s' if len(notes) != 1 else ''})" if notes else ""
        lines.append(f"  ... {more}{extra}: run `maskrcnn check-data {source}` to list them all")
    return lines


def instance_ref(info: dict[str, Any], index: int) -> str | None:
    """The annotation reference of instance ``index`` of an image when a format loader kept one
    (``image_info[i]["instances"][index]["ref"]`` such as ``annotation 17``, or the file name of
    ``mask_paths[index]``); None otherwise."""
    instances, paths = info.get("instances"), info.get("mask_paths")
    try:
        if isinstance(instances, list) and isinstance(instances[index], dict) and instances[index].get("ref") is not None:
            return str(instances[index]["ref"])
        if isinstance(paths, list):
            return os.path.basename(str(paths[index]))
    except IndexError:
        pass
    return None

"""The result of ``maskrcnn check-data``: :class:`Finding` (one problem) and :class:`Report` (all of
them with the summary tables), rendered as text (:meth:`Report.format_text`) or JSON
(:meth:`Report.to_json`). The checks that produce them are in :mod:`maskrcnn.data.check`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal

__all__ = ["Finding", "Report", "Severity", "sizes_by_count"]

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One problem: ``severity`` (error/warning/info), ``kind``, where, and a one-line message."""

    severity: Severity
    kind: str
    message: str
    image: str | None = None
    image_id: int | None = None
    instance: int | str | None = None
    ref: str | None = None

    def where(self) -> str:
        """``image instance N (REF)``, ``image REF``, ``image`` or ``dataset``.

        ``instance`` is the index in ``load_mask`` (int) or, for problems recorded by a format
        loader, its reference (``annotation 17``, ``region 2``, a mask file name); ``ref`` is the
        annotation reference of an indexed instance when the dataset keeps one.
        """
        if self.image is None:
            return "dataset" if self.instance is None else str(self.instance)
        if self.instance is None:
            return self.image
        if not isinstance(self.instance, int):
            return f"{self.image} {self.instance}"
        return f"{self.image} instance {self.instance}" + (f" ({self.ref})" if self.ref else "")

    def format(self) -> str:
        """One line: severity, kind, location and message."""
        return f"{self.severity:<7} {self.kind:<19} {self.where()}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """The result of :func:`check_dataset`: findings plus summary tables."""

    findings: list[Finding]
    num_images: int
    num_instances: int
    class_names: list[str]
    class_instances: list[int]
    class_images: list[int]
    image_sizes: dict[tuple[int, int], int]
    channels: dict[int, int]
    dtypes: dict[str, int]
    resize: dict[str, Any]
    config: str

    # ------------------------------------------------------------------ queries
    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "info"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings and info do not block training)."""
        return not self.errors

    @property
    def exit_code(self) -> int:
        """1 when there are errors, else 0."""
        return 0 if self.ok else 1

    def of_kind(self, kind: str) -> list[Finding]:
        """All findings of ``kind``."""
        return [f for f in self.findings if f.kind == kind]

    @property
    def background_only(self) -> int:
        """Images without instances (they are trained on, as negatives)."""
        return len(self.of_kind("background_only"))

    def kinds(self) -> Counter[str]:
        """Number of findings per kind."""
        return Counter(f.kind for f in self.findings)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON types; findings sorted errors first."""
        return {
            "ok": self.ok,
            "summary": {
                "images": self.num_images,
                "instances": self.num_instances,
                "classes": len(self.class_names),
                "errors": len(self.errors),
                "warnings": len(self.warnings),
                "info": len(self.infos),
                "background_only": self.background_only,
                "config": self.config,
            },
            "classes": [
                {"id": i, "name": n, "instances": self.class_instances[i], "images": self.class_images[i]}
                for i, n in enumerate(self.class_names)
            ],
            "image_sizes": [{"width": w, "height": h, "count": c} for (w, h), c in sizes_by_count(self.image_sizes)],
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
            "dtypes": dict(sorted(self.dtypes.items())),
            "resize": self.resize,
            "findings": [f.to_dict() for f in _sorted(self.findings)],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format_text(self, max_per_kind: int = 10) -> str:
        """A compact human report: summary tables, then findings (errors first), ``max_per_kind`` lines per kind."""
        lines = [
            f"{self.num_images} images, {self.num_instances} instances, {len(self.class_names)} classes "
            f"(BG + {max(len(self.class_names) - 1, 0)}), {self.background_only} background-only images "
            f"(trained on); config: {self.config}",
            f"errors: {len(self.errors)}   warnings: {len(self.warnings)}   info: {len(self.infos)}",
            "",
            f"  {'id':>3}  {'class':<20} {'instances':>9} {'images':>7}",
        ]
        for i, name in enumerate(self.class_names):
            if i == 0:
                continue
            lines.append(f"  {i:>3}  {name[:20]:<20} {self.class_instances[i]:>9} {self.class_images[i]:>7}")
        lines += ["", f"  {'image size':<14} {'images':>7}"]
        sizes = sizes_by_count(self.image_sizes)
        for (w, h), count in sizes[:8]:
            lines.append(f"  {f'{w}x{h}':<14} {count:>7}")
        if len(sizes) > 8:
            lines.append(f"  ... {len(sizes) - 8} more sizes ({sum(c for _, c in sizes[8:])} images)")
        kinds = Counter((f.severity, f.kind) for f in self.findings)
        if kinds:
            lines += ["", f"  {'severity':<8} {'kind':<19} {'count':>6}"]
            for (sev, kind), count in sorted(kinds.items(), key=lambda kv: (_SEVERITY_ORDER[kv[0][0]], kv[0][1])):
                lines.append(f"  {sev:<8} {kind:<19} {count:>6}")
            lines.append("")
        root = _common_root(f.image for f in self.findings)
        if root:
            lines.append(f"(image paths relative to {root})")
        shown: Counter[str] = Counter()
        for f in _sorted(self.findings):
            shown[f.kind] += 1
            if shown[f.kind] <= max_per_kind:
                lines.append(f.format().replace(root + os.sep, "") if root else f.format())
            elif shown[f.kind] == kinds[(f.severity, f.kind)]:
                lines.append(f"{'':<7} {f.kind:<19} ... {shown[f.kind] - max_per_kind} more (see --json for all)")
        n = len(self.errors)
        lines.append("OK: no errors" if self.ok else f"FAILED: {n} error{'s' if n > 1 else ''}; fix before training")
        return "\n".join(lines)


def _sorted(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; grouped by kind, in dataset order within a kind."""
    first_seen: dict[str, int] = {}
    items = list(findings)
    for i, f in enumerate(items):
        first_seen.setdefault(f.kind, i)
    return sorted(items, key=lambda f: (_SEVERITY_ORDER[f.severity], first_seen[f.kind]))


def _common_root(images: Iterable[str | None]) -> str:
    """The longest common folder of the image paths among ``images`` ('' if none or just '/')."""
    paths = {i for i in images if i and os.sep in i}
    if not paths:
        return ""
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:  # mixed absolute and relative paths
        return ""
    return root if root not in ("", os.sep) else ""


def sizes_by_count(counter: dict[tuple[int, int], int]) -> list[tuple[tuple[int, int], int]]:
    """``(size, count)`` pairs, most frequent first, then by size."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


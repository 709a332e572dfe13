"""Lint a dataset before training: ``check_dataset(dataset, config) -> Report``.

The check streams the dataset image by image through the Matterport ``Dataset`` API
(``load_image``, ``load_mask``, ``image_reference``, ``class_names``), so memory stays bounded by
one image and its masks plus a few numbers per image and per instance. Each problem becomes a
:class:`~maskrcnn.data.check_report.Finding` (severity, kind, image, instance, one-line message
with the fix); a :class:`~maskrcnn.data.check_report.Report` holds them with summary tables
(classes, image sizes, resize behaviour) and renders as text or JSON. Both are importable from
here too.

Finding kinds (severity):

* errors: ``unreadable_image``, ``unreadable_mask``, ``mask_shape``, ``size_mismatch``,
  ``count_mismatch``, ``undeclared_class``, ``num_classes``, ``channel_mismatch``;
* warnings: ``empty_mask``, ``tiny_mask``, ``duplicate_image``, ``duplicate_instance``,
  ``too_many_instances``, ``unused_class``, ``class_imbalance``, ``small_objects``,
  ``mixed_channels``, ``mixed_depth``, ``mixed_polarity``, ``class_names``, ``strong_downscale``, ``strong_upscale``;
* info: ``background_only``, ``image_sizes``, ``resize``;
* problems recorded by the format loaders at registration (``dataset.problems``, see
  :mod:`maskrcnn.data.formats`) keep their kind and the severity :mod:`maskrcnn.data.problems`
  gives it: errors where the loader skipped an image or an instance (``missing_image``,
  ``unknown_class``, ``mask_size_mismatch`` ...), warnings where it repaired something or skipped
  what carries no object (``degenerate_polygon``, ``out_of_bounds``, ``outside_root`` ...), info
  for ``unlabelled_image``.

Each finding names the image (``image_reference``) and, for instances, the index in
``load_mask`` plus the loader's reference (``annotation 17``, a mask file) when there is one.
"""

from __future__ import annotations

import hashlib
import math
import sys
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..config import Config
from ..errors import MaskRCNNError, first_line
from .check_report import Finding, Report, Severity, sizes_by_count
from .dataset import Dataset
from .images import intensity_scale
from .problems import instance_ref, severity_of
from .validate import check_load_mask

__all__ = ["CheckOptions", "Finding", "Report", "check_dataset", "resize_geometry"]


@dataclass(frozen=True)
class CheckOptions:
    """Thresholds of the checks.

    Attributes:
        tiny_area: masks with fewer pixels (but more than 0) are reported as tiny.
        duplicate_iou: two instances of one image whose mask IoU reaches this are reported.
        imbalance_ratio: a most/least frequent class instance ratio above this is reported.
        small_object_fraction: report objects below the smallest anchor when at least this
            fraction of all objects is (0 reports any).
    """

    tiny_area: int = 16
    duplicate_iou: float = 0.9
    imbalance_ratio: float = 10.0
    small_object_fraction: float = 0.05


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def _span(lo: float, hi: float) -> str:
    return f"{lo:.2f}x" if abs(hi - lo) < 5e-3 else f"{lo:.2f}x-{hi:.2f}x"


# ---------------------------------------------------------------------------- the check


def check_dataset(
    dataset: Dataset,
    config: Config | None = None,
    *,
    progress: bool = False,
    options: CheckOptions | None = None,
    config_label: str | None = None,
) -> Report:
    """Lint ``dataset`` (prepared) against ``config`` and return a :class:`Report`.

    Without a config, the defaults with the dataset's class count are used (so the resize and
    anchor checks describe what a default training run would do). ``progress`` shows a bar on
    stderr. ``config_label`` names the config in messages (e.g. its file name).
    """
    if not getattr(dataset, "_prepared", True):
        dataset.prepare()
    if config is None:
        config = Config.create(num_classes=max(dataset.num_classes, 2))
        label = "defaults"
    else:
        label = config_label or "given"
    state = _State(dataset, config, options or CheckOptions())
    ids = list(range(len(dataset.image_info)))
    for image_id in _progress(ids, progress):
        state.check_image(image_id)
    state.add_loader_problems(getattr(dataset, "problems", None) or [])
    state.finish(config_label or "config")
    return Report(
        findings=state.findings,
        num_images=len(ids),
        num_instances=state.num_instances,
        class_names=list(dataset.class_names),
        class_instances=state.class_instances.tolist(),
        class_images=state.class_images.tolist(),
        image_sizes=dict(state.sizes),
        channels=dict(state.channels),
        dtypes=dict(state.dtypes),
        resize=state.resize_summary,
        config=label,
    )


def _progress(ids: list[int], enabled: bool) -> Iterable[int]:
    if not enabled:
        return ids
    from tqdm import tqdm

    return tqdm(ids, desc="check-data", unit="img", file=sys.stderr)


class _State:
    """Running totals of the streaming check."""

    def __init__(self, dataset: Dataset, config: Config, options: CheckOptions) -> None:
        self.ds, self.cfg, self.opt = dataset, config, options
        self.findings: list[Finding] = []
        n = max(dataset.num_classes, 1)
        self.class_instances = np.zeros(n, dtype=np.int64)
        self.class_images = np.zeros(n, dtype=np.int64)
        self.num_instances = 0
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.channels: Counter[int] = Counter()
        self.dtypes: Counter[str] = Counter()
        self.bright: list[int] = []  # images whose mean intensity in [0, 1] is above 0.6 (dark: below 0.4)
        self.dark = 0
        self.hashes: dict[bytes, int] = {}
        self.scales: array = array("d")
        self.pad_fraction: array = array("d")
        self.crop_cover: array = array("d")
        self.object_sides: array = array("d")  # sqrt(box area) after resizing, per non-empty instance
        self.resize_summary: dict[str, Any] = {}

    def add(self, severity: Severity, kind: str, message: str, image_id: int | None = None,
            instance: int | None = None) -> None:
        image = None if image_id is None else self.ds.image_reference(image_id)
        ref = None if image_id is None or instance is None else instance_ref(self.ds.image_info[image_id], instance)
        self.findings.append(Finding(severity, kind, message, image, image_id, instance, ref))

    # -------------------------------------------------------------- per image
    def check_image(self, image_id: int) -> None:
        image = self._load_image(image_id)
        try:
            masks, class_ids = self.ds.load_mask(image_id)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a finding
            if image is not None:
                self.add("error", "unreadable_mask", f"load_mask failed ({first_line(exc, limit=200)}); fix the annotation "
                         "or remove the image", image_id)
            return
        loaded = check_load_mask(masks, class_ids, None if image is None else image.shape[:2],
                                 self.ds.num_classes, list(self.ds.class_names))
        for problem in loaded.problems:
            self.add("error", problem.kind, problem.message, image_id, problem.instance)
        if loaded.masks is None:
            return
        masks, class_ids = loaded.masks, loaded.class_ids
        n = masks.shape[2]
        self.num_instances += n
        valid = class_ids[loaded.declared].tolist()
        if valid:
            np.add.at(self.class_instances, valid, 1)
            self.class_images[sorted(set(valid))] += 1
        if n == 0:
            self.add("info", "background_only", "no instances: a background-only image; it is trained on "
                     "(as negatives only)", image_id)
            return
        if n > self.cfg.max_gt_instances:
            self.add("warning", "too_many_instances", f"{n} instances but max_gt_instances="
                     f"{self.cfg.max_gt_instances}; the extra ones are randomly dropped each step: raise "
                     "max_gt_instances", image_id)
        h, w = image.shape[:2] if image is not None else masks.shape[:2]
        self._check_instances(image_id, masks, class_ids, resize_geometry(h, w, self.cfg)[0])

    def _load_image(self, image_id: int) -> np.ndarray | None:
        try:
            image = np.asarray(self.ds.load_image(image_id))
        except MaskRCNNError as exc:  # already one line naming the file and the fix
            self.add("error", "unreadable_image", first_line(exc, limit=200), image_id)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure of user code is a finding
            self.add("error", "unreadable_image", f"cannot read the image ({first_line(exc, limit=200)}); re-export the "
                     "file or remove it from the dataset", image_id)
            return None
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.size == 0:
            self.add("error", "unreadable_image", f"load_image returned shape {image.shape}; it must return "
                     "[H, W, C]", image_id)
            return None
        h, w, c = image.shape
        self._record_resize(h, w)
        self.sizes[(w, h)] += 1
        self.channels[c] += 1
        self.dtypes[str(image.dtype)] += 1
        scale = intensity_scale(image.dtype)
        mean = float(image.mean(dtype=np.float64)) / scale if scale else 0.5  # unsupported types: neither
        if mean > 0.6:  # clearly bright or clearly dark; mid-grey images count as neither
            self.bright.append(image_id)
        elif mean < 0.4:
            self.dark += 1
        if c != self.cfg.image_channel_count:
            self.add("error", "channel_mismatch", f"{c} channel(s) but image_channel_count="
                     f"{self.cfg.image_channel_count}; convert the image or set image_channel_count: {c}",
                     image_id)
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
        digest.update(repr((image.shape, str(image.dtype))).encode())
        key = digest.digest()
        if key in self.hashes:
            other = self.hashes[key]
            self.add("warning", "duplicate_image", f"same pixels as {self.ds.image_reference(other)}; remove one "
                     "(duplicates weigh double and can leak between train and validation)", image_id)
        else:
            self.hashes[key] = image_id
        return image

    def _check_instances(self, image_id: int, masks: np.ndarray, class_ids: np.ndarray, scale: float) -> None:
        from .augment import boxes_from_masks  # torch: imported when the check runs, not with the module

        areas = masks.sum(axis=(0, 1))
        boxes = boxes_from_masks(np.moveaxis(masks, 2, 0)).astype(np.int64)  # [N, 4] xyxy; empty masks: 0
        x1, y1, x2, y2 = boxes.T
        tiny, drop = self.opt.tiny_area, self.cfg.aug_min_area
        for i, area in enumerate(areas.tolist()):
            if area == 0:
                self.add("warning", "empty_mask", "the mask has no pixel inside the image; the instance is dropped "
                         "in training: fix or delete the annotation", image_id, i)
            elif area < max(tiny, drop):
                extra = f" and is dropped in training (aug_min_area={drop})" if area < drop else ""
                self.add("warning", "tiny_mask", f"the mask has {area} px (< tiny_area={tiny}){extra}; check the "
                         "annotation or delete it", image_id, i)
            if area > 0:
                self.object_sides.append(math.sqrt(float((y2[i] - y1[i]) * (x2[i] - x1[i]))) * scale)
        self._check_overlaps(image_id, masks, areas, boxes, class_ids)

    def _check_overlaps(self, image_id: int, masks: np.ndarray, areas: np.ndarray, boxes: np.ndarray,
                        class_ids: np.ndarray) -> None:
        """Pairs of instances with mask IoU >= duplicate_iou (pruned by an exact upper bound first).

        ``masks`` ``[H, W, N]`` bool, ``areas`` ``[N]``, ``boxes`` ``[N, 4]`` int64 xyxy of the masks.
        """
        x1, y1, x2, y2 = boxes.T
        a = areas.astype(np.float64)
        iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
        ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
        amax = np.maximum(a[:, None], a[None])
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.minimum(iw * ih, np.minimum(a[:, None], a[None])) / amax  # IoU <= this
        thr = self.opt.duplicate_iou
        cand = np.argwhere(np.triu(np.nan_to_num(bound) >= thr, k=1))
        names = self.ds.class_names
        for i, j in cand.tolist():
            ys = slice(max(y1[i], y1[j]), min(y2[i], y2[j]))
            xs = slice(max(x1[i], x1[j]), min(x2[i], x2[j]))
            inter = float(np.count_nonzero(masks[ys, xs, i] & masks[ys, xs, j]))
            iou = inter / (a[i] + a[j] - inter)
            if iou >= thr:
                ci, cj = (int(class_ids[k]) if k < len(class_ids) else -1 for k in (i, j))
                label = lambda c: names[c] if 0 <= c < len(names) else str(c)  # noqa: E731
                same = f"both '{label(ci)}'" if ci == cj else f"'{label(ci)}' vs '{label(cj)}'"
                self.add("warning", "duplicate_instance", f"overlaps instance {i} with mask IoU {iou:.2f} ({same}); "
                         "possibly annotated twice: delete one", image_id, j)

    # -------------------------------------------------------------- resize
    def _record_resize(self, h: int, w: int) -> None:
        """Record the resize of an ``h x w`` image under the config."""
        from .resize import padded_size

        scale, out_h, out_w = resize_geometry(h, w, self.cfg)
        self.scales.append(scale)
        mode, md = self.cfg.image_resize_mode, self.cfg.image_min_dim
        if mode in ("square", "pad64"):
            ph, pw = padded_size(mode, (out_h, out_w), self.cfg.image_max_dim)
            self.pad_fraction.append(1 - out_h * out_w / float(ph * pw))
        elif mode == "crop":
            self.crop_cover.append(min(1.0, md * md / float(out_h * out_w)))

    # -------------------------------------------------------------- loader problems
    def add_loader_problems(self, problems: list[dict[str, Any]]) -> None:
        """Turn the format loader's registration-time problems into findings."""
        refs = None
        for p in problems:
            image, image_id = p.get("image"), p.get("image_id")
            if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
                image_id, image = int(image), None
            if image_id is None and image is not None:
                if refs is None:
                    refs = {self.ds.image_reference(i): i for i in range(len(self.ds.image_info))}
                image_id = refs.get(str(image))
            if image_id is not None and image is None and 0 <= image_id < len(self.ds.image_info):
                image = self.ds.image_reference(image_id)
            kind = str(p.get("kind", "annotation"))
            severity = severity_of(p)
            instance = p.get("instance")
            if isinstance(instance, (np.integer, float)):
                instance = int(instance)
            elif instance is not None and not isinstance(instance, int):
                instance = str(instance)
            message = (str(p.get("message") or kind).strip().splitlines() or [kind])[0]
            self.findings.append(Finding(severity, kind, message, None if image is None else str(image),
                                         image_id, instance))

    # -------------------------------------------------------------- dataset-wide checks
    def finish(self, config_label: str) -> None:
        self._check_config(config_label)
        self._check_class_balance()
        self._check_formats()
        self._check_sizes()
        self._check_small_objects()

    def _check_config(self, config_label: str) -> None:
        ds, cfg = self.ds, self.cfg
        names = ", ".join(ds.class_names[1:6]) + ("..." if ds.num_classes > 6 else "")
        if cfg.num_classes != ds.num_classes:
            self.add("error", "num_classes", f"{config_label} num_classes={cfg.num_classes} but the dataset has "
                     f"{ds.num_classes} classes (BG + {ds.num_classes - 1}: {names}); set num_classes: "
                     f"{ds.num_classes}")
        if cfg.class_names is not None and list(cfg.class_names) != list(ds.class_names):
            self.add("warning", "class_names", f"{config_label} class_names {cfg.class_names[:6]} differ from the "
                     f"dataset's {list(ds.class_names[:6])}; use the dataset's order or remove class_names")

    def _check_class_balance(self) -> None:
        names, counts = self.ds.class_names, self.class_instances
        used = [i for i in range(1, len(counts)) if counts[i] > 0]
        for i in range(1, len(counts)):
            if counts[i] == 0 and self.num_instances > 0:
                self.add("warning", "unused_class", f"class '{names[i]}' (id {i}) has no instances; annotate some "
                         "or remove the class")
        if len(used) < 2:
            return
        hi = max(used, key=lambda i: counts[i])
        lo = min(used, key=lambda i: counts[i])
        ratio = counts[hi] / counts[lo]
        if ratio <= self.opt.imbalance_ratio:
            return
        msg = (f"class '{names[hi]}' has {counts[hi]} instances but '{names[lo]}' has {counts[lo]} "
               f"(ratio {ratio:.0f} > {self.opt.imbalance_ratio:g})")
        if self.cfg.repeat_factor_threshold is not None:
            self.add("info", "class_imbalance", f"{msg}; repeat_factor_threshold={self.cfg.repeat_factor_threshold} "
                     "oversamples the rare classes")
        else:
            frac = self.class_images[hi] / max(len(self.ds.image_info), 1)
            t = float(f"{frac:.1g}") if frac > 0 else 0.001
            self.add("warning", "class_imbalance", f"{msg}; set repeat_factor_threshold: {t:g} to oversample images "
                     "of rare classes")

    def _check_formats(self) -> None:
        if len(self.channels) > 1:
            table = ", ".join(f"{c} ch: {n}" for c, n in sorted(self.channels.items()))
            self.add("warning", "mixed_channels", f"images have mixed channel counts ({table}); convert them all to "
                     f"image_channel_count={self.cfg.image_channel_count}")
        if len(self.dtypes) > 1:
            table = ", ".join(f"{d}: {n}" for d, n in sorted(self.dtypes.items()))
            self.add("warning", "mixed_depth", f"images have mixed pixel types ({table}); each type is scaled to "
                     "[0, 1] differently (uint8 / 255, uint16 / 65535), so intensities differ: convert to one depth "
                     "or set image_normalization: per_image")
        if self.bright and self.dark and not self.cfg.invert_bright_images:
            example = self.ds.image_reference(self.bright[0])
            self.add("warning", "mixed_polarity", f"{_images(len(self.bright))} bright on average (mean intensity "
                     f"> 0.6, e.g. {example}) and {self.dark} dark (< 0.4): objects may be dark on light in some and "
                     "light on dark in others (brightfield/histology with fluorescence); set "
                     "invert_bright_images: true and image_normalization: per_image")

    def _check_sizes(self) -> None:
        if not self.sizes:
            return
        cfg, sizes = self.cfg, sizes_by_count(self.sizes)
        table = ", ".join(f"{w}x{h}: {c}" for (w, h), c in sizes[:6]) + (
            f", ... {len(sizes) - 6} more sizes" if len(sizes) > 6 else "")
        n = sum(self.sizes.values())
        self.add("info", "image_sizes", f"all {n} images are {sizes[0][0][0]}x{sizes[0][0][1]}" if len(sizes) == 1
                 else f"{len(sizes)} image sizes (WxH: count): {table}")
        if not self.scales:
            return
        s = np.frombuffer(self.scales, dtype=np.float64)
        up, down = int((s > 1.001).sum()), int((s < 0.999).sum())
        mode = cfg.image_resize_mode
        desc = {"minmax": f"minmax (image_min_dim={cfg.image_min_dim}, image_max_dim={cfg.image_max_dim})",
                "square": f"square (image_min_dim={cfg.image_min_dim}, image_max_dim={cfg.image_max_dim})",
                "pad64": f"pad64 (image_min_dim={cfg.image_min_dim})",
                "crop": f"crop (image_min_dim={cfg.image_min_dim})",
                "none": "none"}[mode]
        if len(s) and up == len(s) and np.ptp(s) < 1e-3:
            what = f"upscales every image {s[0]:.2f}x"
        elif len(s) and down == len(s) and np.ptp(s) < 1e-3:
            what = f"downscales every image {s[0]:.2f}x"
        elif up == down == 0:
            what = "keeps every image at its size"
        else:
            parts = []
            if up:
                parts.append(f"upscales {_images(up)} ({_span(s[s > 1.001].min(), s.max())})")
            if down:
                parts.append(f"downscales {_images(down)} ({_span(s.min(), s[s < 0.999].max())})")
            parts.append(f"keeps {_images(len(s) - up - down)} at their size")
            what = ", ".join(parts)
        if len(sizes) == 1:
            (w, h), _ = sizes[0]
            _, oh, ow = resize_geometry(h, w, cfg)
            what += f" (to {ow}x{oh})" if (oh, ow) != (h, w) else ""
        extra = ""
        if mode in ("square", "pad64") and self.pad_fraction and float(np.mean(self.pad_fraction)) >= 0.005:
            target = f"{cfg.image_max_dim}x{cfg.image_max_dim}" if mode == "square" else "multiples of 64"
            extra = f"; then pads to {target} ({100 * float(np.mean(self.pad_fraction)):.0f}% padding on average)"
        elif mode == "crop" and self.crop_cover:
            extra = (f"; then trains on random {cfg.image_min_dim}x{cfg.image_min_dim} crops covering "
                     f"{100 * float(np.mean(self.crop_cover)):.0f}% of an image on average")
        self.add("info", "resize", f"image_resize_mode={desc} {what}{extra}")
        self.resize_summary = {"mode": mode, "min_scale": float(s.min()), "max_scale": float(s.max()),
                               "upscaled": up, "downscaled": down, "unchanged": len(s) - up - down}
        median = float(np.median(s))
        if median >= 4:
            short = float(np.median(np.repeat([min(w, h) for (w, h), _ in sizes], [c for _, c in sizes])))
            self.add("warning", "strong_upscale", f"images are upscaled {median:.1f}x (median), which costs "
                     f"{median ** 2:.0f}x the pixels in memory and time; lower image_min_dim (e.g. "
                     f"{max(64, int(round(2 * short / 64)) * 64)}) unless the objects are tiny")
        if s.min() < 0.5:
            low = int((s < 0.5).sum())
            self.add("warning", "strong_downscale", f"{low} images are downscaled by more than 2x (down to "
                     f"{s.min():.2f}x); small objects shrink: raise image_max_dim / image_min_dim or tile the images")

    def _check_small_objects(self) -> None:
        if not self.object_sides:
            return
        sides = np.frombuffer(self.object_sides, dtype=np.float64)
        smallest = min(self.cfg.rpn_anchor_scales)
        below = int((sides < smallest).sum())
        if below == 0 or below / len(sides) < self.opt.small_object_fraction:
            return
        p5 = float(np.percentile(sides, 5))
        base = max(4, 2 ** int(math.floor(math.log2(max(p5, 1.0)))))
        suggestion = ""
        if base < smallest:
            scales = [base * 2 ** k for k in range(len(self.cfg.rpn_anchor_scales))]
            suggestion = f"; set rpn_anchor_scales: {scales}"
        self.add("warning", "small_objects", f"{below} of {len(sides)} objects ({100 * below / len(sides):.0f}%) are "
                 f"smaller than the smallest anchor ({smallest:g} px) after resizing (median side "
                 f"{float(np.median(sides)):.1f} px, 5th percentile {p5:.1f} px){suggestion}")


# ---------------------------------------------------------------------------- resize geometry


def resize_geometry(height: int, width: int, config: Config) -> tuple[float, int, int]:
    """Scale and scaled (unpadded, uncropped) size ``(scale, out_h, out_w)`` of an image under ``config``.

    The same computation as training (:func:`maskrcnn.data.resize.compute_scale`).
    """
    from .resize import compute_scale

    scale, (out_h, out_w) = compute_scale(height, width, config.image_resize_mode, config.image_min_dim,
                                          config.image_max_dim, config.image_min_scale)
    return float(scale), int(out_h), int(out_w)

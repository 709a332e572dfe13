"""Matterport's ``mrcnn.visualize``: ``display_instances``, ``random_colors``, ``apply_mask``,
``display_top_masks``, ``display_images`` with matplotlib (imported when called).

Works under any backend: with ``ax`` given nothing is shown (draw into your own figure and save
it); without, a figure is made and ``plt.show()`` is called only on an interactive backend, so
under ``Agg`` (servers, CI) the figure stays open for ``plt.savefig``. Boxes are Matterport's
``[N, (y1, x1, y2, x2)]`` and masks ``[H, W, N]``, as :meth:`MaskRCNN.detect` returns them.
Mask outlines are drawn with ``ax.contour`` (no scikit-image needed).
"""

from __future__ import annotations

import colorsys
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import DataError
from ...inference.visualize import to_display_rgb
from ._unsupported import module_getattr

__all__ = ["random_colors", "apply_mask", "display_instances", "display_images", "display_top_masks"]


def random_colors(N: int, bright: bool = True) -> list[tuple[float, float, float]]:
    """``N`` RGB colours in ``[0, 1]``: evenly spaced hues in random order (Matterport's)."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / N, 1, brightness) for i in range(N)]
    random.shuffle(colors)
    return colors


def apply_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` (RGB in ``[0, 1]``) into ``image [H, W, 3]`` where ``mask [H, W] == 1``; in place, returned."""
    for c in range(3):
        image[:, :, c] = np.where(mask == 1, image[:, :, c] * (1 - alpha) + alpha * color[c] * 255, image[:, :, c])
    return image


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _show(plt: Any) -> None:
    """``plt.show()`` on an interactive backend only (Agg and the file backends cannot show)."""
    import matplotlib

    backend = str(matplotlib.get_backend()).lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry

        still = {b.lower() for b in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)}
    except ImportError:  # matplotlib < 3.9
        still = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}
    if backend not in still:
        plt.show()


def display_instances(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray, class_ids: np.ndarray,
                      class_names: Sequence[str], scores: np.ndarray | None = None, title: str = "",
                      figsize: tuple[float, float] = (16, 16), ax: Any = None, show_mask: bool = True,
                      show_bbox: bool = True, colors: Sequence[Sequence[float]] | None = None,
                      captions: Sequence[str] | None = None) -> Any:
    """Draw instances on ``image``: translucent masks, their outlines, dashed boxes and captions
    (``"name score"``); returns the axes.

    Args:
        boxes: ``[N, (y1, x1, y2, x2)]`` pixels; masks: ``[H, W, N]``; class_ids: ``[N]``.
        class_names: names by class id; scores: ``[N]`` or None; colors: one RGB in ``[0, 1]``
            per instance (default :func:`random_colors`); captions: replace ``"name score"``.
    """
    from matplotlib import patches

    boxes, masks, class_ids = np.asarray(boxes), np.asarray(masks), np.asarray(class_ids)
    n = boxes.shape[0]
    if not n:
        print("\n*** No instances to display *** \n")
    elif masks.ndim != 3 or masks.shape[-1] != n or class_ids.shape[0] != n:
        raise DataError(f"display_instances: {n} boxes but masks {tuple(masks.shape)} and {class_ids.shape[0]} class ids; "
                        "pass masks [H, W, N] and one class id per box (as detect() returns them)")
    plt = _pyplot()
    auto_show = ax is None
    if ax is None:
        _, ax = plt.subplots(1, figsize=figsize)
    colors = list(colors) if colors is not None else random_colors(n)
    height, width = image.shape[:2]
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)
    masked = to_display_rgb(image).astype(np.float32)
    for i in range(n):
        color = colors[i]
        if not np.any(boxes[i]):
            continue  # padding row (Matterport skips it too)
        y1, x1, y2, x2 = (float(v) for v in boxes[i])
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7, linestyle="dashed",
                                           edgecolor=color, facecolor="none"))
        if captions is None:
            label = class_names[int(class_ids[i])] if 0 <= int(class_ids[i]) < len(class_names) else str(int(class_ids[i]))
            caption = f"{label} {scores[i]:.3f}" if scores is not None else label
        else:
            caption = captions[i]
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        mask = masks[:, :, i]
        if show_mask:
            masked = apply_mask(masked, mask, color)
        if mask.any() and min(mask.shape) > 1:
            padded = np.pad(mask.astype(np.float32), 1)  # closed outlines at the border too
            ax.contour(np.arange(-1, width + 1), np.arange(-1, height + 1), padded, levels=[0.5], colors=[color])
    ax.imshow(masked.astype(np.uint8))
    if auto_show:
        _show(plt)
    return ax


def display_images(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 4,
                   cmap: str | None = None, norm: Any = None, interpolation: str | None = None) -> Any:
    """Show images in a grid with optional titles; returns the figure."""
    plt = _pyplot()
    titles = list(titles) if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    fig = plt.figure(figsize=(14, 14 * rows // cols))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm, interpolation=interpolation)
    _show(plt)
    return fig


def display_top_masks(image: np.ndarray, mask: np.ndarray, class_ids: np.ndarray, class_names: Sequence[str],
                      limit: int = 4) -> Any:
    """The image and, for the ``limit`` classes with the most mask pixels, each class's masks
    (pixel value = instance number); returns the figure."""
    mask, class_ids = np.asarray(mask), np.asarray(class_ids)
    to_display = [image]
    titles = ["H x W={}x{}".format(image.shape[0], image.shape[1])]
    unique = np.unique(class_ids)
    area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique]
    top = [v[0] for v in sorted(zip(unique, area), key=lambda r: r[1], reverse=True) if v[1] > 0]
    for i in range(limit):
        class_id = top[i] if i < len(top) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        m = np.sum(m * np.arange(1, m.shape[-1] + 1), -1)
        to_display.append(m)
        titles.append(class_names[class_id] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r")


_EVALUATION_PLOTS = "maskrcnn evaluate writes precision-recall plots and a confusion matrix"
#: Matterport's other drawing helpers, and what to use instead.
_NOT_HERE = {
    "display_differences": "display_instances on the ground truth and on the detections",
    "draw_boxes": "display_instances (boxes [N, (y1, x1, y2, x2)])",
    "draw_rois": "display_instances (boxes [N, (y1, x1, y2, x2)])",
    "plot_precision_recall": _EVALUATION_PLOTS,
    "plot_overlaps": _EVALUATION_PLOTS,
    "display_weight_stats": "model.module.named_parameters()",
    "display_table": "print the rows yourself",
}

__getattr__ = module_getattr(__name__, _NOT_HERE)

"""Overlay images: masks, boxes, labels and scores in readable colours."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .results import Detections

__all__ = ["overlay", "colour", "to_display_rgb"]


def colour(i: int) -> tuple[int, int, int]:
    """A distinct saturated colour for index ``i`` (golden-ratio hue steps)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8/uint16/float -> uint8 RGB for display (16-bit and float are rescaled by their range)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def overlay(image: np.ndarray, det: Detections, alpha: float = 0.45, by_class: bool = False) -> Image.Image:
    """Draw ``det`` on ``image [H, W, C]``: translucent masks, box outlines and ``name score`` labels."""
    rgb = to_display_rgb(image).astype(np.float32)
    cols = [colour(int(c) if by_class else i) for i, c in enumerate(det.class_ids.tolist())]
    for m, col in zip(det.masks, cols):
        rgb[m] = rgb[m] * (1 - alpha) + np.asarray(col, np.float32) * alpha
    im = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    width = max(1, round(min(im.size) / 300))
    for box, name, score, col in zip(det.boxes.tolist(), det.names, det.scores.tolist(), cols):
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=col, width=width)
        text = f"{name} {score:.2f}"
        tb = draw.textbbox((x1, y1), text, font=font)
        ty = y1 - (tb[3] - tb[1]) - 2 if y1 - (tb[3] - tb[1]) - 2 >= 0 else y1
        tb = draw.textbbox((x1, ty), text, font=font)
        draw.rectangle([tb[0] - 1, tb[1] - 1, tb[2] + 1, tb[3] + 1], fill=(0, 0, 0))
        draw.text((x1, ty), text, fill=col, font=font)
    return im

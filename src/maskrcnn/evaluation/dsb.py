"""The Data Science Bowl 2018 score and the competition's run-length encoding.

Score of one image: the mean over IoU thresholds t in 0.50, 0.55, ..., 0.95 of
``TP(t) / (TP(t) + FP(t) + FN(t))``, where a predicted and a true mask form a true positive when
their IoU is *above* t (strictly, as in the competition's reference implementation), each mask
being used at most once (one-to-one matching, greedy by decreasing IoU; above 0.5 and without
overlaps the matching is unique anyway). Dataset score: the mean over images.
Edge cases: no true and no predicted masks -> 1; either set empty but not the other -> 0.

Overlaps: the competition required non-overlapping predictions, so predicted masks are made
disjoint before scoring, by score: a pixel claimed by several masks stays with the
highest-scoring one and masks left empty are dropped. This is the convention that Kaggle
submissions used and that Matterport's nucleus sample (``mask_to_rle``) intends; note that its
implementation multiplies each mask by ``argsort(scores)[::-1] + 1`` rather than by its score
rank, which gives contested pixels to the lower-scoring mask when detections are sorted by
decreasing score, as Matterport's are. We implement the intended rule.

Run-length encoding (``rle_encode`` / ``rle_decode``): pixels numbered top to bottom, then left
to right (column-major), from 1; the string is ``"start length start length ..."``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .common import EvaluationError, masks_to_rles, rle_iou

__all__ = [
    "DSB_THRESHOLDS",
    "dsb_image_score",
    "dsb_score",
    "dsb_score_from_iou",
    "mask_iou",
    "remove_overlaps",
    "rle_decode",
    "rle_encode",
]

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


# ---------------------------------------------------------------------------- run-length code
def rle_encode(mask: np.ndarray) -> str:
    """Encode a mask ``[H, W]`` (bool or 0/1) as the competition's RLE string (column-major, 1-based)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise EvaluationError(f"rle_encode: expected a mask [H, W], got shape {tuple(mask.shape)}; encode one instance at a time")
    flat = np.concatenate([[False], mask.T.reshape(-1).astype(bool), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # 1-based starts and (exclusive) ends
    runs = edges.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return " ".join(str(int(v)) for v in runs.reshape(-1))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode the competition's RLE string to a bool mask of ``shape`` ``(H, W)``."""
    h, w = int(shape[0]), int(shape[1])
    try:
        values = np.array([int(v) for v in rle.split()], dtype=np.int64)
    except ValueError:
        raise EvaluationError(f"rle_decode: {rle[:40]!r} is not a list of integers 'start length ...'") from None
    if values.size % 2:
        raise EvaluationError(f"rle_decode: odd number of values in {rle[:40]!r}; expected 'start length' pairs")
    starts, lengths = values[0::2] - 1, values[1::2]
    ends = starts + lengths
    if values.size and (starts.min() < 0 or lengths.min() < 0 or ends.max() > h * w):
        raise EvaluationError(f"rle_decode: run outside the {h}x{w} image in {rle[:40]!r}; check the shape (H, W) and 1-based starts")
    flat = np.zeros(h * w, dtype=bool)
    for s, e in zip(starts, ends):
        flat[s:e] = True
    return flat.reshape(w, h).T


# ---------------------------------------------------------------------------------- scoring
def _as_masks(masks: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    arr = np.asarray(masks, dtype=bool)
    if arr.ndim != 3:
        raise EvaluationError(f"{name}: expected masks [N, H, W], got shape {tuple(arr.shape)}")
    return arr


def remove_overlaps(masks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Make instance masks disjoint: each pixel stays with the highest-scoring mask covering it.

    Args:
        masks: ``[N, H, W]`` bool.
        scores: ``[N]``; ``None`` means the masks are already in decreasing score order.

    Returns:
        ``[M, H, W]`` bool, the non-empty disjoint masks in decreasing score order (M <= N).
    """
    masks = _as_masks(masks, "masks")
    n = masks.shape[0]
    order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    claimed = np.zeros(masks.shape[1:], dtype=bool)
    out = []
    for i in order:
        m = masks[i] & ~claimed
        claimed |= m
        if m.any():
            out.append(m)
    return np.stack(out) if out else np.zeros((0, *masks.shape[1:]), dtype=bool)


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[A, B]`` float64 between bool masks ``[A, H, W]`` and ``[B, H, W]``.

    Computed on COCO RLEs (encoded 64 masks at a time), so memory stays near one image.
    """
    a = _as_masks(masks_a, "masks_a")
    b = _as_masks(masks_b, "masks_b")
    if a.shape[0] and b.shape[0] and a.shape[1:] != b.shape[1:]:
        raise EvaluationError(f"masks: image sizes differ, {a.shape[1:]} vs {b.shape[1:]}; pass masks of the same image")
    rles_a = [r for i in range(0, a.shape[0], 64) for r in masks_to_rles(a[i : i + 64])]
    rles_b = [r for i in range(0, b.shape[0], 64) for r in masks_to_rles(b[i : i + 64])]
    return rle_iou(rles_a, rles_b)


def _greedy_matches(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one pairs with IoU > threshold, matched greedily by decreasing IoU."""
    rows, cols = np.nonzero(iou > threshold)
    if rows.size == 0:
        return 0
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
    return len(used_r)


def dsb_score_from_iou(iou: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS) -> float:
    """DSB score of one image from the IoU matrix ``[num_true, num_pred]`` of disjoint masks."""
    iou = np.asarray(iou, dtype=np.float64)
    n_true, n_pred = iou.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    values = []
    for t in thresholds:
        tp = _greedy_matches(iou, float(t))
        values.append(tp / (n_true + n_pred - tp))  # TP + FP + FN
    return float(np.mean(values))


def dsb_image_score(true_masks: np.ndarray, pred_masks: np.ndarray, pred_scores: np.ndarray | None = None) -> float:
    """DSB score of one image.

    Args:
        true_masks: ``[N, H, W]`` bool ground-truth nuclei (expected disjoint, as in DSB).
        pred_masks: ``[M, H, W]`` bool predictions; overlaps are removed by score first.
        pred_scores: ``[M]``; ``None`` means ``pred_masks`` is in decreasing score order.
    """
    true_masks = _as_masks(true_masks, "true_masks")
    pred = remove_overlaps(pred_masks, pred_scores)
    return dsb_score_from_iou(mask_iou(true_masks, pred))


def dsb_score(
    true_masks: Iterable[np.ndarray],
    pred_masks: Iterable[np.ndarray],
    pred_scores: Iterable[np.ndarray | None] | None = None,
) -> float:
    """Dataset DSB score: the mean of :func:`dsb_image_score` over images (0 images -> NaN)."""
    true_list = list(true_masks)
    pred_list = list(pred_masks)
    if len(true_list) != len(pred_list):
        raise EvaluationError(f"dsb_score: {len(true_list)} images of true masks but {len(pred_list)} of predictions")
    score_list = [None] * len(true_list) if pred_scores is None else list(pred_scores)
    if not true_list:
        return float("nan")
    return float(np.mean([dsb_image_score(t, p, s) for t, p, s in zip(true_list, pred_list, score_list)]))

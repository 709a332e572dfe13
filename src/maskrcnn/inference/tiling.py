"""Tiled detection for images larger than the model's input (e.g. 8,000 x 8,000 pixels).

``detect_tiled(predictor, image, tile_size=1024, overlap=128)`` cuts the image into overlapping
tiles of ``tile_size`` pixels (the last tile of a row or column is aligned with the image's edge,
so every tile has the same size and the image is never padded), detects on each tile, moves the
instances to original-image coordinates and merges the instances that tile borders cut or that
two tiles both see:

1. An instance is *cut* when its mask comes within ``edge_margin`` pixels of an inner tile edge
   (an edge inside the image; the image's own border cuts nothing).
2. Two instances of the same class from different tiles *match* when their masks, compared only
   inside the region both tiles see, have IoU >= ``merge_iou`` or intersection over the smaller
   area >= ``merge_iom``. Each tile sees everything inside that shared region, so the two views
   of one object agree there however differently the tile borders cut them. Matches are joined
   transitively (an object wider than a tile is cut in three or more tiles).
3. A group with an uncut member is an object that some tile sees whole: the best-scoring uncut
   member is kept (the cut pieces and duplicate whole views are dropped, a mask-NMS). A group of
   cut pieces only (an object larger than the overlap) becomes the union of the pieces' masks and
   boxes. The merged score is the group's highest.

An object no larger than ``overlap - 2 * edge_margin`` along each axis is always seen whole by
some tile.

Memory: the image is read one tile at a time where the format allows (numpy arrays and memory
maps are sliced without copying; uncompressed TIFFs are memory-mapped; PNG/JPEG are decoded once
by PIL and cropped per tile: :mod:`maskrcnn.inference.tile_source`), and per-tile work (the tile, the network's activations, the tile's
full-size masks) is freed before the next batch of tiles. Results keep each instance's mask
cropped to its own extent (:class:`TiledDetections`), never an ``[N, H, W]`` array: the peak
memory depends on the tile size, not the image size (``benchmarks/tiling.py`` measures it).

Each tile is an image for the predictor, so the model resizes it as any image (``minmax``: short
side to ``image_min_dim``). Use ``tile_size = config.image_min_dim`` to detect at the image's own
resolution.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MaskRCNNError
from .results import Detections, InstanceResults
from .tile_source import TileSource, open_tiled_image

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = ["tile_starts", "tile_grid", "detect_tiled", "TiledDetections", "open_tiled_image", "crop_to_rle"]


# --------------------------------------------------------------------------- grid


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``min(tile, length)`` covering ``[0, length)`` with at least
    ``overlap`` pixels shared by neighbours; the last tile ends exactly at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles as ``(x0, y0, x1, y1)`` (x1/y1 exclusive), row by row."""
    _check_tiling(tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    return [(x, y, x + tw, y + th) for y in tile_starts(height, tile_size, overlap)
            for x in tile_starts(width, tile_size, overlap)]


def _check_tiling(tile_size: int, overlap: int) -> None:
    if tile_size < 32:
        raise MaskRCNNError(f"tile_size={tile_size}: must be at least 32 pixels")
    if not 0 <= overlap < tile_size:
        raise MaskRCNNError(f"overlap={overlap}: must be >= 0 and smaller than tile_size={tile_size}")


# --------------------------------------------------------------------------- results


def crop_to_rle(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> dict:
    """COCO RLE (compressed, ``counts`` as str) of a ``height x width`` mask that is zero except for
    the bool ``crop`` placed at row ``y0``, column ``x0``; built from the crop's runs, never
    allocating the full mask. Equal to ``pycocotools.mask.encode`` of the full mask."""
    from ..data.rle import from_counts

    total = height * width
    if crop.size == 0 or not crop.any():
        counts = [total]
    else:
        h, w = crop.shape
        cols = np.zeros((w, h + 2), dtype=np.int8)
        cols[:, 1:-1] = crop.T  # column-major order, as COCO RLE runs go down columns
        d = np.diff(cols, axis=1)
        sc, sr = np.nonzero(d == 1)
        ec, er = np.nonzero(d == -1)
        starts = (x0 + sc).astype(np.int64) * height + y0 + sr
        ends = (x0 + ec).astype(np.int64) * height + y0 + er
        joined = starts[1:] == ends[:-1]  # a run continuing from a column's bottom into the next's top
        if joined.any():
            starts = np.concatenate([starts[:1], starts[1:][~joined]])
            ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
        gaps = np.concatenate([starts[:1], starts[1:] - ends[:-1]])
        runs = np.empty(2 * len(starts) + 1, dtype=np.int64)
        runs[0:-1:2] = gaps
        runs[1::2] = ends - starts
        runs[-1] = total - ends[-1]
        counts = runs.tolist() if runs[-1] else runs[:-1].tolist()  # no trailing empty run (as pycocotools)
    return from_counts(counts, height, width)


@dataclass
class TiledDetections(InstanceResults):
    """Detections of a large image in its original pixel coordinates, with compact masks.

    Attributes:
        boxes: ``[N, 4]`` float32 ``(x1, y1, x2, y2)``, x2/y2 exclusive edges.
        class_ids: ``[N]`` int64; scores: ``[N]`` float32, sorted descending.
        mask_crops: ``N`` bool arrays, each instance's mask cropped to its own extent.
        mask_offsets: ``[N, 2]`` int64 ``(y0, x0)``: where each crop's top-left pixel is in the image.
        class_names, image_size ``(H, W)``, file_name: as in :class:`Detections`.
        tiles: the tiles ``(x0, y0, x1, y1)`` that were detected on.
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    mask_crops: list[np.ndarray]
    mask_offsets: np.ndarray
    class_names: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    file_name: str | None = None
    tiles: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def areas(self) -> np.ndarray:
        """Mask area (pixels) of each instance."""
        return np.array([int(c.sum()) for c in self.mask_crops], dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Memory held by the results (masks, boxes, scores)."""
        return int(sum(c.nbytes for c in self.mask_crops) + self.boxes.nbytes + self.scores.nbytes
                   + self.class_ids.nbytes + self.mask_offsets.nbytes)

    def mask(self, i: int) -> np.ndarray:
        """Instance ``i``'s mask at the full image size, ``[H, W]`` bool (rendered on demand)."""
        return self.mask_window(i, 0, 0, self.image_size[1], self.image_size[0])

    def mask_window(self, i: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Instance ``i``'s mask inside the window ``[y0, y1) x [x0, x1)`` of the image, ``[y1-y0, x1-x0]`` bool."""
        out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        crop = self.mask_crops[i]
        oy, ox = (int(v) for v in self.mask_offsets[i])
        ya, yb = max(y0, oy), min(y1, oy + crop.shape[0])
        xa, xb = max(x0, ox), min(x1, ox + crop.shape[1])
        if ya < yb and xa < xb:
            out[ya - y0: yb - y0, xa - x0: xb - x0] = crop[ya - oy: yb - oy, xa - ox: xb - ox]
        return out

    def select(self, indices: np.ndarray) -> "TiledDetections":
        return TiledDetections(self.boxes[indices], self.class_ids[indices], self.scores[indices],
                               [self.mask_crops[i] for i in indices], self.mask_offsets[indices], self.class_names,
                               self.image_size, self.file_name, self.tiles)

    def rle(self) -> list[dict]:
        """COCO RLE of each mask at the full image size (encoded from the crops)."""
        h, w = self.image_size
        return [crop_to_rle(c, int(o[0]), int(o[1]), h, w) for c, o in zip(self.mask_crops, self.mask_offsets)]

    def to_detections(self) -> Detections:
        """A :class:`Detections` with full-size ``[N, H, W]`` masks (only for images that fit in memory N times)."""
        h, w = self.image_size
        masks = np.zeros((len(self), h, w), dtype=bool)
        for i, (crop, (oy, ox)) in enumerate(zip(self.mask_crops, self.mask_offsets.tolist())):
            masks[i, oy: oy + crop.shape[0], ox: ox + crop.shape[1]] = crop
        return Detections(self.boxes.copy(), self.class_ids.copy(), self.scores.copy(), masks, self.class_names,
                          self.image_size, self.file_name)


# --------------------------------------------------------------------------- detection


@dataclass
class _Instances:
    """Per-tile instances moved to image coordinates (growing lists, then arrays)."""

    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    class_ids: list[int] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    extents: list[tuple[int, int, int, int]] = field(default_factory=list)  # crop (x0, y0, x1, y1) in the image
    tile: list[int] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)


def detect_tiled(predictor: "Predictor", image: Any, *, tile_size: int = 1024, overlap: int = 128,
                 batch_size: int = 1, score_threshold: float | None = None, mask_threshold: float | None = None,
                 merge_iou: float = 0.5, merge_iom: float | None = 0.8, edge_margin: int = 2,
                 class_agnostic: bool = False, name: str | None = None) -> TiledDetections:
    """Detect on a large image tile by tile and merge instances across tile borders (see the module doc).

    Args:
        image: a path (TIFF memory-mapped when uncompressed; other formats decoded once), a numpy array
            or memmap ``[H, W(, C)]``, a tensor ``[C, H, W]`` or a PIL image.
        tile_size, overlap: tile side and the least overlap of neighbouring tiles, pixels. The overlap
            should exceed the largest object you expect to be cut (see the module doc).
        batch_size: tiles per forward pass (all tiles have one size).
        score_threshold, mask_threshold: as in :meth:`Predictor.detect`, applied per tile.
        merge_iou, merge_iom: match thresholds of two tiles' instances, mask IoU and intersection over
            the smaller mask, both measured inside the two tiles' shared region (``merge_iom=None``: IoU only).
        edge_margin: an instance whose mask comes within this many pixels of an inner tile edge is cut.
        class_agnostic: match instances of different classes too.

    Returns:
        :class:`TiledDetections` in original-image coordinates, sorted by score.
    """
    _check_tiling(tile_size, overlap)
    if batch_size < 1:
        raise MaskRCNNError(f"batch_size={batch_size}: must be >= 1")
    own = not isinstance(image, TileSource)  # close what we opened, not the caller's source
    src = open_tiled_image(image, name)
    if name is None and isinstance(image, (str, os.PathLike)):
        name = Path(image).name
    height, width = src.height, src.width
    tiles = tile_grid(height, width, tile_size, overlap)
    inst = _Instances()
    try:
        for b in range(0, len(tiles), batch_size):
            batch = list(range(b, min(b + batch_size, len(tiles))))
            arrays = [src.read(*tiles[t]) for t in batch]
            dets = predictor.detect(arrays, batch_size=len(arrays), score_threshold=score_threshold,
                                    mask_threshold=mask_threshold)
            del arrays
            for t, det in zip(batch, dets):
                _collect(inst, det, t, tiles[t], height, width, edge_margin)
            det = dets = None  # the tiles' full-size masks: only the crops are kept
    finally:
        if own:
            src.close()
    keep = _merge(inst, tiles, merge_iou, merge_iom, class_agnostic)
    return _finish_results(keep, predictor, (height, width), name, tiles)


def _collect(inst: _Instances, det: Detections, t: int, tile: tuple[int, int, int, int], height: int, width: int,
             margin: int) -> None:
    """Append a tile's instances in image coordinates, masks cropped (copied) to their extent."""
    from ..data.augment import boxes_from_masks

    tx0, ty0, tx1, ty1 = tile
    n = len(det)
    if n == 0:
        return
    masks = det.masks
    extents = boxes_from_masks(masks).astype(np.int64)  # [N, 4] tight xyxy in the tile; empty masks: 0
    tw, th = tx1 - tx0, ty1 - ty0
    for i in range(n):
        xs, ys, xe, ye = (int(v) for v in extents[i])
        if xe > xs:
            crop = masks[i, ys:ye, xs:xe].copy()
            ex = (xs, ys, xe, ye)
        else:  # an empty mask: its box decides whether it is cut; it matches nothing
            bx = det.boxes[i]
            ex = (int(np.clip(np.floor(bx[0]), 0, tw)), int(np.clip(np.floor(bx[1]), 0, th)),
                  int(np.clip(np.ceil(bx[2]), 0, tw)), int(np.clip(np.ceil(bx[3]), 0, th)))
            xs, ys = ex[0], ex[1]
            crop = np.zeros((0, 0), dtype=bool)
        cut = ((tx0 > 0 and ex[0] <= margin) or (ty0 > 0 and ex[1] <= margin)
               or (tx1 < width and tw - ex[2] <= margin) or (ty1 < height and th - ex[3] <= margin))
        inst.boxes.append(det.boxes[i].astype(np.float64) + (tx0, ty0, tx0, ty0))
        inst.scores.append(float(det.scores[i]))
        inst.class_ids.append(int(det.class_ids[i]))
        inst.crops.append(crop)
        inst.extents.append((tx0 + xs, ty0 + ys, tx0 + xs + crop.shape[1], ty0 + ys + crop.shape[0]))
        inst.tile.append(t)
        inst.cut.append(bool(cut))


def _overlapping_tile_pairs(tiles: list[tuple[int, int, int, int]]) -> Iterator[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of tiles that share pixels (using the grid's row/column structure)."""
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    tw = tiles[0][2] - tiles[0][0]
    th = tiles[0][3] - tiles[0][1]

    def axis_pairs(starts: list[int], size: int) -> list[tuple[int, int]]:
        out = []
        for i in range(len(starts)):
            j = i
            while j < len(starts) and starts[j] < starts[i] + size:
                out.append((i, j))
                j += 1
        return out

    ncol = len(xs)
    for ri, rj in axis_pairs(ys, th):
        for ci, cj in axis_pairs(xs, tw):
            if ri == rj and ci == cj:
                continue
            yield ri * ncol + ci, rj * ncol + cj
            if ri != rj and ci != cj:
                yield ri * ncol + cj, rj * ncol + ci


def _area_in(crop: np.ndarray, ext: tuple[int, int, int, int], rect: tuple[int, int, int, int]) -> int:
    x0, y0 = max(ext[0], rect[0]), max(ext[1], rect[1])
    x1, y1 = min(ext[2], rect[2]), min(ext[3], rect[3])
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(crop[y0 - ext[1]: y1 - ext[1], x0 - ext[0]: x1 - ext[0]].sum())


def _merge(inst: _Instances, tiles: list[tuple[int, int, int, int]], merge_iou: float, merge_iom: float | None,
           class_agnostic: bool) -> list[dict]:
    """Group matching instances of overlapping tiles; one merged instance per group."""
    groups = _match_groups(inst, tiles, merge_iou, merge_iom, class_agnostic)
    return [_merge_group(inst, members) for members in groups]


class _UnionFind:
    """Disjoint sets of ``0..n-1``; each set's root is its smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        """The sets, in the order of their smallest member, members in increasing order."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def _match_groups(inst: _Instances, tiles: list[tuple[int, int, int, int]], merge_iou: float,
                  merge_iom: float | None, class_agnostic: bool) -> list[list[int]]:
    """Instances joined transitively by the matches between each pair of overlapping tiles."""
    n = len(inst.scores)
    sets = _UnionFind(n)
    if n and len(tiles) > 1:
        ext = np.asarray(inst.extents, dtype=np.int64).reshape(-1, 4)
        tile_of = np.asarray(inst.tile)
        cls = None if class_agnostic else np.asarray(inst.class_ids)
        order = np.argsort(tile_of, kind="stable")
        bounds = np.searchsorted(tile_of[order], np.arange(len(tiles) + 1))
        by_tile = [order[bounds[t]: bounds[t + 1]] for t in range(len(tiles))]
        for a, b in _overlapping_tile_pairs(tiles):
            for i, j in _tile_pair_matches(inst, ext, cls, by_tile[a], by_tile[b], tiles[a], tiles[b],
                                           merge_iou, merge_iom):
                sets.union(i, j)
    return sets.groups()


def _tile_pair_matches(inst: _Instances, ext: np.ndarray, cls: np.ndarray | None, ia: np.ndarray, ib: np.ndarray,
                       ta: tuple[int, int, int, int], tb: tuple[int, int, int, int], merge_iou: float,
                       merge_iom: float | None) -> Iterator[tuple[int, int]]:
    """Pairs ``(i, j)`` of instances of tile ``ta`` (indices ``ia``) and tile ``tb`` (``ib``) whose masks,
    compared inside the region both tiles see, have IoU >= ``merge_iou`` or intersection over the
    smaller area >= ``merge_iom``; same class unless ``cls`` is None (class-agnostic)."""
    if not len(ia) or not len(ib):
        return
    shared = (max(ta[0], tb[0]), max(ta[1], tb[1]), min(ta[2], tb[2]), min(ta[3], tb[3]))
    ea, eb = ext[ia], ext[ib]
    # extents (clipped to the shared region) that intersect each other
    x0 = np.maximum(np.maximum(ea[:, None, 0], eb[None, :, 0]), shared[0])
    y0 = np.maximum(np.maximum(ea[:, None, 1], eb[None, :, 1]), shared[1])
    x1 = np.minimum(np.minimum(ea[:, None, 2], eb[None, :, 2]), shared[2])
    y1 = np.minimum(np.minimum(ea[:, None, 3], eb[None, :, 3]), shared[3])
    cand = (x1 > x0) & (y1 > y0)
    if cls is not None:
        cand &= cls[ia][:, None] == cls[ib][None, :]
    area_in_shared: dict[int, int] = {}  # instances of different tiles: one cache serves both sides

    def area(k: int) -> int:
        if k not in area_in_shared:
            area_in_shared[k] = _area_in(inst.crops[k], inst.extents[k], shared)
        return area_in_shared[k]

    for u, v in zip(*(p.tolist() for p in np.nonzero(cand))):
        i, j = int(ia[u]), int(ib[v])
        ai, aj = area(i), area(j)
        if ai == 0 or aj == 0:
            continue
        window = (int(x0[u, v]), int(y0[u, v]), int(x1[u, v]), int(y1[u, v]))
        inter = int(np.count_nonzero(_crop_in(inst, i, window) & _crop_in(inst, j, window)))
        if inter == 0:
            continue
        if inter / (ai + aj - inter) >= merge_iou or (merge_iom is not None and inter / min(ai, aj) >= merge_iom):
            yield i, j


def _crop_in(inst: _Instances, k: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """Instance ``k``'s crop inside ``window`` ``(x0, y0, x1, y1)`` (image pixels, inside its extent): a view."""
    e = inst.extents[k]
    return inst.crops[k][window[1] - e[1]: window[3] - e[1], window[0] - e[0]: window[2] - e[0]]


def _merge_group(inst: _Instances, members: list[int]) -> dict:
    """One instance for a group: the best-scoring uncut member when there is one, else the union of
    the cut pieces (boxes and masks); the score is the group's highest."""
    best = max(members, key=lambda k: (inst.scores[k], -k))
    score = inst.scores[best]
    whole = [k for k in members if not inst.cut[k]]
    if whole or len(members) == 1:
        k = max(whole, key=lambda k: (inst.scores[k], -k)) if whole else members[0]
        return {"box": inst.boxes[k], "score": score, "class_id": inst.class_ids[k],
                "crop": inst.crops[k], "offset": (inst.extents[k][1], inst.extents[k][0])}
    boxes = np.stack([inst.boxes[k] for k in members])
    box = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    pieces = [k for k in members if inst.crops[k].size]
    if not pieces:
        return {"box": box, "score": score, "class_id": inst.class_ids[best], "crop": np.zeros((0, 0), dtype=bool),
                "offset": (0, 0)}
    ex = np.asarray([inst.extents[k] for k in pieces], dtype=np.int64).reshape(-1, 4)
    gx0, gy0, gx1, gy1 = int(ex[:, 0].min()), int(ex[:, 1].min()), int(ex[:, 2].max()), int(ex[:, 3].max())
    crop = np.zeros((gy1 - gy0, gx1 - gx0), dtype=bool)
    for k in pieces:
        e = inst.extents[k]
        crop[e[1] - gy0: e[3] - gy0, e[0] - gx0: e[2] - gx0] |= inst.crops[k]
    return {"box": box, "score": score, "class_id": inst.class_ids[best], "crop": crop, "offset": (gy0, gx0)}


def _finish_results(merged: list[dict], predictor: "Predictor", size: tuple[int, int], name: str | None,
                    tiles: list[tuple[int, int, int, int]]) -> TiledDetections:
    # by score; ties keep tile order (groups come in the order of their first instance)
    merged.sort(key=lambda d: -d["score"])
    n = len(merged)
    return TiledDetections(
        boxes=np.array([d["box"] for d in merged], dtype=np.float32).reshape(n, 4),
        class_ids=np.array([d["class_id"] for d in merged], dtype=np.int64),
        scores=np.array([d["score"] for d in merged], dtype=np.float32),
        mask_crops=[d["crop"] for d in merged],
        mask_offsets=np.array([d["offset"] for d in merged], dtype=np.int64).reshape(n, 2),
        class_names=list(getattr(predictor, "class_names", [])), image_size=size, file_name=name, tiles=tiles)

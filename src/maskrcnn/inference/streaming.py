"""Streaming detection over folders, file lists, frame iterators and videos, in bounded memory.

``stream_detect(predictor, source)`` is a generator of ``(name, Detections)``: images are read one
at a time (or one batch at a time), detected, and handed to the caller; nothing is kept once the
caller lets go of a result, so memory does not grow with the number of images. Sources:

* a folder: image files (:data:`~maskrcnn.data.images.IMAGE_EXTENSIONS`) found recursively, in
  sorted order (the order of ``sorted(folder.rglob("*"))``), walked lazily
  (:func:`~maskrcnn.data.images.iter_image_files`), named by their path relative to the folder;
* a video file (:data:`VIDEO_EXTENSIONS`) read frame by frame with imageio and ffmpeg (the
  ``video`` extra: ``pip install 'maskrcnn[video]'``); frames are named ``"clip.mp4:000012"``. Any
  multi-frame file imageio reads without extra backends (animated GIF, multi-page TIFF) can be
  streamed with :func:`iter_video` too;
* one image file, array, tensor or PIL image; a ``[N, H, W, C]`` array of frames;
* any iterable (a list of paths, a generator of arrays ...) of images or ``(name, image)`` pairs;
  a folder in the list stands for its image files, named by their full path (``folder/sub/x.png``),
  a video path for its frames (this is how ``maskrcnn detect`` enumerates its arguments).

With ``skip_errors`` a bad input (an unreadable or hostile image, a video that cannot be opened
or stops decoding) is reported to ``on_skip(name, error)`` and the stream goes on.

:func:`detect_to_jsonl` writes COCO results (RLE masks) as JSON lines while streaming, one line
per detection, flushed per image, without keeping any mask; each skipped input can be written as
one more JSON line (``skipped_out``).

Consecutive images of one size are batched together (``batch_size``); an image of another size
starts a new batch, because padding a batch to its largest image changes the smaller images'
detections: results never depend on ``batch_size`` or the order of files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..data.images import iter_image_files
from ..errors import DataError, MaskRCNNError, first_line
from .results import Detections

if TYPE_CHECKING:
    from .predictor import Predictor

__all__ = [
    "VIDEO_EXTENSIONS", "iter_image_files", "iter_video", "iter_source", "stream_detect", "detect_to_jsonl",
    "StreamSummary", "read_jsonl",
]

#: File name extensions read as videos (frame by frame) when a path is given as the source.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


# --------------------------------------------------------------------------- sources


def iter_video(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Frames of a video (or any multi-frame image imageio reads: GIF, multi-page TIFF) as
    ``(name, [H, W, C] array)``, decoded one at a time; names are ``"{file name}:{frame:06d}"``.

    Needs imageio (videos also its ffmpeg backend): the ``video`` extra. A missing reader, a file
    that cannot be opened and a frame that cannot be decoded are :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    try:
        import imageio.v3 as iio
    except ImportError:
        raise DataError(f"{path}: reading videos needs the video extra (pip install 'maskrcnn[video]'); "
                        "or extract the frames to a folder and stream the folder") from None
    i = 0
    try:
        frames = iio.imiter(path)
        frame = next(frames, None)
        while frame is not None:
            yield f"{path.name}:{i:06d}", frame
            i += 1
            frame = next(frames, None)
    except MaskRCNNError:
        raise
    except Exception as exc:  # imageio and its backends raise OSError, ValueError, IndexError, RuntimeError ...
        text = first_line(exc, "")
        if i == 0 and ("backend" in text or "plugin" in text):
            raise DataError(f"{path}: no video reader installed (pip install 'maskrcnn[video]'); "
                            "or extract the frames to a folder and stream the folder") from None
        where = f"frame {i}" if i else "the video"
        raise DataError(f"{path}: cannot read {where} ({type(exc).__name__}: {text}); re-encode or remove it") from None


def _is_image_like(x: Any) -> bool:
    import torch

    return isinstance(x, (np.ndarray, torch.Tensor)) or (hasattr(x, "mode") and hasattr(x, "size"))


def _guarded(name: str, items: Iterator[tuple[str, Any]],
             on_error: Callable[[str, MaskRCNNError], None] | None) -> Iterator[tuple[str, Any]]:
    """``items``; with ``on_error``, a :class:`MaskRCNNError` while producing them is reported and ends them."""
    if on_error is None:
        yield from items
        return
    try:
        yield from items
    except MaskRCNNError as exc:
        on_error(name, exc)


def _expand_path(p: Path, name: str, recursive: bool) -> Iterator[tuple[str, Any]]:
    """A path in a list: a folder's image files (named by path), a video's frames, or the file itself."""
    if p.is_dir():
        for f in iter_image_files(p, recursive=recursive):
            yield str(f), f
    elif p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
        yield from iter_video(p)
    else:
        yield name, p


def iter_source(source: Any, *, recursive: bool = True,
                on_error: Callable[[str, MaskRCNNError], None] | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, image)`` pairs of a source (see the module doc); images are paths, arrays, tensors
    or PIL images, read later by :meth:`Predictor.to_array`.

    With ``on_error(name, error)``, a video or listed folder that cannot be read is reported there
    and the next input follows (a top-level folder that does not exist is still an error).
    """
    import torch

    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            for f in iter_image_files(p, recursive=recursive):
                yield f.relative_to(p).as_posix(), f
        elif p.is_file():
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                yield from _guarded(str(p), iter_video(p), on_error)
            else:
                yield str(p), p
        else:
            raise DataError(f"{p}: no such file or folder; pass a folder, an image, a video or a list of images")
        return
    if isinstance(source, np.ndarray) and source.ndim == 4 or isinstance(source, torch.Tensor) and source.dim() == 4:
        for i in range(source.shape[0]):
            yield f"frame_{i:06d}", source[i]
        return
    if _is_image_like(source):
        yield "image_000000", source
        return
    if not isinstance(source, Iterable):
        raise DataError(f"unsupported source type {type(source).__name__}; pass a folder, a video file, "
                        "a list of images or an iterator of arrays")
    for i, item in enumerate(source):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            yield item
        elif isinstance(item, (str, os.PathLike)):
            yield from _guarded(str(item), _expand_path(Path(item), str(Path(item)), recursive), on_error)
        else:
            yield f"image_{i:06d}", item


# --------------------------------------------------------------------------- detection


def stream_detect(predictor: "Predictor", source: Any, *, batch_size: int = 1, score_threshold: float | None = None,
                  mask_threshold: float | None = None, recursive: bool = True, skip_errors: bool = False,
                  on_skip: Callable[[str, MaskRCNNError], None] | None = None,
                  return_images: bool = False) -> Iterator[tuple[Any, ...]]:
    """Detect on every image of ``source`` lazily, yielding ``(name, Detections)`` in source order.

    At most ``batch_size`` images (of one size) and their detections are alive inside the generator;
    a result is freed as soon as the caller drops it. ``Detections.file_name`` is the name.

    Args:
        source: a folder (recursive, sorted), a video file, an image, a ``[N, H, W, C]`` array, or an
            iterable of images / paths / ``(name, image)`` pairs (see the module doc).
        batch_size: images per forward pass; only consecutive images of the same size share a batch.
        score_threshold, mask_threshold: as in :meth:`Predictor.detect`.
        skip_errors: an unreadable image (a :class:`MaskRCNNError`, e.g. a corrupt or hostile file)
            or a video or listed folder that cannot be read is skipped and reported to
            ``on_skip(name, error)`` (default: a warning) instead of raising. Skips are reported as
            they happen, which may be before the results of earlier images (still in a batch).
        return_images: yield ``(name, Detections, image)`` with the ``[H, W, C]`` array the model
            was given (for overlays) instead of pairs.
    """
    if batch_size < 1:
        raise MaskRCNNError(f"batch_size={batch_size}: must be >= 1")

    def skip(name: str, exc: MaskRCNNError) -> None:
        if on_skip is not None:
            on_skip(name, exc)
        else:
            warnings.warn(f"skipped {name}: {exc}", stacklevel=3)

    names: list[str] = []
    arrays: list[np.ndarray] = []
    for name, item in iter_source(source, recursive=recursive, on_error=skip if skip_errors else None):
        try:
            arr = predictor.to_array(item, name)
        except MaskRCNNError as exc:
            if not skip_errors:
                raise
            skip(name, exc)
            continue
        del item
        if arrays and arrays[0].shape[:2] != arr.shape[:2]:
            yield from _flush(predictor, names, arrays, score_threshold, mask_threshold, return_images)
        names.append(name)
        arrays.append(arr)
        del arr
        if len(arrays) >= batch_size:
            yield from _flush(predictor, names, arrays, score_threshold, mask_threshold, return_images)
    if arrays:
        yield from _flush(predictor, names, arrays, score_threshold, mask_threshold, return_images)


def _flush(predictor: "Predictor", names: list[str], arrays: list[np.ndarray], score_threshold: float | None,
           mask_threshold: float | None, return_images: bool) -> Iterator[tuple[Any, ...]]:
    """Detect on the batch, empty the batch lists, yield the results without keeping them."""
    dets = predictor.detect(list(arrays), batch_size=len(arrays), score_threshold=score_threshold,
                            mask_threshold=mask_threshold)
    images = list(arrays) if return_images else []
    arrays.clear()
    batch_names = list(names)
    names.clear()
    for name, det in zip(batch_names, dets):
        det.file_name = name
    del det
    dets.reverse()
    images.reverse()
    for name in batch_names:
        # popped into the yielded tuple, not a local: once yielded, only the caller holds the result
        if return_images:
            yield name, dets.pop(), images.pop()
        else:
            yield name, dets.pop()


# --------------------------------------------------------------------------- incremental writing


@dataclass
class StreamSummary:
    """What :func:`detect_to_jsonl` wrote: counts, and the first few skipped inputs (bounded; all of
    them go to ``skipped_out`` and ``on_skip``)."""

    images: int = 0
    detections: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def detect_to_jsonl(predictor: "Predictor", source: Any, out: str | os.PathLike | IO[str], *,
                    images_out: str | os.PathLike | IO[str] | None = None,
                    skipped_out: str | os.PathLike | IO[str] | None = None, start_id: int = 1,
                    category_ids: list[int] | None = None, batch_size: int = 1, score_threshold: float | None = None,
                    mask_threshold: float | None = None, recursive: bool = True, skip_errors: bool = False,
                    on_skip: Callable[[str, MaskRCNNError], None] | None = None,
                    progress: Callable[[int, str, Detections], None] | None = None) -> StreamSummary:
    """Stream detection and write COCO results as JSON lines, keeping no masks.

    ``out`` gets one line per detection: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": RLE, "file_name"}`` (:meth:`Detections.to_coco`); ``images_out`` (optional) one
    line per image: ``{"id", "file_name", "height", "width"}``; ``skipped_out`` (optional, with
    ``skip_errors``) one line per skipped input: ``{"file_name", "error"}``, and ``on_skip(name,
    error)`` is called for each. Image ids count from ``start_id`` over the images written, in
    source order. Files are flushed after each image, so an interrupted run keeps every finished
    image. ``progress(image_id, name, detections)`` is called per image.
    """
    summary = StreamSummary()

    with _open_text(out) as fo, _open_text(images_out) as fi, _open_text(skipped_out) as fs:
        def skipped(name: str, exc: MaskRCNNError) -> None:
            summary.skipped += 1
            if len(summary.skipped_examples) < 10:
                summary.skipped_examples.append(f"{name}: {exc}")
            if fs is not None:
                fs.write(json.dumps({"file_name": name, "error": str(exc)}) + "\n")
                fs.flush()
            if on_skip is not None:
                on_skip(name, exc)

        image_id = start_id
        for name, det in stream_detect(predictor, source, batch_size=batch_size, score_threshold=score_threshold,
                                       mask_threshold=mask_threshold, recursive=recursive, skip_errors=skip_errors,
                                       on_skip=skipped):
            for rec in det.to_coco(image_id, category_ids):
                fo.write(json.dumps(rec) + "\n")
            fo.flush()
            if fi is not None:
                h, w = det.image_size
                fi.write(json.dumps({"id": image_id, "file_name": name, "height": int(h), "width": int(w)}) + "\n")
                fi.flush()
            summary.images += 1
            summary.detections += len(det)
            if progress is not None:
                progress(image_id, name, det)
            del det
            image_id += 1
    return summary


class _open_text:
    """Context manager: open a path for writing (closing it after), pass a file object through, or None."""

    def __init__(self, target: str | os.PathLike | IO[str] | None) -> None:
        self.target = target
        self.fh: IO[str] | None = None

    def __enter__(self) -> IO[str] | None:
        if self.target is None:
            return None
        if isinstance(self.target, (str, os.PathLike)):
            self.fh = open(self.target, "w", encoding="utf-8")
            return self.fh
        return self.target  # type: ignore[return-value]

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (e.g. from :func:`detect_to_jsonl`), as a list for evaluation."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out

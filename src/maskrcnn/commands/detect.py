"""``maskrcnn detect IMAGES_OR_DIRS --weights W --out DIR [--score 0.5]``.

Inputs are enumerated and batched by :mod:`maskrcnn.inference.streaming` (folders searched
recursively for :data:`~maskrcnn.data.images.IMAGE_EXTENSIONS`, videos frame by frame, only
images of one size batched together). An input that cannot be read (missing, corrupt, truncated,
over the pixel limit, not an image ...) is skipped: one line ``skipped: <reason>`` on stderr as it
happens, and the list in the output (``images.json``'s ``"skipped"`` or ``skipped.jsonl``).

Exit status: 0 when at least one image was processed; 1 when every input was unreadable (nothing
was detected); 2 for a usage error (missing input path, no image found, bad weights or options).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, MaskRCNNError
from ..utils.files import atomic_write, atomic_write_json, ensure_output_dir
from .args import add_tta_argument, non_negative_int, positive_int, probability, tta_overrides

if TYPE_CHECKING:
    from ..inference.predictor import Predictor

EXIT_ALL_UNREADABLE = 1


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("detect", help="detect instances in images; write overlays and COCO results JSON",
                       description="Detect instances in images, folders (searched recursively) and videos. "
                       "Unreadable inputs are skipped and listed (stderr and the output). Exit status 0 when at "
                       f"least one image was processed, {EXIT_ALL_UNREADABLE} when every input was unreadable, "
                       "2 for a usage error.")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or videos")
    p.add_argument("--weights", required=True, help="coco, coco-v2, a checkpoint (.safetensors or folder), a torchvision .pth, a Matterport .h5 or an exported .onnx (run with ONNX Runtime)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score", type=probability, default=0.5, help="minimum score of written detections (default 0.5)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's; with a Matterport .h5 also a YAML of its UPPER_CASE attributes)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images per forward pass (only images of one size are batched)")
    p.add_argument("--fast", action="store_true", help="fast mode: BatchNorm folded, channels-last, bf16 where the CPU "
                   "(AVX512-BF16/AMX) or GPU has it, fp32 elsewhere; close to, not equal with, exact mode (Config.fast)")
    add_tta_argument(p)
    p.add_argument("--no-overlays", action="store_true", help="write only the JSON")
    p.add_argument("--tile", type=positive_int, metavar="PX", help="detect on overlapping PX x PX tiles and merge instances "
                   "across borders (images larger than the model input; no overlays)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=128, metavar="PX", help="least overlap of neighbouring tiles (default 128)")
    p.add_argument("--jsonl", action="store_true", help="stream results to OUT/detections.jsonl + images.jsonl image by "
                   "image (bounded memory, no overlays); skipped inputs to OUT/skipped.jsonl")
    return p


def check_inputs(inputs: list[str]) -> list[Path]:
    """The inputs as paths; :class:`DataError` naming the first that does not exist, or when the
    inputs hold no image at all (looked up lazily: stops at the first image found)."""
    from ..inference.streaming import iter_source

    paths = [Path(item) for item in inputs]
    for p in paths:
        if not (p.is_dir() or p.is_file()):
            raise DataError(f"{p}: no such file or folder; pass image files or folders")
    if next(iter_source(paths), None) is None:
        from ..data.images import IMAGE_EXTENSIONS

        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(inputs)}")
    return paths


class _Skips:
    """Skipped inputs: each printed on stderr (through the progress bar) as it happens, and kept."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.bar: Any = None

    def __call__(self, name: str, exc: MaskRCNNError) -> None:
        reason = str(exc)
        self.items.append({"file_name": name, "error": reason})
        line = f"skipped: {reason}" if name in reason else f"skipped {name}: {reason}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..inference.predictor import load

    if args.batch_size < 1:
        raise MaskRCNNError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        raise MaskRCNNError(f"--tile-overlap {args.tile_overlap}: must be >= 0 and smaller than --tile {args.tile}")
    paths = check_inputs(args.inputs)
    out = ensure_output_dir(args.out)
    predictor = load(args.weights, config=args.config, device=args.device, fast=args.fast or None, **tta_overrides(args))
    if predictor.config.fast:
        print(f"mode: {predictor.mode}", file=sys.stderr)
    skips = _Skips()
    if args.jsonl:
        from ..inference.streaming import detect_to_jsonl

        summary = detect_to_jsonl(predictor, paths, out / "detections.jsonl", images_out=out / "images.jsonl",
                                  skipped_out=out / "skipped.jsonl", batch_size=args.batch_size,
                                  score_threshold=args.score, skip_errors=True, on_skip=skips)
        print(f"{summary.images} images, {summary.detections} detections -> {out / 'detections.jsonl'}"
              + (f"; skipped {summary.skipped} unreadable (listed in {out / 'skipped.jsonl'})" if summary.skipped else ""))
        return EXIT_ALL_UNREADABLE if summary.images == 0 and summary.skipped else 0

    bar = tqdm(unit="img", desc="detect (tiled)" if args.tile else "detect", file=sys.stderr)
    skips.bar = bar
    with bar:
        detected = _detect_tiled(predictor, paths, args, skips) if args.tile else _detect(predictor, paths, args, skips)
        images, results = [], []
        for image_id, (name, det) in enumerate(detected, start=1):
            images.append({"id": image_id, "file_name": name, "height": int(det.image_size[0]),
                           "width": int(det.image_size[1])})
            results.extend(det.to_coco(image_id))
            bar.update(1)
            bar.set_postfix(dets=len(det))
    atomic_write_json(out / "detections.json", results)
    atomic_write_json(out / "images.json", {
        "images": images, "annotations": [], "skipped": skips.items,
        "categories": [{"id": i, "name": n} for i, n in enumerate(predictor.class_names) if i > 0]})
    print(f"{len(images)} images, {len(results)} detections (score >= {args.score}) -> {out / 'detections.json'}"
          + (f"; skipped {len(skips.items)} unreadable (listed above and in {out / 'images.json'})" if skips.items else ""))
    return EXIT_ALL_UNREADABLE if not images and skips.items else 0


def _detect(predictor: "Predictor", paths: list[Path], args: argparse.Namespace, skips: _Skips) -> Any:
    """``(name, Detections)`` per readable input, writing each overlay (unless ``--no-overlays``)."""
    from ..inference.streaming import stream_detect
    from ..inference.visualize import overlay

    names_used: set[str] = set()
    for name, det, arr in stream_detect(predictor, paths, batch_size=args.batch_size, score_threshold=args.score,
                                        skip_errors=True, on_skip=skips, return_images=True):
        if not args.no_overlays:
            atomic_write(Path(args.out) / f"{_unique_stem(name, names_used)}.png", partial(overlay(arr, det).save, format="PNG"))
        del arr
        yield name, det


def _detect_tiled(predictor: "Predictor", paths: list[Path], args: argparse.Namespace, skips: _Skips) -> Any:
    """``(name, TiledDetections)`` per readable input, detected tile by tile."""
    from ..inference.streaming import iter_source
    from ..inference.tiling import detect_tiled

    for name, item in iter_source(paths, on_error=skips):
        try:
            tiled = detect_tiled(predictor, item, tile_size=args.tile, overlap=args.tile_overlap,
                                 batch_size=args.batch_size, score_threshold=args.score)
        except MaskRCNNError as exc:
            skips(name, exc)
            continue
        tiled.file_name = name
        yield name, tiled


def _unique_stem(name: str, used: set[str]) -> str:
    """An overlay file stem for input ``name`` ("dir/x.png" -> "x", a frame "clip.mp4:000012" ->
    "clip.mp4_000012"), suffixed ``_2``, ``_3`` ... when an earlier input had the same one."""
    base = Path(name).name
    stem = base.replace(":", "_") if ":" in base else Path(base).stem
    unique, k = stem, 1
    while unique in used:
        k += 1
        unique = f"{stem}_{k}"
    used.add(unique)
    return unique

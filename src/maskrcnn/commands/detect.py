"""``maskrcnn detect IMAGES_OR_DIRS --weights W --out DIR [--score 0.5]``."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from ..errors import DataError, MaskRCNNError
from ..utils.files import atomic_write, atomic_write_json, ensure_output_dir
from .args import non_negative_int, positive_int, probability

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("detect", help="detect instances in images; write overlays and COCO results JSON")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--weights", required=True, help="coco, coco-v2, a checkpoint (.safetensors or folder) or a torchvision .pth")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score", type=probability, default=0.5, help="minimum score of written detections (default 0.5)")
    p.add_argument("--config", help="config YAML (default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images per forward pass (only images of one size are batched)")
    p.add_argument("--fast", action="store_true", help="fast mode (BN folded, bf16 where safe)")
    p.add_argument("--no-overlays", action="store_true", help="write only the JSON")
    p.add_argument("--tile", type=positive_int, metavar="PX", help="detect on overlapping PX x PX tiles and merge instances "
                   "across borders (images larger than the model input; no overlays)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=128, metavar="PX", help="least overlap of neighbouring tiles (default 128)")
    p.add_argument("--jsonl", action="store_true", help="stream results to OUT/detections.jsonl + images.jsonl image by "
                   "image (bounded memory, no overlays)")
    return p


def collect_images(inputs: list[str]) -> list[Path]:
    """Files given directly, plus images found recursively in folders, sorted; errors name the missing path."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder; pass image files or folders")
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(inputs)}")
    return files


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..data.images import read_image
    from ..inference.predictor import load
    from ..inference.visualize import overlay

    if args.batch_size < 1:
        raise MaskRCNNError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        raise MaskRCNNError(f"--tile-overlap {args.tile_overlap}: must be >= 0 and smaller than --tile {args.tile}")
    files = collect_images(args.inputs)
    out = ensure_output_dir(args.out)
    predictor = load(args.weights, config=args.config, device=args.device, fast=args.fast or None)
    results: list[dict] = []
    images: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    names_used: set[str] = set()
    batch: list[tuple[int, Path, np.ndarray]] = []
    if args.jsonl:
        from ..inference.streaming import detect_to_jsonl

        summary = detect_to_jsonl(predictor, files, out / "detections.jsonl", images_out=out / "images.jsonl",
                                  batch_size=args.batch_size, score_threshold=args.score, skip_errors=True)
        print(f"{summary.images} images, {summary.detections} detections -> {out / 'detections.jsonl'}"
              + (f"; skipped {summary.skipped} unreadable" if summary.skipped else ""))
        return 0

    def flush() -> None:
        # only images of one size share a batch: padding a batch to its largest image changes the
        # others' detections, so results never depend on --batch-size or on the file order
        if not batch:
            return
        dets = predictor.detect([a for _, _, a in batch], batch_size=len(batch), score_threshold=args.score)
        for (image_id, path, arr), det in zip(batch, dets):
            det.file_name = str(path)
            images.append({"id": image_id, "file_name": str(path), "height": det.image_size[0],
                           "width": det.image_size[1]})
            results.extend(det.to_coco(image_id))
            if not args.no_overlays:
                stem = path.stem
                name = stem
                k = 1
                while name in names_used:
                    k += 1
                    name = f"{stem}_{k}"
                names_used.add(name)
                atomic_write(out / f"{name}.png", partial(overlay(arr, det).save, format="PNG"))
            bar.set_postfix(dets=len(det))
        batch.clear()

    bar = tqdm(files, unit="img", desc="detect (tiled)" if args.tile else "detect")
    for image_id, path in enumerate(bar, start=1):
        if args.tile:
            from ..inference.tiling import detect_tiled

            try:
                tiled = detect_tiled(predictor, path, tile_size=args.tile, overlap=args.tile_overlap,
                                     batch_size=args.batch_size, score_threshold=args.score)
            except MaskRCNNError as exc:
                skipped.append((path, str(exc)))
                bar.write(f"skipped {path}: {exc}")
                continue
            tiled.file_name = str(path)
            images.append({"id": image_id, "file_name": str(path), "height": tiled.image_size[0],
                           "width": tiled.image_size[1]})
            results.extend(tiled.to_coco(image_id))
            continue
        try:
            arr = predictor.to_array(read_image(path), str(path))
        except MaskRCNNError as exc:
            skipped.append((path, str(exc)))
            bar.write(f"skipped {path}: {exc}")
            continue
        if batch and batch[0][2].shape[:2] != arr.shape[:2]:
            flush()
        batch.append((image_id, path, arr))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    atomic_write_json(out / "detections.json", results)
    atomic_write_json(out / "images.json", {"images": images, "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(predictor.class_names) if i > 0]})
    print(f"{len(images)} images, {len(results)} detections (score >= {args.score}) -> {out / 'detections.json'}"
          + (f"; skipped {len(skipped)} unreadable: {', '.join(str(p) for p, _ in skipped[:5])}" if skipped else ""))
    return 0

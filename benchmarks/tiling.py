"""Peak memory of tiled detection on large images: bounded by the tile size, not the image size.

For each ``--sizes`` S (default 2000 4000 8000) an S x S RGB image is made in memory, then
``maskrcnn.inference.tiling.detect_tiled`` runs over it with a fixed tile size (default 512,
overlap 64) and a small random-weight model that detects at the tiles' own resolution
(``image_min_dim = tile``). Reported per size:

* ``image MiB``: the image's own bytes (allocated before the measurement, so not in the peak);
* ``peak MiB``: the peak resident memory *added* by ``detect_tiled`` (kernel high-water mark reset
  before the call, see ``benchmarks/common.py``);
* ``results MiB``: what the returned :class:`TiledDetections` holds (cropped masks, boxes); it grows
  with the number of instances, so ``peak - results`` is the working memory, which should stay flat;
* tiles, detections, seconds.

``--untiled S ...`` also measures ``Predictor.detect`` on the whole image (the model resizing
nothing: ``image_min_dim = image_max_dim = S``) for comparison. Prints a table and one JSON line
(also written to ``--json``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiling.py [--sizes 2000 4000 8000] [--tile 512]
        [--overlap 64] [--untiled 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, format_table, machine_info, set_threads  # noqa: E402

from maskrcnn.config import Config  # noqa: E402
from maskrcnn.inference.predictor import Predictor  # noqa: E402
from maskrcnn.inference.tiling import detect_tiled  # noqa: E402
from maskrcnn.modeling import build_model  # noqa: E402

MiB = 2 ** 20


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """A blocky random RGB image (16 px blocks), built row band by row band (no full-size temporaries)."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8)
    block = 16
    for y in range(0, size, 1024):
        h = min(1024, size - y)
        coarse = rng.integers(0, 255, (h // block + 1, size // block + 1, 3), dtype=np.uint8)
        img[y:y + h] = np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :size]
    return img


def model_config(tile: int, **kw) -> Config:
    base = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, box_head_dim=32, mask_head_channels=16,
                mask_head_convs=2, num_classes=3, image_min_dim=tile, image_max_dim=2 * tile,
                detection_max_instances=10)
    base.update(kw)
    return Config(**base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--untiled", type=int, nargs="*", default=[2000], help="sizes to also detect on untiled")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the JSON result to this file")
    args = p.parse_args()
    set_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(model_config(args.tile))
    predictor = Predictor(model)
    meter = PeakMemory(device)

    detect_tiled(predictor, make_image(args.tile + args.overlap, seed=1), tile_size=args.tile,
                 overlap=args.overlap)  # warm-up: lazy initialisation is not the tiles' memory

    rows = []
    for size in args.sizes:
        img = make_image(size)
        t0 = time.perf_counter()
        with meter.measure():
            res = detect_tiled(predictor, img, tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        row = {"mode": "tiled", "size": size, "image_mib": img.nbytes / MiB, "peak_mib": meter.peak / MiB,
               "results_mib": res.nbytes / MiB, "work_mib": (meter.peak - res.nbytes) / MiB,
               "tiles": len(res.tiles), "detections": len(res), "seconds": seconds}
        rows.append(row)
        print(f"tiled {size}: peak {row['peak_mib']:.1f} MiB, results {row['results_mib']:.1f} MiB, "
              f"{row['tiles']} tiles, {seconds:.0f} s", flush=True)
        del res, img

    for size in args.untiled:
        img = make_image(size)
        whole = Predictor(build_model(model_config(size, image_max_dim=size)))
        whole.model.load_state_dict(model.state_dict())
        whole.detect(make_image(args.tile, seed=1))  # warm-up
        t0 = time.perf_counter()
        with meter.measure():
            det = whole.detect(img)[0]
        seconds = time.perf_counter() - t0
        results = det.masks.nbytes + det.boxes.nbytes + det.scores.nbytes + det.class_ids.nbytes
        rows.append({"mode": "untiled", "size": size, "image_mib": img.nbytes / MiB, "peak_mib": meter.peak / MiB,
                     "results_mib": results / MiB, "work_mib": (meter.peak - results) / MiB, "tiles": 1,
                     "detections": len(det), "seconds": seconds})
        print(f"untiled {size}: peak {meter.peak / MiB:.1f} MiB, {seconds:.0f} s", flush=True)
        del det, img, whole

    print(format_table(rows, [("mode", "mode", "s"), ("size", "image px", "d"), ("image_mib", "image MiB", ".1f"),
                              ("peak_mib", "peak MiB", ".1f"), ("results_mib", "results MiB", ".1f"),
                              ("work_mib", "peak-results MiB", ".1f"), ("tiles", "tiles", "d"),
                              ("detections", "detections", "d"), ("seconds", "seconds", ".1f")]))
    result = {"benchmark": "tiling", "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
              "peak_method": meter.method, "rows": rows, "machine": machine_info(device, args.threads)}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

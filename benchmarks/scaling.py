"""How the cost scales: mask pasting against the number of detections and the image size (ours vs
torchvision's ``paste_masks_in_image``), and end-to-end exact-mode detection against image size.

Pasting ours writes bool masks computed inside each box; torchvision resizes every mask into a
full-size float image. With fixed box sizes our cost should grow with the number and area of the
boxes, not with the image area.

    python benchmarks/scaling.py [--threads 2] [--quick] [--plot docs/scaling.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _timeit(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def _boxes(n: int, h: int, w: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - side, h - side])
    return torch.cat([xy, xy + side], 1)


def paste_scaling(repeats: int, counts: list[int], sizes: list[tuple[int, int]]) -> dict:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrcnn.inference.paste import paste_masks

    out: dict = {"by_count": [], "by_size": []}
    h, w = 800, 1333
    for n in counts:
        probs = torch.rand(n, 28, 28)
        boxes = _boxes(n, h, w, 64)
        ours = _timeit(lambda: paste_masks(probs, boxes, (h, w)), repeats)
        tv = _timeit(lambda: paste_masks_in_image(probs[:, None], boxes, (h, w)) >= 0.5, repeats)
        out["by_count"].append({"detections": n, "ours_s": ours, "torchvision_s": tv})
    n = 50
    probs = torch.rand(n, 28, 28)
    for hh, ww in sizes:
        boxes = _boxes(n, hh, ww, 64)
        ours = _timeit(lambda: paste_masks(probs, boxes, (hh, ww)), repeats)
        tv = _timeit(lambda: paste_masks_in_image(probs[:, None], boxes, (hh, ww)) >= 0.5, repeats)
        out["by_size"].append({"image": f"{ww}x{hh}", "pixels": hh * ww, "ours_s": ours, "torchvision_s": tv})
    return out


def model_scaling(repeats: int, dims: list[int]) -> list[dict]:
    from skimage import data

    from maskrcnn import Config
    from maskrcnn.inference.predictor import Predictor
    from maskrcnn.modeling import build_model

    torch.manual_seed(0)
    model = build_model(Config(image_max_dim=4000))
    img = data.astronaut()
    rows = []
    for d in dims:
        model.config = model.config.replace(image_min_dim=d)
        pred = Predictor(model)
        rows.append({"min_dim": d, "ours_s": _timeit(lambda: pred.detect(img), repeats)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", default="docs/scaling.png")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    counts = [1, 10, 50, 100, 300] if not args.quick else [1, 10, 100]
    sizes = [(480, 640), (800, 1333), (1600, 2666), (3000, 4000)] if not args.quick else [(480, 640), (1600, 2666)]
    repeats = 3 if not args.quick else 1
    res = {"paste": paste_scaling(repeats, counts, sizes),
           "model": model_scaling(1, [320, 512, 800] if not args.quick else [256, 384])}
    print(f"{'detections':>10s} {'ours ms':>9s} {'torchvision ms':>15s} {'ratio':>6s}   (paste at 1333x800, 64 px boxes)")
    for r in res["paste"]["by_count"]:
        print(f"{r['detections']:10d} {r['ours_s'] * 1e3:9.1f} {r['torchvision_s'] * 1e3:15.1f} {r['ours_s'] / r['torchvision_s']:6.3f}")
    print(f"{'image':>10s} {'ours ms':>9s} {'torchvision ms':>15s} {'ratio':>6s}   (paste of 50 masks, 64 px boxes)")
    for r in res["paste"]["by_size"]:
        print(f"{r['image']:>10s} {r['ours_s'] * 1e3:9.1f} {r['torchvision_s'] * 1e3:15.1f} {r['ours_s'] / r['torchvision_s']:6.3f}")
    print(f"{'min_dim':>10s} {'ours s':>9s}   (exact-mode detect, R50-FPN, random weights)")
    for r in res["model"]:
        print(f"{r['min_dim']:10d} {r['ours_s']:9.2f}")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        bc = res["paste"]["by_count"]
        axes[0].plot([r["detections"] for r in bc], [r["ours_s"] * 1e3 for r in bc], "o-", label="ours (bool, in-box)")
        axes[0].plot([r["detections"] for r in bc], [r["torchvision_s"] * 1e3 for r in bc], "s-", label="torchvision")
        axes[0].set(xlabel="detections", ylabel="paste time (ms)", title="paste vs detections (1333x800)")
        bs = res["paste"]["by_size"]
        axes[1].plot([r["pixels"] / 1e6 for r in bs], [r["ours_s"] * 1e3 for r in bs], "o-", label="ours")
        axes[1].plot([r["pixels"] / 1e6 for r in bs], [r["torchvision_s"] * 1e3 for r in bs], "s-", label="torchvision")
        axes[1].set(xlabel="image megapixels", ylabel="paste time (ms)", title="paste vs image size (50 masks)")
        m = res["model"]
        axes[2].plot([r["min_dim"] for r in m], [r["ours_s"] for r in m], "o-")
        axes[2].set(xlabel="short side (px)", ylabel="detect time (s)", title="exact-mode detect vs image size")
        for a in axes[:2]:
            a.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=90)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

"""Load test of ``maskrcnn serve``: dynamic batching against a one-request-at-a-time baseline.

For each mode the script starts ``maskrcnn serve`` on 127.0.0.1 (a free port) as a child process,
waits until ``/readyz`` answers, sends ``--warmup`` untimed requests, then ``--requests`` requests
from ``--clients`` concurrent asyncio clients (httpx); ``--bad-fraction`` of them (every
``1/fraction``-th) are truncated PNGs that must get a 400. Images are real photographs
(scikit-image's, resized so the short side is ``--size``), all of one size so that they can batch.

Modes: ``batched`` (``--max-batch N --batch-wait-ms T``) and ``baseline`` (``--max-batch 1``: one
image per model call, requests served in turn). Reported per mode: requests/s, latency p50/p95/p99
of the good requests, responses by status (any 5xx is a server error), the batch sizes the server
ran (from ``/metrics``), and the server's RSS sampled every ``--rss-every`` requests with the
slope of a linear fit over the second half (MB per 1,000 requests; about 0 when nothing leaks).
Exit status 1 when a server error occurred.

The model: ``--weights W`` (any ``maskrcnn.load`` spec), or by default random weights of
``--backbone`` (nothing is downloaded) whose class-1 score is biased up, so every image gives
``--instances`` confident detections with masks, as a trained model would.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve.py                 # 5,000 requests, 16 clients
    .venv/bin/python benchmarks/serve.py --requests 200 --clients 8 --backbone resnet18 --size 256   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--bad-fraction", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weights", help="a maskrcnn.load weights spec (default: random weights, see --backbone)")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--instances", type=int, default=20, help="detections per image of the random model")
    p.add_argument("--size", type=int, default=512, help="short side of the photographs and the model input")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--modes", nargs="+", default=["batched", "baseline"], choices=["batched", "baseline"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rss-every", type=int, default=0, help="sample RSS every N requests (default requests/50)")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- model and images


def random_checkpoint(folder: Path, backbone: str, size: int, instances: int) -> Path:
    """Random weights whose class-1 logit is raised: every RoI is a confident detection with a mask."""
    import torch

    from maskrcnn import Config
    from maskrcnn.modeling import build_model
    from maskrcnn.weights import save_checkpoint

    torch.manual_seed(0)
    config = Config.create(backbone=backbone, num_classes=2, class_names=["BG", "object"], image_min_dim=size,
                           image_max_dim=size, detection_max_instances=instances)
    model = build_model(config).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-4.0, 4.0]))
    return save_checkpoint(model, config, folder / f"random_{backbone}.safetensors")


def photo_pngs(size: int, count: int = 4) -> list[bytes]:
    """PNG bytes of ``count`` photographs of one size (short side ``size``, cropped to size x 4/3 size)."""
    from PIL import Image

    from common import photos

    out = []
    for arr in photos(size, count):
        w = round(size * 4 / 3)
        arr = arr[:size, :w] if arr.shape[1] >= w else np.pad(arr, ((0, 0), (0, w - arr.shape[1]), (0, 0)))[:size]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(weights: str, args: argparse.Namespace, max_batch: int, log: Any) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "maskrcnn.cli", "serve", "--weights", weights, "--device", args.device,
           "--port", str(port), "--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms),
           "--max-queue", str(max(64, 2 * args.clients)), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server not ready after 300 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def batch_sizes(metrics_text: str) -> dict[str, float]:
    """Count and mean of the server's batch sizes from its Prometheus text."""
    values = {}
    for line in metrics_text.splitlines():
        if line.startswith("maskrcnn_batch_size_count") or line.startswith("maskrcnn_batch_size_sum"):
            key, _, v = line.rpartition(" ")
            values[key.split("_")[-1]] = float(v)
    count = values.get("count", 0.0)
    return {"batches": count, "mean_batch": values.get("sum", 0.0) / count if count else 0.0}


# --------------------------------------------------------------------------- the load


async def load(url: str, images: list[bytes], bad: bytes, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    import httpx
    import psutil

    n = args.requests
    every = max(1, int(round(1 / args.bad_fraction))) if args.bad_fraction > 0 else 0
    rss_every = args.rss_every or max(1, n // 50)
    process = psutil.Process(pid)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    rss: list[tuple[int, float]] = []
    next_index = 0
    done = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_index, done
        while next_index < n:
            i = next_index
            next_index += 1
            is_bad = every and i % every == every - 1
            data = bad if is_bad else images[i % len(images)]
            start = time.perf_counter()
            try:
                r = await c.post("/v1/detect?score=0.5", content=data, headers={"Content-Type": "image/png"})
                status = str(r.status_code)
            except httpx.HTTPError as exc:
                status = f"transport:{type(exc).__name__}"
            elapsed = time.perf_counter() - start
            statuses[status] = statuses.get(status, 0) + 1
            if not is_bad and status == "200":
                latencies.append(elapsed)
            done += 1
            if done % rss_every == 0:
                rss.append((done, process.memory_info().rss / 2**20))

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as c:
        for k in range(args.warmup):
            await c.post("/v1/detect", content=images[k % len(images)], headers={"Content-Type": "image/png"})
        before = batch_sizes((await c.get("/metrics")).text)
        rss.append((0, process.memory_info().rss / 2**20))
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(args.clients)))
        wall = time.perf_counter() - start
        after = batch_sizes((await c.get("/metrics")).text)
    lat = np.array(latencies) * 1000
    batches = after["batches"] - before["batches"]
    images_run = after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"]
    half = [(i, m) for i, m in rss if i >= n // 2]
    slope = float(np.polyfit([i for i, _ in half], [m for _, m in half], 1)[0]) * 1000 if len(half) >= 2 else None
    return {"requests": n, "clients": args.clients, "seconds": wall, "requests_per_s": n / wall,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(v for k, v in statuses.items() if not k.isdigit() or k.startswith("5")),
            "batches": batches, "mean_batch": images_run / batches if batches else 0.0,
            "rss_mb": [[i, round(m, 1)] for i, m in rss], "rss_slope_mb_per_1000": slope}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from common import format_table

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or str(random_checkpoint(Path(tmp), args.backbone, args.size, args.instances))
        images = photo_pngs(args.size)
        bad = images[0][: len(images[0]) // 2]
        results: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k != "json"},
                                   "cpu_count": os.cpu_count(), "load_average_before": list(os.getloadavg())}
        for mode in args.modes:
            max_batch = args.max_batch if mode == "batched" else 1
            with open(Path(tmp) / f"server_{mode}.log", "w+b") as log:
                proc, url = start_server(weights, args, max_batch, log)
                try:
                    r = asyncio.run(load(url, images, bad, args, proc.pid))
                finally:
                    r_exit = stop_server(proc)
                r["mode"], r["max_batch"], r["exit_status"] = mode, max_batch, r_exit
                results[mode] = r
            print(f"{mode}: {r['requests_per_s']:.2f} req/s, statuses {r['statuses']}, mean batch {r['mean_batch']:.2f}, "
                  f"RSS {r['rss_mb'][0][1]:.0f} -> {r['rss_mb'][-1][1]:.0f} MB", flush=True)
    rows = [results[m] for m in args.modes]
    print(format_table(rows, [("mode", "mode", "s"), ("max_batch", "max batch", "d"), ("requests_per_s", "req/s", ".2f"),
                              ("p50_ms", "p50 ms", ".0f"), ("p95_ms", "p95 ms", ".0f"), ("p99_ms", "p99 ms", ".0f"),
                              ("mean_batch", "mean batch", ".2f"), ("server_errors", "5xx", "d"),
                              ("rss_slope_mb_per_1000", "RSS MB/1000 req", ".2f")]))
    if "batched" in results and "baseline" in results:
        results["speedup"] = results["batched"]["requests_per_s"] / results["baseline"]["requests_per_s"]
        print(f"batched / baseline throughput: {results['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if any(results[m]["server_errors"] for m in args.modes) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``maskrcnn serve --weights W [--host 127.0.0.1] [--port 8000] ...``: the HTTP service of :mod:`maskrcnn.serve`."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys

from ..errors import MaskRCNNError
from .args import non_negative_float, port, positive_float, positive_int

API_KEY_ENV = "MASKRCNN_API_KEY"
_NEEDS = ("fastapi", "uvicorn", "prometheus_client", "multipart")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve a model over HTTP: detection API, metrics and a web page",
                       description="Serve a model over HTTP: POST /v1/detect, GET /v1/model, /healthz, /readyz, "
                       "/metrics (Prometheus), OpenAPI docs at /docs and a web page at /. Concurrent requests of one "
                       "padded size run as one batch. SIGTERM finishes the requests in flight, then exits.")
    p.add_argument("--weights", required=True, help="coco, coco-v2, a checkpoint (.safetensors or folder) or a torchvision .pth")
    p.add_argument("--config", help="config YAML (default: the checkpoint's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--fast", action="store_true", help="fast mode (BN folded, bf16 where safe)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"require this key (X-API-Key header or Authorization: Bearer) on /v1/* and /metrics "
                   f"(default: ${API_KEY_ENV}; none)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="most images per model call (default 8)")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a request waits for others of its size to batch with (default 5)")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="most requests waiting for the model; more get 503 with Retry-After (default 64)")
    p.add_argument("--max-image-mb", type=positive_float, default=32.0, help="largest accepted upload in MB (default 32)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes, each with its own model and batcher (default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def run(args: argparse.Namespace) -> int:
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise MaskRCNNError(f"maskrcnn serve needs {', '.join(missing)}; install them with: pip install 'maskrcnn[serve]'")
    from ..serve.app import ServeSettings, serve

    if not args.api_key and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    settings = ServeSettings(weights=args.weights, config=args.config, device=args.device, fast=args.fast,
                             api_key=args.api_key, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_image_mb=args.max_image_mb, max_queue=args.max_queue)
    return serve(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

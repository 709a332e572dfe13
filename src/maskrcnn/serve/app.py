"""The HTTP service of ``maskrcnn serve``: a FastAPI app around one :class:`~maskrcnn.inference.predictor.Predictor`.

Endpoints (OpenAPI docs at ``/docs``):

* ``POST /v1/detect``: an image as a multipart upload (one file field, e.g. ``image``) or as the raw body (``Content-Type: image/*`` or ``application/octet-stream``).
  Query: ``score`` (0-1, default 0.5), ``max_detections``, ``image_id`` and
  ``format=coco|matterport|png``: COCO results (RLE masks, ``bbox`` x, y, w, h, plus
  ``class_name`` and ``area``), Matterport's dict (``rois`` y1, x1, y2, x2, masks as RLE), or the
  overlay PNG (the number of detections in the ``X-Detections`` header);
* ``GET /v1/model``: classes, config, backend, device and the serving limits;
* ``GET /healthz`` (the process answers), ``GET /readyz`` (the model takes requests), ``GET /metrics``
  (Prometheus, see :mod:`maskrcnn.serve.metrics`), ``GET /`` (the web page, ``serve/page/``).

Inference runs on the batcher's worker thread (:mod:`maskrcnn.serve.batching`), image decoding and
response encoding on the thread pool: the event loop only moves bytes. Every error is a JSON
object ``{"error": "<one line>"}`` with a 4xx status (bad input, 401 without the API key, 413 for
a body over ``max_image_mb``, refused while it is read; 415 for a wrong content type; 422 for a
bad query value) or 503 with ``Retry-After`` when the queue is full or the server is draining;
an unexpected failure is a 500 with one line, its traceback only in the server log.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MaskRCNNError, one_line
from .batching import Batcher, Draining, QueueFull
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics

__all__ = ["ServeSettings", "ApiError", "create_app", "load_predictor", "app_from_env", "serve", "SETTINGS_ENV"]

log = logging.getLogger("maskrcnn.serve")

PAGE_DIR = Path(__file__).with_name("page")
#: The environment variable that hands the settings to worker processes (``--workers K > 1``).
SETTINGS_ENV = "MASKRCNN_SERVE_SETTINGS"
_MULTIPART_SLACK = 64 * 1024  # multipart framing and small fields on top of the image itself
_ROUTES = ("/v1/detect", "/v1/model", "/healthz", "/readyz", "/metrics", "/")
_DETECT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@dataclass(frozen=True)
class ServeSettings:
    """What ``maskrcnn serve`` was started with (also handed to worker processes as JSON)."""

    weights: str
    config: str | None = None
    device: str | None = None
    fast: bool = False
    api_key: str | None = None
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_image_mb: float = 32.0
    max_queue: int = 64
    drain_timeout_s: float = 30.0

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)


class ApiError(Exception):
    """An HTTP error answered as ``{"error": message}`` (one line)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(status: int, message: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def load_predictor(settings: ServeSettings) -> Any:
    """The model ``settings`` name, through :func:`maskrcnn.load` (errors are one-line ``MaskRCNNError``)."""
    from ..inference.predictor import load

    return load(settings.weights, config=settings.config, device=settings.device,
                fast=True if settings.fast else None, progress=False)


def padded_size(predictor: Any, height: int, width: int, name: str) -> tuple[int, ...]:
    """The batching key of an ``height x width`` image: its size after resizing, padded to the
    model's ``size_divisibility`` (images with one key make one tensor without extra padding)."""
    transform = getattr(predictor, "transform", None)
    if transform is None or not hasattr(transform, "plan"):
        return (height, width)
    h, w = transform.plan(height, width, name).image_size
    d = int(getattr(transform, "size_divisibility", 1) or 1)
    return (math.ceil(h / d) * d, math.ceil(w / d) * d)


# --------------------------------------------------------------------------- request body


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is over the limit of {limit / 2**20:.3g} MB; send a smaller image "
                         "or start the server with a larger --max-image-mb")


async def _read_limited(request: Request, limit: int, what: str, slack: int = 0) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit + slack`` bytes
    (from ``Content-Length`` before reading, else while reading)."""
    too_large = _too_large(what, limit)
    limit += slack
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ApiError(400, f"Content-Length {declared!r} is not a number; send a valid request") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _upload_bytes(request: Request, limit: int) -> tuple[bytes, str]:
    """``(image bytes, name for messages)`` from a multipart upload or a raw body."""
    ctype = request.headers.get("content-type", "")
    main = ctype.split(";")[0].strip().lower()
    if main == "multipart/form-data":
        body = await _read_limited(request, limit, "the upload", _MULTIPART_SLACK)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, receive).form(max_files=1, max_fields=16)
        try:
            files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise ApiError(400, "the multipart upload holds no file; send the image as a file field named "
                                    "'image' (curl -F image=@photo.jpg)")
            field_name, upload = files[0]
            data = await upload.read()
            name = upload.filename or field_name
        finally:
            await form.close()
        if len(data) > limit:
            raise _too_large(name, limit)
        return data, name
    if main in ("", "application/octet-stream") or main.startswith("image/"):
        return await _read_limited(request, limit, "the request body"), "request body"
    raise ApiError(415, f"content type {main!r} is not an image; send a multipart upload (curl -F image=@photo.jpg) "
                        "or the raw image with Content-Type image/* or application/octet-stream")


# --------------------------------------------------------------------------- responses


def _select(det: Any, score: float, max_detections: int | None) -> Any:
    det = det.filter(score)
    if max_detections is not None and len(det) > max_detections:
        det = det.select(np.arange(max_detections))  # scores are sorted descending
    return det


def _encode(det: Any, image: np.ndarray, fmt: str, image_id: int) -> Response:
    """The response body of one image's (already filtered) detections."""
    if fmt == "png":
        from ..inference.visualize import overlay

        buf = io.BytesIO()
        overlay(image, det).save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"X-Detections": str(len(det))})
    h, w = int(image.shape[0]), int(image.shape[1])
    areas = det.masks.reshape(len(det), -1).sum(axis=1).tolist() if len(det) else []
    if fmt == "matterport":
        m = det.to_matterport()
        body = {"width": w, "height": h, "rois": m["rois"].tolist(), "class_ids": m["class_ids"].tolist(),
                "class_names": det.names, "scores": m["scores"].tolist(), "areas": areas, "masks": det.rle()}
    else:
        results = det.to_coco(image_id)
        for r, name, area in zip(results, det.names, areas):
            r["class_name"] = name
            r["area"] = int(area)
        body = {"width": w, "height": h, "detections": results}
    return Response(json.dumps(body), media_type="application/json")


# --------------------------------------------------------------------------- the app


def create_app(predictor: Any, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving ``predictor`` (its batcher's worker thread starts now and is
    drained and stopped when the app shuts down)."""
    metrics = ServeMetrics()

    def run_batch(images: list[np.ndarray]) -> list[Any]:
        return predictor.detect(images, batch_size=len(images))

    batcher: Batcher[np.ndarray, Any] = Batcher(
        run_batch, max_batch=settings.max_batch, wait_s=settings.batch_wait_ms / 1000, max_queue=settings.max_queue,
        on_batch=metrics.observe_batch, on_depth=metrics.queue_depth.set)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn has finished the in-flight requests (graceful shutdown); run what is still queued
        await asyncio.to_thread(batcher.close, settings.drain_timeout_s)

    app = FastAPI(title="maskrcnn serve", version=_version(), lifespan=lifespan,
                  description="Mask R-CNN instance segmentation over HTTP. Errors are JSON {\"error\": \"one line\"}.")
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.predictor = predictor
    check_key = _key_check(settings.api_key)
    _add_error_handlers(app)
    _add_request_metrics(app, metrics)
    _add_detect_route(app, predictor, batcher, settings, check_key)
    _add_status_routes(app, predictor, batcher, metrics, settings, check_key)
    _add_page(app)
    return app


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    """A check that raises a 401 :class:`ApiError` unless the request carries ``api_key`` (in
    ``X-API-Key`` or ``Authorization: Bearer``); it lets everything through without a key."""
    key = api_key.encode() if api_key else None

    def check_key(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), key):
            raise ApiError(401, "missing or wrong API key; send it in the X-API-Key header "
                                "(or Authorization: Bearer KEY)", {"WWW-Authenticate": "Bearer"})

    return check_key


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "<one line>"}``: ours, bad query values, unknown routes, the unexpected."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(MaskRCNNError)
    async def _user_error(_: Request, exc: MaskRCNNError) -> JSONResponse:
        return _error(400, exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_query(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = e.get("loc", ())
            field = ".".join(str(p) for p in loc[1:]) or ".".join(str(p) for p in loc) or "request"
            parts.append(f"{loc[0] if loc else 'query'} parameter {field}: {e.get('msg', 'invalid')} "
                         f"(got {e.get('input')!r})")
        return _error(422, "; ".join(parts) + "; see /docs for the accepted values")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, f"no such endpoint: {request.url.path}; see /docs")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}; see /docs", exc.headers)
        return _error(exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


def _add_request_metrics(app: FastAPI, metrics: ServeMetrics) -> None:
    """Count every request and its latency by route (unknown paths as ``other``) and status."""

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        path = request.url.path
        route = path if path in _ROUTES else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.observe_request(route, status, time.perf_counter() - start)


def _add_detect_route(app: FastAPI, predictor: Any, batcher: Batcher[np.ndarray, Any], settings: ServeSettings,
                      check_key: Callable[[Request], None]) -> None:
    """``POST /v1/detect``: read and decode the image on the thread pool, detect on the batcher, encode."""

    def prepare(data: bytes, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
        from ..data.images import decode_image

        image = predictor.to_array(decode_image(data, name), name)
        return image, padded_size(predictor, int(image.shape[0]), int(image.shape[1]), name)

    @app.post("/v1/detect", summary="Detect instances in one image", openapi_extra={"requestBody": _DETECT_BODY},
              responses={200: {"content": {"application/json": {}, "image/png": {}}}})
    async def detect(
        request: Request,
        score: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False,
                                      description="minimum score of returned detections")] = 0.5,
        max_detections: Annotated[int | None, Query(ge=1, le=10_000, description="at most this many, best first")] = None,
        format: Annotated[Literal["coco", "matterport", "png"], Query(description="response format")] = "coco",
        image_id: Annotated[int, Query(ge=0, le=2**53, description="image_id of the COCO results")] = 1,
    ) -> Response:
        check_key(request)
        data, name = await _upload_bytes(request, settings.max_image_bytes)
        image, size_key = await run_in_threadpool(prepare, data, name)
        del data
        try:
            det = await batcher.run(size_key, image)
        except QueueFull as exc:
            raise ApiError(503, f"server busy: {exc}; retry later", {"Retry-After": "1"}) from None
        except Draining:
            raise ApiError(503, "the server is shutting down; retry on another instance",
                           {"Retry-After": "5"}) from None
        det = _select(det, score, max_detections)
        return await run_in_threadpool(_encode, det, image, format, image_id)


def _add_status_routes(app: FastAPI, predictor: Any, batcher: Batcher[np.ndarray, Any], metrics: ServeMetrics,
                       settings: ServeSettings, check_key: Callable[[Request], None]) -> None:
    """``GET /v1/model``, ``/healthz``, ``/readyz`` and ``/metrics``."""

    @app.get("/v1/model", summary="The model: classes, config, backend")
    async def model_info(request: Request) -> dict[str, Any]:
        check_key(request)
        config = predictor.config
        return {"classes": list(predictor.class_names), "num_classes": int(config.num_classes),
                "backend": getattr(predictor, "backend", "pytorch"), "device": str(getattr(predictor, "device", "cpu")),
                "fast": bool(getattr(config, "fast", False)), "weights": Path(str(settings.weights)).name,
                "serving": {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms,
                            "max_image_mb": settings.max_image_mb, "max_queue": settings.max_queue,
                            "api_key": bool(settings.api_key)},
                "config": config.model_dump(mode="json")}

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model takes requests")
    async def readyz() -> Response:
        if batcher.alive:
            return JSONResponse({"ready": True, "queue_depth": batcher.waiting})
        return _error(503, "not ready: the model worker is stopped or draining")

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus(request: Request) -> Response:
        check_key(request)
        metrics.queue_depth.set(batcher.waiting)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_page(app: FastAPI) -> None:
    """``GET /``: the web page, and its files under ``/page``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")


def _version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------------- running


def app_from_env() -> FastAPI:
    """App factory of each worker process (``--workers K > 1``): settings from :data:`SETTINGS_ENV`."""
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return create_app(load_predictor(settings), settings)


def check_can_listen(host: str, port: int) -> None:
    """Raise a one-line :class:`MaskRCNNError` when ``host:port`` cannot be bound (in use, no such
    address, a privileged port), before the model is loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(address)
    except OSError as exc:
        raise MaskRCNNError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or "
                            "--host, or stop the process that uses it") from None


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> int:
    """Load the model and serve it until SIGINT/SIGTERM (in-flight and queued requests are finished
    first, for up to ``settings.drain_timeout_s`` seconds)."""
    import uvicorn

    check_can_listen(host, port)
    predictor = load_predictor(settings)  # a bad weights file is a one-line error before binding
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(settings.drain_timeout_s),
                  limit_concurrency=settings.max_queue + settings.max_batch + 64)
    if workers > 1:
        del predictor
        os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
        uvicorn.run("maskrcnn.serve.app:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(predictor, settings), **common)
    return 0

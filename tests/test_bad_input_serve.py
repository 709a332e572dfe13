"""Hostile and malformed requests to ``maskrcnn serve``: each is a 4xx JSON ``{"error": one line}``
that names what was wrong and says the fix; never a 500 or a traceback; the server goes on serving.

Also the command line: bad flag values are usage errors, a bad weights file is one ``error:`` line.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import maskrcnn  # noqa: E402
from _bad_input import assert_clean_error, run_cli  # noqa: E402
from _hostile_images import LIMIT_FIX, cut, encode, gif_claim, jpeg_claim, png, tiff_claim, webp_claim, wrong_crc  # noqa: E402
from _serve import free_port, image_array, make_checkpoint, png_bytes  # noqa: E402
from maskrcnn.serve.app import ServeSettings, create_app  # noqa: E402

GOOD = png_bytes(image_array(48, 64))
JPEG = encode(image_array(48, 64), "JPEG")
PNG = {"Content-Type": "image/png"}
KEY = "k3y-for-tests"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_bad"))


@pytest.fixture(scope="module")
def client(checkpoint: Path):
    predictor = maskrcnn.load(checkpoint, device="cpu", progress=False)
    # 0.05 MB = 52,428 bytes: GOOD fits, the large uploads below do not
    settings = ServeSettings(weights=str(checkpoint), max_image_mb=0.05, batch_wait_ms=0, api_key=KEY)
    with TestClient(create_app(predictor, settings), raise_server_exceptions=False) as c:
        c.headers["X-API-Key"] = KEY
        yield c


def _raw(data: bytes, ctype: str = "image/png", query: str = "") -> Callable[[TestClient], Any]:
    return lambda c: c.post("/v1/detect" + query, content=data, headers={"Content-Type": ctype})


def _file(data: bytes, name: str = "upload.png", field: str = "image") -> Callable[[TestClient], Any]:
    return lambda c: c.post("/v1/detect", files={field: (name, data, "image/png")})


def _two_channel_tiff() -> bytes:
    import io

    import numpy as np
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((2, 24, 32), np.uint8), photometric="minisblack", planarconfig="separate")
    return buf.getvalue()


def _chunked(data: bytes, size: int = 8192):
    def gen():
        for i in range(0, len(data), size):
            yield data[i:i + size]
    return gen()


BIG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200_000  # over 0.05 MB, never decoded

# name: (request, status, fragments of the one-line error)
CASES: dict[str, tuple[Callable[[TestClient], Any], int, tuple[str, ...]]] = {
    "text_as_png": (_raw(b"hello, this is not an image"), 400, ("request body", "not an image")),
    "empty_body": (_raw(b""), 400, ("request body", "empty")),
    "truncated_png": (_raw(cut(GOOD, 0.6)), 400, ("request body", "truncated")),
    "truncated_upload": (_file(cut(GOOD, 0.6), name="cut.png"), 400, ("cut.png", "truncated")),
    "truncated_jpeg": (_raw(cut(JPEG, 0.5), "image/jpeg"), 400, ("request body", "truncated")),
    "png_wrong_crc": (_raw(wrong_crc(GOOD, b"IDAT")), 400, ("request body", "crc")),
    "png_bomb": (_raw(png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64))), 400, ("decompression bomb", LIMIT_FIX)),
    "tiff_bomb": (_raw(tiff_claim(60_000, 60_000)), 400, ("decompression bomb", LIMIT_FIX)),
    "gif_bomb": (_raw(gif_claim(65_000, 65_000), "image/gif"), 400, ("decompression bomb", LIMIT_FIX)),
    "jpeg_bomb": (_raw(jpeg_claim(65_000, 65_000), "image/jpeg"), 400, ("decompression bomb", LIMIT_FIX)),
    "webp_bomb": (_raw(webp_claim(16_000, 16_000), "image/webp"), 400, ("decompression bomb", LIMIT_FIX)),
    "two_channels": (_raw(_two_channel_tiff(), "image/tiff"), 400, ("2 channels", "takes 3")),
    "over_size_limit": (_raw(BIG), 413, ("request body", "0.05 MB", "--max-image-mb")),
    "over_size_limit_chunked": (lambda c: c.post("/v1/detect", content=_chunked(BIG), headers=PNG), 413,
                                ("request body", "--max-image-mb")),
    "over_size_limit_multipart": (_file(BIG, name="huge.png"), 413, ("upload", "--max-image-mb")),
    "bad_content_length": (lambda c: c.post("/v1/detect", content=GOOD, headers={**PNG, "Content-Length": "x1"}), 400,
                           ("content-length",)),
    "text_content_type": (_raw(GOOD, "text/plain"), 415, ("text/plain", "multipart")),
    "json_content_type": (_raw(b'{"image": "x"}', "application/json"), 415, ("application/json", "image/*")),
    "form_urlencoded": (_raw(GOOD, "application/x-www-form-urlencoded"), 415, ("x-www-form-urlencoded", "-F image=@")),
    "multipart_no_file": (lambda c: c.post("/v1/detect", files={"image": (None, b"not a file")}), 400,
                          ("no file", "image")),
    "multipart_two_files": (lambda c: c.post("/v1/detect", files=[("image", ("a.png", GOOD, "image/png")),
                                                                  ("other", ("b.png", GOOD, "image/png"))]), 400,
                            ("files",)),
    "multipart_broken": (_raw(b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nabc",
                              "multipart/form-data; boundary=xyz"), 400, ("image",)),
    "score_above_one": (_raw(GOOD, query="?score=2"), 422, ("score", "less than or equal to 1")),
    "score_nan": (_raw(GOOD, query="?score=nan"), 422, ("score", "finite")),
    "score_text": (_raw(GOOD, query="?score=high"), 422, ("score", "number")),
    "max_detections_zero": (_raw(GOOD, query="?max_detections=0"), 422, ("max_detections", "greater than or equal to 1")),
    "max_detections_float": (_raw(GOOD, query="?max_detections=2.5"), 422, ("max_detections", "integer")),
    "unknown_format": (_raw(GOOD, query="?format=jpeg"), 422, ("format", "coco", "png")),
    "negative_image_id": (_raw(GOOD, query="?image_id=-1"), 422, ("image_id",)),
    "get_detect": (lambda c: c.get("/v1/detect"), 405, ("GET", "/v1/detect")),
    "unknown_endpoint": (lambda c: c.get("/v1/segment"), 404, ("/v1/segment", "/docs")),
    "no_api_key": (lambda c: c.post("/v1/detect", content=GOOD, headers={**PNG, "X-API-Key": ""}), 401, ("api key",)),
    "wrong_api_key": (lambda c: c.post("/v1/detect", content=GOOD, headers={**PNG, "X-API-Key": KEY[:-1]}), 401,
                      ("api key", "X-API-Key")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_is_a_clean_4xx(client: TestClient, name: str) -> None:
    make, status, fragments = CASES[name]
    r = make(client)
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    assert client.post("/v1/detect", content=GOOD, headers=PNG).status_code == 200  # still serving


def test_size_limit_refuses_before_reading_the_whole_body(client: TestClient) -> None:
    """A real server (uvicorn in a thread) answers 413 while a chunked upload of 80 MB is still being sent."""
    import json
    import select
    import socket
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        chunk = b"\x00" * 65536
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sent, total = 0, 80 * 2**20
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"X-API-Key: " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            sock.settimeout(0.5)
            while sent < total and not select.select([sock], [], [], 0)[0]:
                try:
                    sock.sendall(framed)
                except (TimeoutError, socket.timeout, BrokenPipeError, ConnectionResetError):
                    break  # the server stopped reading
                sent += len(chunk)
            assert select.select([sock], [], [], 10)[0], "no response"
            sock.settimeout(10)
            response = b""
            while b"}" not in response:
                part = sock.recv(65536)
                if not part:
                    break
                response += part
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert "--max-image-mb" in json.loads(body)["error"]
        assert sent < total / 4, f"{sent} bytes sent before the answer"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("flags, fragment", [
    (["--port", "70000"], "--port"),
    (["--port", "http"], "--port"),
    (["--max-batch", "0"], "--max-batch"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
    (["--max-image-mb", "nan"], "--max-image-mb"),
    (["--workers", "0"], "--workers"),
])
def test_bad_flags_are_usage_errors(flags: list[str], fragment: str, tmp_path: Path) -> None:
    result = run_cli("serve", "--weights", tmp_path / "w.safetensors", *flags)
    assert result.code == 2 and "Traceback" not in result.err
    assert fragment in result.err


def test_missing_weights_is_one_line_before_binding(tmp_path: Path) -> None:
    result = run_cli("serve", "--weights", tmp_path / "missing.safetensors", "--port", free_port())
    assert_clean_error(result, "missing.safetensors")


def test_port_in_use_is_one_line_before_loading(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("serve", "--weights", tmp_path / "missing.safetensors", "--port", port)
    assert_clean_error(result, f"127.0.0.1:{port}", "in use", "another --port")


def test_missing_serve_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = run_cli("serve", "--weights", tmp_path / "w.safetensors")
    assert_clean_error(result, "fastapi", "pip install 'maskrcnn[serve]'")

"""``maskrcnn serve``: the endpoints against the predictor, the batcher, load, drain and the web page.

In-process tests use FastAPI's TestClient on a tiny random-weight model that detects on purpose;
the load, SIGTERM and browser tests run the real command (uvicorn on 127.0.0.1, a free port).
"""

from __future__ import annotations

import io
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import maskrcnn  # noqa: E402
from _serve import image_array, make_checkpoint, metric, png_bytes, running_server  # noqa: E402
from maskrcnn.data import rle  # noqa: E402
from maskrcnn.serve.app import ServeSettings, create_app  # noqa: E402
from maskrcnn.serve.batching import Batcher, Draining, QueueFull  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def predictor(checkpoint: Path):
    return maskrcnn.load(checkpoint, device="cpu", progress=False)


def _client(predictor, **kw) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(weights="tiny.safetensors", **kw)))


@pytest.fixture(scope="module")
def client(predictor):
    with _client(predictor, batch_wait_ms=0) as c:
        yield c


IMAGE = image_array()


def _expected(predictor, image: np.ndarray, score: float):
    return predictor.detect(image)[0].filter(score)


# --------------------------------------------------------------------------- the API


def test_detect_coco_multipart_and_raw_equal_the_predictor(client, predictor):
    want = _expected(predictor, IMAGE, 0.0)
    assert len(want) >= 2 and set(want.names) == {"cell", "debris"}
    data = png_bytes(IMAGE)
    multipart = client.post("/v1/detect?score=0", files={"image": ("photo.png", data, "image/png")})
    raw = client.post("/v1/detect?score=0&image_id=7", content=data, headers={"Content-Type": "image/png"})
    assert multipart.status_code == raw.status_code == 200
    body = multipart.json()
    assert (body["width"], body["height"]) == (128, 96)
    got = body["detections"]
    assert len(got) == len(want)
    for d, ref, mask, name in zip(got, want.to_coco(1), want.masks, want.names):
        assert d["image_id"] == 1 and d["category_id"] == ref["category_id"]
        assert d["bbox"] == pytest.approx(ref["bbox"], abs=1e-4) and d["score"] == pytest.approx(ref["score"], abs=1e-6)
        assert d["segmentation"] == ref["segmentation"]
        assert d["class_name"] == name and d["area"] == int(mask.sum()) > 0
        assert rle.decode(d["segmentation"]).sum() == d["area"]
    raw_dets = raw.json()["detections"]
    assert [d["image_id"] for d in raw_dets] == [7] * len(want)
    assert [d["segmentation"] for d in raw_dets] == [d["segmentation"] for d in got]


def test_score_and_max_detections_select_the_best(client, predictor):
    data = png_bytes(IMAGE)
    all_ = _expected(predictor, IMAGE, 0.0)
    assert len(all_) >= 4
    thr = float(all_.scores[2] + all_.scores[3]) / 2  # between the third and the fourth best
    high = client.post(f"/v1/detect?score={thr}", content=data, headers={"Content-Type": "image/png"}).json()["detections"]
    assert [d["score"] for d in high] == pytest.approx(all_.scores[:3].tolist(), abs=1e-6)
    assert [d["class_name"] for d in high] == all_.names[:3]
    top2 = client.post("/v1/detect?score=0&max_detections=2", content=data,
                       headers={"Content-Type": "application/octet-stream"}).json()["detections"]
    assert [d["score"] for d in top2] == pytest.approx(all_.scores[:2].tolist(), abs=1e-6)
    none = client.post("/v1/detect?score=1", content=data, headers={"Content-Type": "image/png"})
    assert none.status_code == 200 and none.json()["detections"] == []


def test_matterport_format(client, predictor):
    want = _expected(predictor, IMAGE, 0.5)
    r = client.post("/v1/detect?format=matterport", files={"image": ("a.png", png_bytes(IMAGE), "image/png")})
    body = r.json()
    m = want.to_matterport()
    assert body["rois"] == m["rois"].tolist() and body["class_ids"] == m["class_ids"].tolist()
    assert body["class_names"] == want.names and body["scores"] == pytest.approx(m["scores"].tolist(), abs=1e-6)
    masks = [rle.decode(r).astype(bool) for r in body["masks"]]
    assert len(masks) == len(want) and all((a == b).all() for a, b in zip(masks, want.masks))


def test_png_format_is_the_overlay(client, predictor):
    from maskrcnn.inference.visualize import overlay

    want = _expected(predictor, IMAGE, 0.5)
    r = client.post("/v1/detect?format=png", content=png_bytes(IMAGE), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert int(r.headers["x-detections"]) == len(want) >= 1
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert got.shape == (96, 128, 3)
    assert (got == np.asarray(overlay(IMAGE, want))).all()
    assert (got != IMAGE).any()


def test_grayscale_upload_detects_like_the_predictor(client, predictor):
    gray = IMAGE.mean(axis=2).astype(np.uint8)
    with pytest.warns(UserWarning, match="grayscale"):
        want = _expected(predictor, gray, 0.5)
    r = client.post("/v1/detect", content=png_bytes(gray), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert [d["score"] for d in r.json()["detections"]] == pytest.approx(want.scores.tolist(), abs=1e-6)


def test_model_health_ready_docs_and_page(client):
    model = client.get("/v1/model").json()
    assert model["classes"] == ["BG", "cell", "debris"] and model["num_classes"] == 3
    assert model["backend"] == "pytorch" and model["device"] == "cpu" and model["weights"] == "tiny.safetensors"
    assert model["config"]["backbone"] == "resnet18" and model["serving"]["max_batch"] == 8
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {p["name"] for p in spec["paths"]["/v1/detect"]["post"]["parameters"]} >= {"score", "max_detections", "format"}
    assert "swagger" in client.get("/docs").text.lower()
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and 'id="instances"' in page.text
    assert "decodeMask" in client.get("/page/page.js").text


def test_metrics_count_requests_and_batches(predictor):
    with _client(predictor, batch_wait_ms=0) as c:
        data = png_bytes(IMAGE)
        for _ in range(3):
            assert c.post("/v1/detect", content=data, headers={"Content-Type": "image/png"}).status_code == 200
        assert c.post("/v1/detect", content=b"nope", headers={"Content-Type": "image/png"}).status_code == 400
        text = c.get("/metrics").text
    assert metric(text, "maskrcnn_requests_total", route="/v1/detect", status="200") == 3
    assert metric(text, "maskrcnn_requests_total", route="/v1/detect", status="400") == 1
    assert metric(text, "maskrcnn_request_seconds_count", route="/v1/detect") == 4
    assert metric(text, "maskrcnn_batch_size_count") == 3  # the bad image never reached the model
    assert metric(text, "maskrcnn_batch_size_sum") == 3
    assert metric(text, "maskrcnn_queue_depth") == 0
    assert metric(text, "maskrcnn_resident_memory_bytes") > 50e6


def test_api_key(predictor):
    data = png_bytes(IMAGE)
    with _client(predictor, api_key="s3cret") as c:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer s3cre"}, {"X-API-Key": ""}):
            r = c.post("/v1/detect", content=data, headers={"Content-Type": "image/png", **headers})
            assert r.status_code == 401 and "api key" in r.json()["error"].lower()
        assert c.get("/v1/model").status_code == 401 and c.get("/metrics").status_code == 401
        ok = {"Content-Type": "image/png"}
        assert c.post("/v1/detect", content=data, headers={**ok, "X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/detect", content=data, headers={**ok, "Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_full_queue_is_503_with_retry_after(predictor):
    release = threading.Event()
    with _client(predictor, max_queue=1, max_batch=1, batch_wait_ms=0) as c:
        batcher = c.app.state.batcher
        batcher.run_batch = lambda items: (release.wait(30), items)[1]
        running = batcher.submit("x", 1)  # taken by the worker, which blocks
        deadline = time.monotonic() + 10
        while batcher.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = batcher.submit("x", 2)  # fills the queue
        r = c.post("/v1/detect", content=png_bytes(IMAGE), headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"] and "\n" not in r.json()["error"]
        release.set()
        assert (running.result(10), queued.result(10)) == (1, 2)


# --------------------------------------------------------------------------- the batcher


def _recording(delay: float = 0.0):
    batches: list[list] = []

    def run(items):
        batches.append(list(items))
        time.sleep(delay)
        return [f"r{i}" for i in items]

    return batches, run


def test_batcher_groups_by_key_up_to_max_batch():
    batches, run = _recording()
    sizes = []
    b = Batcher(run, max_batch=4, wait_s=1.0, on_batch=lambda n, s: sizes.append(n))
    futures = [b.submit("A" if i < 5 else "B", i) for i in range(7)]  # A: 0-4, B: 5, 6
    assert [f.result(10) for f in futures] == [f"r{i}" for i in range(7)]
    assert b.close(10)
    # A's first four fill a batch at once; then A's fifth (oldest) waits its window, then B's two
    assert batches == [[0, 1, 2, 3], [4], [5, 6]]
    assert sizes == [4, 1, 2]


def test_batcher_waits_at_most_the_window_for_a_lone_request():
    batches, run = _recording()
    b = Batcher(run, max_batch=8, wait_s=0.2)
    start = time.monotonic()
    assert b.submit("A", 1).result(10) == "r1"
    assert 0.19 <= time.monotonic() - start < 5
    assert b.close(10) and batches == [[1]]


def test_batcher_queue_bound_drain_and_closed():
    release = threading.Event()
    seen = []

    def run(items):
        release.wait(30)
        seen.extend(items)
        return items

    depths = []
    b = Batcher(run, max_batch=1, wait_s=0, max_queue=2, on_depth=depths.append)
    first = b.submit("k", 0)
    deadline = time.monotonic() + 10
    while b.waiting and time.monotonic() < deadline:  # the worker takes it and blocks
        time.sleep(0.01)
    queued = [b.submit("k", 1), b.submit("k", 2)]
    with pytest.raises(QueueFull):
        b.submit("k", 3)
    assert b.waiting == 2 and b.in_flight == 3 and max(depths) == 2
    closer = threading.Thread(target=b.close, args=(30,))
    closer.start()
    deadline = time.monotonic() + 10
    while b.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Draining):
        b.submit("k", 4)
    release.set()
    closer.join(30)
    assert [f.result(1) for f in [first, *queued]] == [0, 1, 2] and seen == [0, 1, 2]  # drained, in order
    assert not b.alive and depths[-1] == 0


def test_batcher_isolates_a_failing_item_and_skips_cancelled():
    calls = []

    def run(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    b = Batcher(run, max_batch=8, wait_s=0.5)  # the batch waits 0.5 s: "d" is cancelled before it runs
    futures = [b.submit("k", x) for x in ("a", "bad", "c")]
    cancelled = b.submit("k", "d")
    assert cancelled.cancel()
    assert futures[0].result(10) == "A" and futures[2].result(10) == "C"
    with pytest.raises(ValueError, match="bad item"):
        futures[1].result(10)
    assert b.close(10)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # "d" was cancelled: never run


# --------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(checkpoint: Path):
    with running_server(checkpoint, "--max-batch", "4", "--batch-wait-ms", "20", "--max-queue", "64") as s:
        yield s


def test_500_requests_from_8_clients_no_server_error_flat_rss_and_batches(server):
    import psutil

    good = png_bytes(IMAGE)
    other = png_bytes(image_array(64, 80, seed=1))
    bad = good[: len(good) // 2]
    n, clients = 500, 8
    statuses: list[int] = [0] * n
    rss: list[tuple[int, int]] = []
    counter = iter(range(n))
    lock = threading.Lock()
    process = psutil.Process(server.proc.pid)

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                data = bad if i % 50 == 49 else (other if i % 5 == 0 else good)
                statuses[i] = c.post("/v1/detect?score=0.5", content=data, headers={"Content-Type": "image/png"}).status_code
                if i % 20 == 19:
                    with lock:
                        rss.append((i, process.memory_info().rss))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - start
    assert not any(t.is_alive() for t in threads)
    assert [i for i, s in enumerate(statuses) if s != (400 if i % 50 == 49 else 200)] == []
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "maskrcnn_requests_total", route="/v1/detect", status="200") == 490
    assert metric(text, "maskrcnn_requests_total", route="/v1/detect", status="400") == 10
    batches = metric(text, "maskrcnn_batch_size_count")
    assert metric(text, "maskrcnn_batch_size_sum") == 490
    assert batches - metric(text, "maskrcnn_batch_size_bucket", le="1.0") > 0  # batches of more than one ran
    assert batches < 490
    rss.sort()
    second = np.array([(i, r) for i, r in rss if i >= n // 2], dtype=float)
    slope = np.polyfit(second[:, 0], second[:, 1], 1)[0]  # bytes per request
    print(f"500 requests in {elapsed:.1f} s, {batches:.0f} batches, RSS {second[0, 1] / 2**20:.0f} -> "
          f"{second[-1, 1] / 2**20:.0f} MB, slope {slope * 100 / 2**20:.2f} MB per 100 requests")
    assert slope * 100 < 2 * 2**20, f"RSS grows {slope * 100 / 2**20:.2f} MB per 100 requests"


def _chromium() -> str | None:
    return shutil.which("chromium") or (("/usr/bin/chromium") if Path("/usr/bin/chromium").exists() else None)


def test_web_page_in_a_real_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(IMAGE))
    want = httpx.post(server.url + "/v1/detect?score=0", content=path.read_bytes(),
                      headers={"Content-Type": "image/png"}).json()["detections"]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/", timeout=30_000)
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')", timeout=30_000)
            assert "cell, debris" in page.text_content("#model")
            page.set_input_files("#file", str(path))
            page.wait_for_function("document.getElementById('status').textContent.includes('instances')",
                                   timeout=60_000)

            def rows() -> list[list[str]]:
                return [[c.strip() for c in r.locator("td").all_text_contents()]
                        for r in page.locator("#instances tbody tr").all()]

            def expected(threshold: float) -> list[list[str]]:
                return [[str(k + 1), d["class_name"], f"{d['score']:.3f}", str(d["area"])]
                        for k, d in enumerate(x for x in want if x["score"] >= threshold)]

            assert rows() == expected(0.5) and len(rows()) >= 4  # the default threshold
            size = page.evaluate("[document.getElementById('canvas').width, document.getElementById('canvas').height]")
            assert size == [128, 96]
            set_score = ("v => { const s = document.getElementById('score'); s.value = v; "
                         "s.dispatchEvent(new Event('input')); return parseFloat(s.value); }")
            between = page.evaluate(set_score, f"{(want[1]['score'] + want[-1]['score']) / 2:.2f}")
            assert 0 < len(rows()) < len(want) and rows() == expected(between)
            assert page.text_content("#status").startswith(f"{len(rows())} instances")
            page.evaluate(set_score, "1")
            assert rows() == [] and page.text_content("#status").startswith("0 instances")
        finally:
            browser.close()


def test_sigterm_drains_queued_requests(checkpoint: Path):
    data = png_bytes(IMAGE)
    with running_server(checkpoint, "--max-batch", "8", "--batch-wait-ms", "3000") as s:
        results: list[int] = []

        def one() -> None:
            results.append(httpx.post(s.url + "/v1/detect", content=data, headers={"Content-Type": "image/png"},
                                      timeout=60).status_code)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while metric(httpx.get(s.url + "/metrics").text, "maskrcnn_queue_depth") < 3:
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)  # the three wait for their 3 s batch window
        for t in threads:
            t.join(60)
        assert results == [200, 200, 200]
        # uvicorn re-raises the signal it caught once it has shut down (the parent sees a SIGTERM exit)
        assert s.proc.wait(60) in (0, -signal.SIGTERM)

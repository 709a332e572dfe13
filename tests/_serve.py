"""Helpers of the serve tests: a tiny detecting checkpoint, test images, and a real
``maskrcnn serve`` process on 127.0.0.1 with a free port."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _evaluate_data import detecting_model, save_model

ROOT = Path(__file__).resolve().parents[1]
#: six detections scoring 0.54-0.59, of both classes (seed 0): thresholds between them select some
FAVOUR = {1: 1.0, 2: 0.5}


def make_checkpoint(folder: Path) -> Path:
    """A tiny random-weight model (3 classes, 64-96 px inputs) that detects on purpose."""
    return save_model(detecting_model(FAVOUR), folder / "tiny.safetensors")


def image_array(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image ``[h, w, 3]`` uint8."""
    rng = np.random.default_rng(seed)
    small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running ``maskrcnn serve`` process."""

    proc: subprocess.Popen
    url: str
    log: Any

    def output(self) -> str:
        """What the server printed so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit status (SIGKILL after ``timeout`` seconds)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


@contextlib.contextmanager
def running_server(checkpoint: Path, *flags: str, start_timeout: float = 120) -> Iterator[Server]:
    """``maskrcnn serve --weights CHECKPOINT FLAGS`` on 127.0.0.1 and a free port, ready to take requests."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "maskrcnn.cli", "serve", "--weights", str(checkpoint),
                             "--device", "cpu", "--port", str(port), "--log-level", "warning", *flags],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {server.output()}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {start_timeout} s")
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        log.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name{labels}`` in Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0

"""Prometheus metrics of one server process, in a registry of its own (``GET /metrics``).

* ``maskrcnn_requests_total{route, status}``: requests answered, by route template and status code;
* ``maskrcnn_request_seconds{route}``: latency histogram (request received to response sent);
* ``maskrcnn_batch_size``: images per model call (histogram; buckets 1, 2, 3, 4, 6, 8, 12, 16, ...);
* ``maskrcnn_batch_seconds``: model time per batch;
* ``maskrcnn_queue_depth``: requests waiting for the model;
* ``maskrcnn_resident_memory_bytes``: the process's resident set size (RSS).
"""

from __future__ import annotations

import os

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class ServeMetrics:
    """The metrics of one app; :meth:`render` gives the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("maskrcnn_requests", "Requests answered, by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("maskrcnn_request_seconds", "Request latency in seconds, by route.", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("maskrcnn_batch_size", "Images per model call.", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("maskrcnn_batch_seconds", "Model time per batch in seconds.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("maskrcnn_queue_depth", "Requests waiting for the model.", registry=r)
        process = psutil.Process(os.getpid())
        rss = Gauge("maskrcnn_resident_memory_bytes", "Resident set size of the server process.", registry=r)
        rss.set_function(lambda: process.memory_info().rss)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one worker, in their own registry (no process-global state)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Milliseconds: from one fast token on a GPU up to the default 300 s inference timeout.
_MS_BUCKETS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000)

# Values of worker_requests_total's `outcome` label.
OUTCOMES = (
    "completed", "cancelled", "timeout", "vram_oom", "inference_failed",
    "invalid_request", "context_length_exceeded", "busy", "shutting_down", "unauthorized",
)


class WorkerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, memory_in_use: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        started = time.monotonic()
        r = self.registry
        self.vram_bytes = Gauge("worker_vram_bytes", "Device memory the worker holds (bytes)", registry=r)
        self.vram_bytes.set_function(lambda: float(memory_in_use()))
        self.requests = Counter(
            "worker_requests_total", "Execute requests by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # export zeros so dashboards see every series
        self.tokens = Counter("worker_tokens_generated_total", "Tokens generated", registry=r)
        self.inference_ms = Histogram(
            "worker_inference_duration_ms", "Wall time of an executed job (ms)", buckets=_MS_BUCKETS, registry=r
        )
        self.ttft_ms = Histogram(
            "worker_ttft_ms", "Time to first token of a job (ms)", buckets=_MS_BUCKETS, registry=r
        )
        self.uptime = Gauge("worker_uptime_seconds", "Seconds since the worker started", registry=r)
        self.uptime.set_function(lambda: time.monotonic() - started)
        self.oom = Counter("worker_oom_total", "Jobs ended by device out-of-memory", registry=r)

    def outcome(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

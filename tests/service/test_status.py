"""GET /health, GET /metrics and the OpenAPI schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.service.conftest import wait_idle
from tests.service.sse import execute
from worker.http.openapi import render, schema

DOCS_OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"

HEALTH_TYPES = {
    "status": str, "model": str, "architecture": str, "resident": bool, "quant_kind": str,
    "vram_bytes_used": int, "tokenizer_kind": str, "vocab_size": int, "context_length": int,
    "uptime_seconds": (int, float), "device": str, "sm": type(None), "cuda_runtime_version": type(None),
    "worker_id": str, "busy": bool, "queued": int,
}


def test_health_has_every_contract_field(client: httpx.Client) -> None:
    h = wait_idle(client)
    assert set(h) == set(HEALTH_TYPES)
    for key, types in HEALTH_TYPES.items():
        assert isinstance(h[key], types), (key, h[key])
    assert h["status"] == "healthy"
    assert h["resident"] is False and h["device"] == "cpu"  # the CPU reference backend
    assert h["architecture"] == "llama" and h["quant_kind"] == "Q4_1"
    assert h["tokenizer_kind"] == "gguf-bpe" and h["vocab_size"] == 49152
    assert h["context_length"] == 2048  # --ctx-size
    assert h["vram_bytes_used"] > 50_000_000  # the weights
    assert h["busy"] is False and h["queued"] == 0


def test_metrics_have_the_contract_names(client: httpx.Client) -> None:
    execute(client, {"job_id": "metrics-probe", "prompt": "Hi", "max_tokens": 2})
    text = client.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    body = text.text
    for name, kind in [
        ("worker_vram_bytes", "gauge"), ("worker_requests_total", "counter"),
        ("worker_tokens_generated_total", "counter"), ("worker_inference_duration_ms", "histogram"),
        ("worker_ttft_ms", "histogram"), ("worker_uptime_seconds", "gauge"), ("worker_oom_total", "counter"),
    ]:
        family = name.removesuffix("_total")
        assert re.search(rf"^# TYPE {family}(_total)? {kind}$", body, re.M), name
    samples = {ln.split()[0]: float(ln.split()[1]) for ln in body.splitlines() if ln and not ln.startswith("#")}
    assert samples['worker_requests_total{outcome="completed"}'] >= 1
    assert samples["worker_tokens_generated_total"] >= 1
    assert samples["worker_inference_duration_ms_count"] >= 1 and samples["worker_ttft_ms_count"] >= 1
    assert samples["worker_vram_bytes"] == client.get("/health").json()["vram_bytes_used"]
    assert samples["worker_uptime_seconds"] > 0


def test_openapi_schema_is_served_and_matches_docs(client: httpx.Client) -> None:
    served = client.get("/schema/openapi.json")
    assert served.status_code == 200
    checked_in = json.loads(DOCS_OPENAPI.read_text())
    assert served.json() == checked_in, "docs/openapi.json is stale: python -m worker.http.openapi > docs/openapi.json"
    assert DOCS_OPENAPI.read_text() == render()
    assert set(schema()["paths"]) == {"/execute", "/cancel", "/health", "/metrics"}

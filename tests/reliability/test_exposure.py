"""Exposure: loopback unless told otherwise, a warning when open without a key, the bearer key
checked before anything else about a request, and keys that could never match refused at start."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import WorkerProcess, free_port, spawn_worker, start_worker, wait_healthy

KEY = "k3y-for-exposure-tests"


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


@pytest.fixture(scope="module")
def keyed() -> Iterator[WorkerProcess]:
    w = start_worker("--api-key", KEY)  # the flag, as tests/service/test_auth.py covers the variable
    yield w
    w.stop()


def test_default_bind_is_loopback_only(keyed: WorkerProcess) -> None:
    ready = [e for e in keyed.logs() if e["event"] == "ready"]
    assert ready and ready[0]["host"] == "127.0.0.1"
    addr = outside_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to try")
    port = int(keyed.url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection((addr, port), timeout=2).close()


def test_explicit_host_listens_there_and_warns_without_a_key() -> None:
    addr = outside_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to bind")
    port = free_port()
    w = wait_healthy(spawn_worker("--host", "0.0.0.0", port=port))
    try:
        assert httpx.get(f"http://{addr}:{port}/health", timeout=5).status_code == 200
        warnings = [e for e in w.logs() if e["level"] == "warning" and "without --api-key" in e.get("message", "")]
        assert warnings and warnings[0]["host"] == "0.0.0.0"
    finally:
        w.stop()


def test_the_key_is_checked_before_the_body(keyed: WorkerProcess) -> None:
    """No key, no information: a malformed or oversized body still gets 401, not a validation answer."""
    with keyed.client() as c:
        for content in [b"{not json", b'{"job_id": 5}', b'{"prompt": "\\ud800"}']:
            for path in ("/execute", "/cancel"):
                r = c.post(path, content=content, headers={"content-type": "application/json"})
                assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED", (path, r.text)
        r = c.post("/execute", json={"job_id": "a", "prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}x"})
        assert r.status_code == 401
        r = c.post("/execute", json={"job_id": "a", "prompt": "hi", "max_tokens": 1},
                   headers={"Authorization": f"bearer {KEY}"})  # the scheme is case-insensitive
        assert r.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


@pytest.mark.parametrize("key", ["two words", "ключ", " padded", "tab\there"])
def test_a_key_that_could_never_match_is_a_startup_error(key: str) -> None:
    w = spawn_worker(env={"WORKER_API_KEY": key})
    assert w.proc.wait(timeout=60) == 1
    records = [json.loads(ln) for ln in w.log_path.read_text().splitlines() if ln.strip()]
    errors = [r for r in records if r["level"] == "error"]
    assert len(errors) == 1 and "printable ASCII" in errors[0]["message"], errors

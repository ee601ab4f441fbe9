"""SIGTERM / Ctrl-C: refuse new work (503), end every stream with a terminal event, exit 0
within 5 s."""

from __future__ import annotations

import signal
import socket
import time

from tests.service.conftest import start_worker
from tests.service.sse import iter_events

LONG = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 1900, "temperature": 0}


def test_sigterm_during_a_stream_drains_and_exits_zero() -> None:
    w = start_worker()
    try:
        with w.client() as c, c.stream("POST", "/execute", json={**LONG, "job_id": "running"}) as r1, \
                c.stream("POST", "/execute", json={**LONG, "job_id": "queued"}) as r2:
            running, queued = iter_events(r1), iter_events(r2)
            assert next(running).event == "started" and next(queued).event == "started"
            assert next(running).event == "token"
            t0 = time.monotonic()
            w.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            # Draining: still answering, but no new work.
            refused = c.post("/execute", json={"job_id": "late", "prompt": "Hi", "max_tokens": 1})
            assert refused.status_code == 503 and refused.json()["code"] == "SHUTTING_DOWN"
            assert c.get("/health").json()["status"] == "unhealthy"
            rest_q = list(queued)
            assert [e.event for e in rest_q] == ["error"] and rest_q[0].data["code"] == "CANCELLED"
            rest_r = list(running)
            terminal = [e for e in rest_r if e.event in ("end", "error")]
            assert len(terminal) == 1 and rest_r[-1] is terminal[0]
        assert w.proc.wait(timeout=max(0.1, 5 - (time.monotonic() - t0))) == 0
        assert time.monotonic() - t0 < 5
        events = [e["event"] for e in w.logs()]
        assert events.count("shutdown") >= 2 and events[-1] == "shutdown"
    finally:
        w.stop(signal.SIGKILL)


def test_ctrl_c_on_an_idle_worker_exits_zero() -> None:
    w = start_worker()
    try:
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGINT)
        assert w.proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
    finally:
        w.stop(signal.SIGKILL)


def test_sigterm_with_a_slow_client_still_exits_in_time() -> None:
    """A client that never reads must not hold the worker past 5 s."""
    w = start_worker()
    try:
        s = socket.create_connection(("127.0.0.1", int(w.url.rsplit(":", 1)[1])))
        body = b'{"job_id": "stuck", "prompt": "1, 2, 3,", "max_tokens": 1900}'
        s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(1.0)
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=6) == 0
        assert time.monotonic() - t0 < 5
        s.close()
    finally:
        w.stop(signal.SIGKILL)

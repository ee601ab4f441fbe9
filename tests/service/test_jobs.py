"""Job lifecycle: queueing, BUSY, cancel, client disconnect, duplicates, context, injected faults.

Every fault path must end the stream with exactly one terminal event and leave the worker
healthy, idle and holding the same device memory as before."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from tests.service.conftest import WorkerProcess, metric, wait_idle
from tests.service.sse import check_event_order, execute, iter_events

# Counting never hits EOS early: a job that runs until cancelled.
LONG = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 1900, "temperature": 0}


def assert_recovered(client: httpx.Client, vram_before: int) -> None:
    """Healthy, idle, same memory, and a small job still runs to `end`."""
    h = wait_idle(client)
    assert h["status"] == "healthy"
    assert h["vram_bytes_used"] == vram_before
    r, events = execute(client, {"job_id": f"probe-{time.monotonic_ns()}", "prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 200 and events[-1].event == "end", events[-1].data


def test_ninth_concurrent_request_is_busy_and_cancel_ends_every_stream(worker: WorkerProcess, job_id: str) -> None:
    with worker.client() as c, contextlib.ExitStack() as stack:
        vram = wait_idle(c)["vram_bytes_used"]
        streams = []
        for n in range(8):  # --queue-depth 8 (the default): the running job + 7 waiting
            r = stack.enter_context(c.stream("POST", "/execute", json={**LONG, "job_id": f"{job_id}-{n}"}))
            assert r.status_code == 200
            events = iter_events(r)
            assert next(events).event == "started"
            streams.append(events)
        h = c.get("/health").json()
        assert h["busy"] and h["queued"] == 7
        busy = c.post("/execute", json={**LONG, "job_id": f"{job_id}-9"})
        assert busy.status_code == 503
        assert busy.json()["code"] == "BUSY" and int(busy.headers["retry-after"]) >= 1
        # Cancel the queued ones first (they end at once), then the running one.
        for n in reversed(range(8)):
            r = c.post("/cancel", json={"job_id": f"{job_id}-{n}"})
            assert r.status_code == 202
            assert r.json()["state"] == ("running" if n == 0 else "queued")
        for events in streams:
            rest = list(events)
            assert [e.event for e in rest if e.event in ("end", "error")] == ["error"]
            assert rest[-1].data["code"] == "CANCELLED"
            assert {e.event for e in rest[:-1]} <= {"token", "metrics"}
        assert_recovered(c, vram)


def test_cancel_is_idempotent(client: httpx.Client, job_id: str) -> None:
    unknown = client.post("/cancel", json={"job_id": "no-such-job"})
    assert unknown.status_code == 202 and unknown.json() == {"job_id": "no-such-job", "state": "unknown"}
    execute(client, {"job_id": job_id, "prompt": "Hi", "max_tokens": 1})
    for _ in range(2):  # finished, then again
        r = client.post("/cancel", json={"job_id": job_id})
        assert r.status_code == 202 and r.json()["state"] == "unknown"


def test_cancel_running_job_twice_gives_one_terminal_event(client: httpx.Client, job_id: str) -> None:
    with client.stream("POST", "/execute", json={**LONG, "job_id": job_id}) as r:
        events = iter_events(r)
        got = [next(events), next(events)]  # started, first token
        assert [e.event for e in got] == ["started", "token"]
        assert client.post("/cancel", json={"job_id": job_id}).json()["state"] == "running"
        assert client.post("/cancel", json={"job_id": job_id}).status_code == 202
        got += list(events)
    check_event_order(got)
    assert got[-1].data["code"] == "CANCELLED"


def test_client_disconnect_cancels_the_job(worker: WorkerProcess, client: httpx.Client, job_id: str) -> None:
    cancelled = metric(client, 'worker_requests_total{outcome="cancelled"}')
    with worker.client() as other, other.stream("POST", "/execute", json={**LONG, "job_id": job_id}) as r:
        events = iter_events(r)
        assert next(events).event == "started"
        assert next(events).event == "token"
    # The stream is closed mid-job: the worker must stop it at the next token boundary.
    h = wait_idle(client, timeout=10)
    assert h["status"] == "healthy"
    assert metric(client, 'worker_requests_total{outcome="cancelled"}') == cancelled + 1
    end = [e for e in worker.logs() if e["event"] == "execute_end" and e.get("job_id") == job_id]
    assert end and end[0]["code"] == "CANCELLED" and "disconnect" in end[0]["message"]


def test_duplicate_running_job_id_is_rejected(client: httpx.Client, job_id: str) -> None:
    with client.stream("POST", "/execute", json={**LONG, "job_id": job_id}) as r:
        events = iter_events(r)
        assert next(events).event == "started"
        dup = client.post("/execute", json={"job_id": job_id, "prompt": "again", "max_tokens": 1})
        assert dup.status_code == 400
        assert dup.json()["code"] == "INVALID_REQUEST" and dup.json()["field"] == "job_id"
        client.post("/cancel", json={"job_id": job_id})
        assert list(events)[-1].data["code"] == "CANCELLED"
    # Once finished, the id can be used again.
    r2, events2 = execute(client, {"job_id": job_id, "prompt": "Hi", "max_tokens": 1})
    assert r2.status_code == 200 and events2[-1].event == "end"


def test_context_length_exceeded(client: httpx.Client, job_id: str) -> None:
    prompt = "hello " * 1100  # about 1100 tokens; the shared worker runs with --ctx-size 2048
    r = client.post("/execute", json={"job_id": job_id, "prompt": prompt, "max_tokens": 1000})
    assert r.status_code == 400
    assert r.json()["code"] == "CONTEXT_LENGTH_EXCEEDED" and r.json()["field"] == "max_tokens"
    r = client.post("/execute", json={"job_id": job_id, "prompt": "hello " * 2100})
    assert r.status_code == 400
    assert r.json()["code"] == "CONTEXT_LENGTH_EXCEEDED" and r.json()["field"] == "prompt"
    # Without max_tokens the default (2048) shrinks to the room the prompt leaves (any prompt
    # plus 2048 overflows this 2048-token context).
    with client.stream("POST", "/execute", json={"job_id": job_id, "prompt": "1, 2, 3,"}) as s:
        assert s.status_code == 200
        assert next(iter_events(s)).event == "started"
        client.post("/cancel", json={"job_id": job_id})


@pytest.mark.parametrize(
    ("fault", "code"),
    [("raise@3", "INFERENCE_FAILED"), ("oom@2", "VRAM_OOM"), ("raise@1", "INFERENCE_FAILED")],
)
def test_injected_fault_ends_the_stream_and_the_worker_recovers(
    client: httpx.Client, job_id: str, fault: str, code: str
) -> None:
    vram = wait_idle(client)["vram_bytes_used"]
    ooms = metric(client, "worker_oom_total")
    # Greedy: a sampled first token could end the turn before forward pass N is reached.
    body = {"job_id": job_id, "prompt": "Tell me about the sea.", "max_tokens": 20, "temperature": 0}
    r, events = execute(client, body, headers={"X-Worker-Test-Fault": fault})
    assert r.status_code == 200
    check_event_order(events)
    assert events[-1].event == "error" and events[-1].data["code"] == code
    # The n-th forward pass failed: prefill is pass 1, so n-1 tokens came out before it.
    n = int(fault.split("@")[1])
    assert sum(len(e.data["ids"]) for e in events if e.event == "token") <= n - 1
    assert metric(client, "worker_oom_total") == ooms + (code == "VRAM_OOM")
    assert_recovered(client, vram)


def test_bad_fault_spec_is_a_client_error(client: httpx.Client, job_id: str) -> None:
    r = client.post("/execute", json={"job_id": job_id, "prompt": "Hi", "max_tokens": 1},
                    headers={"X-Worker-Test-Fault": "explode"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_REQUEST"

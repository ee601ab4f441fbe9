"""Faults the worker must survive (each followed by a job that is served normally): a series of
injected forward-pass failures, /cancel during prefill, a timeout during prefill, and SIGTERM
during a prefill that outlasts the drain.

The test hook is WORKER_TEST_FAULTS=1 with the X-Worker-Test-Fault header (docs/CONTRACT-NOTES.md);
tests/service covers one fault of each kind, the SIGTERM drain mid-decode and the decode timeout."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator

import httpx

from tests.service.conftest import metric, start_worker, wait_idle
from tests.service.sse import SSEEvent, check_event_order, execute, iter_events
from tests.service.test_jobs import assert_recovered

FAULTS = {"raise": "INFERENCE_FAILED", "oom": "VRAM_OOM"}


def outcome_count(client: httpx.Client, code: str) -> float:
    return metric(client, f'worker_requests_total{{outcome="{code.lower()}"}}')


def rest_of(events: Iterator[SSEEvent]) -> list[SSEEvent]:
    """The remaining events, to the terminal one."""
    out = []
    for e in events:
        out.append(e)
        if e.event in ("end", "error"):
            break
    return out


def test_a_series_of_injected_faults_never_wears_the_worker_down(client: httpx.Client, job_id: str) -> None:
    """40 jobs, every other one failing at a random forward pass (prefill included): each faulty
    job ends with its error, each clean one completes, and memory never creeps."""
    rng = random.Random(8)
    vram = wait_idle(client)["vram_bytes_used"]
    failed = {code: outcome_count(client, code) for code in FAULTS.values()}
    injected: dict[str, int] = {}
    for n in range(40):
        body = {"job_id": f"{job_id}-{n}", "prompt": rng.choice(["Hi", "Tell me about the sea."]),
                "max_tokens": 6, "temperature": 0}
        kind = rng.choice(sorted(FAULTS)) if n % 2 else None
        headers = {"X-Worker-Test-Fault": f"{kind}@{rng.randint(1, 4)}"} if kind else {}
        r, events = execute(client, body, headers=headers)
        assert r.status_code == 200
        check_event_order(events)
        if kind is None:
            assert events[-1].event == "end", events[-1].data
        elif events[-1].event == "error":  # a job may end (EOS) before the chosen pass
            assert events[-1].data["code"] == FAULTS[kind], events[-1].data
            injected[kind] = injected.get(kind, 0) + 1
        assert wait_idle(client)["vram_bytes_used"] == vram
    assert sum(injected.values()) >= 15, injected
    for kind, code in FAULTS.items():
        assert outcome_count(client, code) == failed[code] + injected.get(kind, 0)
    assert_recovered(client, vram)


def test_cancel_during_prefill(client: httpx.Client, job_id: str) -> None:
    vram = wait_idle(client)["vram_bytes_used"]
    # Every forward pass sleeps 1.5 s first: the cancel lands inside the prefill.
    with client.stream("POST", "/execute", json={"job_id": job_id, "prompt": "Tell me about the sea.",
                                                  "max_tokens": 20, "temperature": 0},
                       headers={"X-Worker-Test-Fault": "delay@1500"}) as r:
        events = iter_events(r)
        assert next(events).event == "started"
        end = time.monotonic() + 5
        while not client.get("/health").json()["busy"] and time.monotonic() < end:
            time.sleep(0.02)
        t0 = time.monotonic()
        assert client.post("/cancel", json={"job_id": job_id}).json()["state"] == "running"
        rest = list(events)
    # Stopped at the first boundary after the prefill: not one token came out.
    assert [e.event for e in rest] == ["error"] and rest[0].data["code"] == "CANCELLED", rest
    assert time.monotonic() - t0 < 3
    assert_recovered(client, vram)


def test_timeout_during_prefill_and_the_next_job_runs() -> None:
    w = start_worker("--inference-timeout-sec", "1", env={"WORKER_TEST_FAULTS": "1"})
    try:
        with w.client() as c:
            vram = wait_idle(c)["vram_bytes_used"]
            r, events = execute(c, {"job_id": "slow-prefill", "prompt": "Hi", "max_tokens": 8},
                                headers={"X-Worker-Test-Fault": "delay@1500"})
            assert r.status_code == 200 and [e.event for e in events] == ["started", "error"], events
            assert events[-1].data["code"] == "TIMEOUT" and "1 s" in events[-1].data["message"]
            assert_recovered(c, vram)
    finally:
        w.stop()


def test_sigterm_during_a_prefill_longer_than_the_drain() -> None:
    """A forward pass cannot be interrupted: one that outlasts the 4 s drain must still not hold
    the client's terminal event or the exit past 5 s."""
    w = start_worker(env={"WORKER_TEST_FAULTS": "1"})
    got: list = []
    try:
        with w.client() as c, c.stream("POST", "/execute", json={"job_id": "long-prefill", "prompt": "Hi",
                                                                   "max_tokens": 8},
                                       headers={"X-Worker-Test-Fault": "delay@20000"}) as r:
            events = iter_events(r)
            got.append(next(events))
            time.sleep(0.5)  # inside the prefill now
            t0 = time.monotonic()
            w.proc.send_signal(signal.SIGTERM)
            reader = threading.Thread(target=lambda: got.extend(rest_of(events)))
            reader.start()
            reader.join(timeout=6)
            assert not reader.is_alive(), "no terminal event within 6 s of SIGTERM"
            exit_code = w.proc.wait(timeout=max(0.1, 6 - (time.monotonic() - t0)))
            elapsed = time.monotonic() - t0
        assert [e.event for e in got] == ["started", "error"] and got[-1].data["code"] == "CANCELLED", got
        assert exit_code == 0 and elapsed < 5, (exit_code, elapsed)
    finally:
        w.stop(signal.SIGKILL)



"""--inference-timeout-sec and --max-tokens-out, on a worker of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.conftest import WorkerProcess, metric, start_worker, wait_idle
from tests.service.sse import check_event_order, execute


@pytest.fixture(scope="module")
def limited() -> Iterator[WorkerProcess]:
    w = start_worker("--ctx-size", "512", "--inference-timeout-sec", "3", "--max-tokens-out", "64",
                     env={"WORKER_TEST_FAULTS": "1"})
    yield w
    w.stop()


def test_a_job_past_the_timeout_ends_with_timeout(limited: WorkerProcess) -> None:
    with limited.client() as c:
        vram = wait_idle(c)["vram_bytes_used"]
        # 100 ms per forward pass: 64 tokens cannot finish within 3 s, on any machine.
        r, events = execute(c, {"job_id": "slow", "prompt": "1, 2, 3,", "max_tokens": 64, "temperature": 0},
                            headers={"X-Worker-Test-Fault": "delay@100"})
        assert r.status_code == 200
        check_event_order(events)
        assert events[-1].event == "error" and events[-1].data["code"] == "TIMEOUT"
        assert metric(c, 'worker_requests_total{outcome="timeout"}') == 1
        h = wait_idle(c)
        assert h["status"] == "healthy" and h["vram_bytes_used"] == vram
        r, events = execute(c, {"job_id": "quick", "prompt": "Hi", "max_tokens": 2})
        assert events[-1].event == "end"


def test_max_tokens_above_max_tokens_out_is_refused(limited: WorkerProcess) -> None:
    with limited.client() as c:
        r = c.post("/execute", json={"job_id": "big", "prompt": "Hi", "max_tokens": 65})
        assert r.status_code == 400 and r.json()["field"] == "max_tokens"
        assert c.get("/health").json()["context_length"] == 512

"""Out of device memory: a job whose KV cache does not fit --vram-limit ends with VRAM_OOM,
its buffers are freed, and the next request is served normally."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.conftest import SMOLLM_KV_BYTES_PER_TOKEN, WorkerProcess, metric, start_worker, wait_idle
from tests.service.sse import check_event_order, execute

ROOM_TOKENS = 64  # KV-cache positions that fit next to the weights


@pytest.fixture(scope="module")
def tight(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    with worker.client() as c:
        # an idle worker holds its weights (and on CUDA the graphs recorded at load)
        weights = wait_idle(c)["vram_bytes_used"]
    w = start_worker("--vram-limit", str(weights + ROOM_TOKENS * SMOLLM_KV_BYTES_PER_TOKEN))
    yield w
    w.stop()


def test_kv_cache_past_the_limit_is_vram_oom_and_the_worker_recovers(tight: WorkerProcess) -> None:
    with tight.client() as c:
        before = wait_idle(c)["vram_bytes_used"]
        r, events = execute(c, {"job_id": "too-big", "prompt": "1, 2, 3,", "max_tokens": 200})
        assert r.status_code == 200
        check_event_order(events)
        assert events[-1].event == "error" and events[-1].data["code"] == "VRAM_OOM", events[-1].data
        assert metric(c, "worker_oom_total") == 1
        h = wait_idle(c)
        assert h["status"] == "healthy" and h["vram_bytes_used"] == before
        r, events = execute(c, {"job_id": "fits", "prompt": "Hi", "max_tokens": 8})
        assert events[-1].event == "end"
        assert wait_idle(c)["vram_bytes_used"] == before

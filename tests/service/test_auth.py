"""WORKER_API_KEY / --api-key: /execute and /cancel need `Authorization: Bearer <key>`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.conftest import WorkerProcess, start_worker
from tests.service.sse import execute

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def guarded() -> Iterator[WorkerProcess]:
    w = start_worker(env={"WORKER_API_KEY": KEY})
    yield w
    w.stop()


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {KEY}", "Bearer", KEY])
def test_work_needs_the_bearer_key(guarded: WorkerProcess, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    with guarded.client() as c:
        work = [("/execute", {"job_id": "a", "prompt": "Hi", "max_tokens": 1}), ("/cancel", {"job_id": "a"})]
        for path, body in work:
            r = c.post(path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["code"] == "UNAUTHORIZED" and r.headers["www-authenticate"] == "Bearer"


def test_the_right_key_works_and_status_stays_open(guarded: WorkerProcess) -> None:
    with guarded.client() as c:
        r, events = execute(c, {"job_id": "ok", "prompt": "Hi", "max_tokens": 1},
                            headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and events[-1].event == "end"
        assert c.post("/cancel", json={"job_id": "ok"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 202
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 200

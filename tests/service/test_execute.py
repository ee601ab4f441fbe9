"""POST /execute over a real worker: event order, stop reasons, seeds, correlation ids, logs."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

import httpx

from tests.service.conftest import WorkerProcess, wait_idle
from tests.service.sse import check_event_order, execute, text, token_ids

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_stream_is_started_tokens_metrics_then_end(client: httpx.Client, job_id: str) -> None:
    r, events = execute(client, {"job_id": job_id, "prompt": "The capital of France is", "max_tokens": 17,
                                 "temperature": 0})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    check_event_order(events)
    started, end = events[0].data, events[-1]
    assert set(started) == {"job_id", "model", "started_at", "seed", "prompt_tokens"}
    assert started["job_id"] == job_id and started["model"] == "smollm2-135m-instruct"
    assert RFC3339_UTC.match(started["started_at"]), started["started_at"]
    datetime.fromisoformat(started["started_at"].replace("Z", "+00:00"))
    assert started["prompt_tokens"] > 0
    assert end.event == "end", end.data
    assert set(end.data) == {"tokens_out", "decode_time_ms", "prefill_time_ms", "ttft_ms", "stop_reason", "seed"}
    if end.data["stop_reason"] == "max_tokens":
        assert end.data["tokens_out"] == 17
    assert len(token_ids(events)) == end.data["tokens_out"]
    assert end.data["seed"] == started["seed"]
    metrics = [e.data for e in events if e.event == "metrics"]
    if end.data["tokens_out"] >= 16:
        assert metrics and metrics[0]["tokens_out"] == 16
        assert set(metrics[0]) == {"tokens_out", "elapsed_ms", "tokens_per_sec"}


def test_greedy_runs_are_identical_and_seeded_runs_reproduce(client: httpx.Client, job_id: str) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0.9, "top_k": 40, "seed": 1234}
    _, a = execute(client, {**body, "job_id": job_id + "a"})
    _, b = execute(client, {**body, "job_id": job_id + "b"})
    assert token_ids(a) == token_ids(b) and len(token_ids(a)) > 0
    assert a[0].data["seed"] == 1234 and a[-1].data["seed"] == 1234


def test_seed_is_generated_and_reported_when_absent(client: httpx.Client, job_id: str) -> None:
    _, events = execute(client, {"job_id": job_id, "prompt": "Hi", "max_tokens": 2})
    seed = events[0].data["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**53  # exact in any JSON client
    assert events[-1].data["seed"] == seed
    # The reported seed reproduces the run.
    _, again = execute(client, {"job_id": job_id + "r", "prompt": "Hi", "max_tokens": 2, "seed": seed})
    assert token_ids(again) == token_ids(events)


def test_largest_seed_is_accepted(client: httpx.Client, job_id: str) -> None:
    r, events = execute(client, {"job_id": job_id, "prompt": "Hi", "max_tokens": 1, "seed": 2**64 - 1})
    assert r.status_code == 200 and events[-1].event == "end"
    assert events[0].data["seed"] == 2**64 - 1


def test_chat_prompt_ends_with_eos(client: httpx.Client, job_id: str) -> None:
    _, events = execute(client, {"job_id": job_id, "prompt": "Reply with the single word: yes", "chat": True,
                                 "temperature": 0, "max_tokens": 48})
    check_event_order(events)
    assert events[-1].data["stop_reason"] == "eos", text(events)
    # The chat template wraps the prompt, so it is longer than the bare text.
    _, bare = execute(client, {"job_id": job_id + "b", "prompt": "Reply with the single word: yes",
                               "max_tokens": 1})
    assert events[0].data["prompt_tokens"] > bare[0].data["prompt_tokens"] + 5


def test_stop_sequence_cuts_the_text_before_it(client: httpx.Client, job_id: str) -> None:
    body = {"prompt": "List the days of the week: Monday, Tuesday,", "temperature": 0, "max_tokens": 14}
    _, full = execute(client, {**body, "job_id": job_id + "a"})
    full_text = text(full)
    words = [w for w in re.findall(r"[A-Za-z]{4,}", full_text)]
    assert len(words) >= 2, full_text
    stop = words[1]
    _, events = execute(client, {**body, "job_id": job_id + "b", "stop": ["zzzz-never", stop]})
    check_event_order(events)
    assert events[-1].data["stop_reason"] == "stop_sequence"
    assert text(events) == full_text[: full_text.index(stop)]
    assert stop not in text(events)


def test_max_tokens_is_honoured(client: httpx.Client, job_id: str) -> None:
    _, events = execute(client, {"job_id": job_id, "prompt": "1, 2, 3, 4,", "max_tokens": 3, "temperature": 0})
    assert events[-1].data == {**events[-1].data, "stop_reason": "max_tokens", "tokens_out": 3}
    assert len(token_ids(events)) == 3


def test_correlation_id_is_echoed_and_logged(worker: WorkerProcess, client: httpx.Client, job_id: str) -> None:
    cid = "corr-" + job_id[-12:]
    r, _ = execute(client, {"job_id": job_id, "prompt": "Hi", "max_tokens": 1},
                   headers={"X-Correlation-Id": cid})
    assert r.headers["x-correlation-id"] == cid
    assert client.get("/health", headers={"X-Correlation-Id": cid}).headers["x-correlation-id"] == cid
    bad = client.post("/execute", json={"job_id": ""}, headers={"X-Correlation-Id": cid})
    assert bad.status_code == 400 and bad.headers["x-correlation-id"] == cid
    assert client.get("/health").headers.get("x-correlation-id")  # made up when absent
    job_logs = [e for e in worker.logs() if e.get("job_id") == job_id]
    assert {"execute_start", "execute_end"} <= {e["event"] for e in job_logs}
    assert all(e["correlation_id"] == cid for e in job_logs)


def test_logs_are_json_and_never_contain_the_prompt(worker: WorkerProcess, client: httpx.Client,
                                                    job_id: str) -> None:
    secret = f"purple-elephant-{job_id}"
    execute(client, {"job_id": job_id, "prompt": secret, "max_tokens": 1})
    raw = worker.log_path.read_text()
    assert secret not in raw
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    logs = worker.logs()
    assert len(logs) == len(lines)  # every line is one JSON object
    for e in logs:
        assert {"ts", "level", "event", "worker_id"} <= set(e), e
    start = next(e for e in logs if e["event"] == "execute_start" and e["job_id"] == job_id)
    assert start["prompt_chars"] == len(secret) and len(start["prompt_sha256"]) == 64
    events = {e["event"] for e in logs}
    assert {"startup", "model_load_start", "model_load_progress", "model_load_complete", "ready"} <= events
    progress = [e["percent"] for e in logs if e["event"] == "model_load_progress"]
    assert progress[0] == 0 and progress[-1] == 100


def test_queued_request_runs_after_the_first(worker: WorkerProcess, job_id: str) -> None:
    times: dict[str, float] = {}
    results: dict[str, list] = {}

    def run(name: str, max_tokens: int) -> None:
        with worker.client() as c:
            _, ev = execute(c, {"job_id": job_id + name, "prompt": "Count: one, two,", "max_tokens": max_tokens,
                                "temperature": 0})
        times[name] = time.monotonic()
        results[name] = ev

    first = threading.Thread(target=run, args=("a", 8))
    first.start()
    with worker.client() as c:
        end = time.monotonic() + 10
        while not c.get("/health").json()["busy"] and time.monotonic() < end:
            time.sleep(0.01)
        second = threading.Thread(target=run, args=("b", 3))
        second.start()
        seen_queued = False
        while second.is_alive():
            seen_queued |= c.get("/health").json()["queued"] == 1
            time.sleep(0.02)
        first.join()
    assert results["a"][-1].event == "end" and results["b"][-1].event == "end"
    assert times["a"] <= times["b"]
    assert seen_queued
    check_event_order(results["b"])


def test_worker_is_idle_and_healthy_after_the_module(client: httpx.Client) -> None:
    h = wait_idle(client)
    assert h["status"] == "healthy"

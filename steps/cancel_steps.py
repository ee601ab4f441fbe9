"""POST /cancel: idempotent, and a running job ends with error CANCELLED."""

from __future__ import annotations

import httpx
from pytest_bdd import given, then, when

from steps.execute_steps import check_end, check_shape, new_job_id, request, run_job
from steps.sse import ExecuteResult, SSEEvent, execute
from steps.workers import Worker

# A prompt a small model keeps continuing, so a job is still running when it is cancelled.
LONG_PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3, 4,"
LONG_MAX_TOKENS = 400


def cancel(worker: Worker, job_id: str) -> httpx.Response:
    return worker.client.post("/cancel", json={"job_id": job_id})


@given("a job id the worker has never seen", target_fixture="job_id")
def unseen_job_id() -> str:
    return new_job_id("never-seen")


@when("I cancel that job", target_fixture="cancel_response")
@when("I cancel it again", target_fixture="cancel_response")
def cancel_job(worker: Worker, job_id: str) -> httpx.Response:
    return cancel(worker, job_id)


@when("I cancel the job that just finished", target_fixture="cancel_response")
def cancel_finished(worker: Worker, run: ExecuteResult) -> httpx.Response:
    check_shape(run)
    assert run.request is not None
    return cancel(worker, run.request["job_id"])


@then("the worker accepts the cancel with 202")
def accepted(cancel_response: httpx.Response) -> None:
    assert cancel_response.status_code == 202, (
        f"/cancel answered HTTP {cancel_response.status_code} {cancel_response.text[:200]}, expected 202")


@when("I start a long job and cancel it through /cancel after its first token", target_fixture="run")
def cancel_running(worker: Worker) -> ExecuteResult:
    body = request(LONG_PROMPT, LONG_MAX_TOKENS, 0.0)
    answers: list[int] = []

    def on_event(ev: SSEEvent) -> None:
        if ev.event == "token" and not answers:
            answers.append(cancel(worker, body["job_id"]).status_code)

    run = run_job(worker, body, on_event=on_event)
    assert answers == [202], f"/cancel of the running job answered {answers}, expected [202]"
    return run


@then("the job stopped before its max_tokens")
def stopped_early(run: ExecuteResult) -> None:
    n = len(run.token_ids)
    assert n < LONG_MAX_TOKENS, f"the cancelled job streamed all {n} tokens"


@when("I start a long job and, while it runs, execute another job with the same job id",
      target_fixture="run")
def duplicate_job_id(worker: Worker) -> ExecuteResult:
    body = request(LONG_PROMPT, LONG_MAX_TOKENS, 0.0)
    second: list[ExecuteResult] = []

    def on_event(ev: SSEEvent) -> bool | None:
        if ev.event == "token" and not second:
            try:
                with httpx.Client(base_url=worker.url, timeout=30.0) as other:
                    second.append(execute(other, dict(body)))
            finally:
                cancel(worker, body["job_id"])
        return None

    first = run_job(worker, body, on_event=on_event)
    check_shape(first)
    assert second, f"the first job streamed no token: {first.describe()}"
    return second[0]


@then("the worker then serves the next job normally")
def next_job_ok(worker: Worker) -> None:
    run = run_job(worker, request("Hello", 2, 0.0))
    check_shape(run)
    check_end(run)


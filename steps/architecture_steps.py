"""Architectures: detected from the GGUF, routed to their adapter; models loaded one after another."""

from __future__ import annotations

from pytest_bdd import parsers, then, when

from steps.models import spec
from steps.workers import Worker, WorkerPool


@when(parsers.parse("I stop that worker and start a worker serving the {label} model"), target_fixture="worker")
def switch_model(workers: WorkerPool, worker: Worker, label: str, notes: dict[str, object]) -> Worker:
    workers.skip_external("needs to stop one worker and start the next")
    notes["stopped"] = worker
    notes["stopped_exit"] = workers.stop(worker)
    return workers.get(spec(label))


@then("the stopped worker exited with status 0")
def stopped_cleanly(notes: dict[str, object]) -> None:
    code = notes.get("stopped_exit")
    stopped = notes.get("stopped")
    tail = stopped.log_tail() if isinstance(stopped, Worker) else ""
    assert code == 0, f"the worker exited {code} on SIGTERM, expected 0; log tail:\n{tail}"

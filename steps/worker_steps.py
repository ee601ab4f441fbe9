"""Which worker a scenario talks to: the pool of started workers, or the external one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_bdd import given, parsers

from steps.models import DEFAULT_LABEL, spec
from steps.workers import Worker, WorkerPool, worker_device, worker_url

CPU_RESIDENT_REASON = "needs a CUDA worker: resident is false on the CPU backend"


@pytest.fixture(scope="session")
def workers(request: pytest.FixtureRequest) -> Iterator[WorkerPool]:
    config = request.config
    logs = Path(str(config.getoption("reports_dir"))) / "logs"
    pool = WorkerPool(config, worker_device(config), worker_url(config), logs)
    yield pool
    pool.close()


@given("a running worker", target_fixture="worker")
def a_running_worker(workers: WorkerPool) -> Worker:
    if workers.external is not None:
        from gates.report import record_worker

        record_worker(workers.config, workers.external.url, workers.external.health())
        return workers.external
    return workers.get(spec(DEFAULT_LABEL))


@given(parsers.parse("a worker serving the {label} model"), target_fixture="worker")
def a_worker_serving(workers: WorkerPool, label: str) -> Worker:
    return workers.get(spec(label))


@given(parsers.parse("a worker serving the {label} model on a GPU"), target_fixture="worker")
def a_worker_on_a_gpu(workers: WorkerPool, label: str) -> Worker:
    w = workers.get(spec(label))
    if not str(w.health().get("device", "")).startswith("cuda"):
        pytest.skip(CPU_RESIDENT_REASON)
    return w


@pytest.fixture
def notes() -> dict[str, object]:
    """What one step of a scenario leaves for a later one (beyond the target fixtures)."""
    return {}

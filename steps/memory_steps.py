"""Device memory: out-of-memory recovery under --vram-limit, and VRAM residency on CUDA."""

from __future__ import annotations

from pytest_bdd import given, then, when

from steps.execute_steps import request, run_job
from steps.health_steps import device_memory_used
from steps.models import spec
from steps.sse import ExecuteResult
from steps.workers import Worker, WorkerPool

# Room above the weights: a short job's KV cache fits (SmolLM2: 23 kB a position), a job
# that fills the context does not.
HEADROOM = 16 << 20


@given("a worker serving the SmolLM2 model with a memory limit that fits its weights but not a long job's "
       "KV cache", target_fixture="worker")
def memory_limited(workers: WorkerPool) -> Worker:
    workers.skip_external("needs a worker started with --vram-limit")
    m = spec("SmolLM2")
    weights = int(workers.get(m).health()["vram_bytes_used"])
    return workers.get(m, ("--vram-limit", str(weights + HEADROOM)))


@given("I note the device memory in use")
@when("I note the device memory in use")
def note_memory(worker: Worker, notes: dict[str, object]) -> None:
    notes["memory_before"] = device_memory_used(worker)


@when("I execute a job whose KV cache does not fit", target_fixture="run")
def execute_long(worker: Worker) -> ExecuteResult:
    ctx = int(worker.health()["context_length"])
    max_tokens = min(2048, ctx // 2)
    words = min(5000, ctx - max_tokens - 16)  # " hello" is one token; the whole context is asked for
    return run_job(worker, request("hello" + " hello" * (words - 1), max_tokens, 0.0))


@then("the device memory in use returns to the level noted")
def memory_back(worker: Worker, notes: dict[str, object]) -> None:
    before = notes["memory_before"]
    assert isinstance(before, int)
    now = device_memory_used(worker, settle_s=5.0, expect=before)
    assert now == before, f"vram_bytes_used is {now}, was {before} before the job ({now - before:+d} B)"

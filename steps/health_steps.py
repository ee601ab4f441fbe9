"""GET /health: every field of the contract, with its type, and what it says about the model."""

from __future__ import annotations

import re
import time
from typing import Any

from pytest_bdd import parsers, then, when

from steps.workers import Worker


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# The type words the feature files use, and what each accepts.
TYPE_CHECKS = {
    "text": lambda v: isinstance(v, str) and v != "",
    "boolean": lambda v: isinstance(v, bool),
    "count": lambda v: _is_int(v) and v >= 0,
    "positive count": lambda v: _is_int(v) and v > 0,
    "non-negative number": lambda v: _is_number(v) and v >= 0,
    "device name": lambda v: isinstance(v, str) and re.fullmatch(r"cuda:\d+|cpu", v) is not None,
    "text or nothing": lambda v: v is None or isinstance(v, str),
    "text, number or nothing": lambda v: v is None or isinstance(v, str) or _is_number(v),
}


def check_type(value: Any, kind: str) -> bool:
    if kind.startswith("one of "):
        return value in [c.strip() for c in kind.removeprefix("one of ").split(",")]
    return TYPE_CHECKS[kind](value)


@when("I ask for its health", target_fixture="health")
def ask_health(worker: Worker) -> dict[str, Any]:
    return worker.health()


@then("the health report has these fields:")
def health_has_fields(health: dict[str, Any], datatable: list[list[str]]) -> None:
    problems = []
    for field, kind in datatable[1:]:
        if field not in health:
            problems.append(f"{field}: missing")
        elif not check_type(health[field], kind):
            problems.append(f"{field}: expected {kind}, found {health[field]!r}")
    assert not problems, "health report: " + "; ".join(problems) + f"\n(report: {health})"


@then("the worker reports itself healthy")
def reports_healthy(health: dict[str, Any]) -> None:
    assert health.get("status") == "healthy", f"status {health.get('status')!r}, expected 'healthy'"


@then("the health report says:")
def health_says(health: dict[str, Any], datatable: list[list[str]]) -> None:
    wrong = [
        f"{field}: expected {value}, found {health.get(field)!r}"
        for field, value in datatable[1:]
        if str(health.get(field)) != value
    ]
    assert not wrong, "; ".join(wrong)


@then(parsers.parse('the health report names the architecture "{arch}"'))
def names_architecture(worker: Worker, arch: str) -> None:
    found = worker.health().get("architecture")
    assert found == arch, f"/health.architecture is {found!r}, expected {arch!r}"


@then("the health report says every weight and cache buffer is resident in device memory")
def resident(worker: Worker) -> None:
    h = worker.health()
    assert h.get("resident") is True, f"resident is {h.get('resident')!r} on {h.get('device')}, expected true"
    assert h.get("status") == "healthy", f"status {h.get('status')!r}"


def device_memory_used(worker: Worker, settle_s: float = 0.0, expect: int | None = None) -> int:
    """/health.vram_bytes_used; with `expect`, wait up to settle_s for it to come back to it
    (a worker may free a finished job's buffers just after the stream ends)."""
    deadline = time.monotonic() + settle_s
    while True:
        used = int(worker.health()["vram_bytes_used"])
        if expect is None or used == expect or time.monotonic() >= deadline:
            return used
        time.sleep(0.2)

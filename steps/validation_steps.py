"""Request validation: each rule of the contract answers 400 naming the field, before any stream."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from pytest_bdd import parsers, then, when

from steps.execute_steps import new_job_id, run_job
from steps.sse import ExecuteResult, execute
from steps.workers import Worker


def valid_request() -> dict[str, Any]:
    """A request the worker must accept; each example breaks exactly one field of it."""
    return {"job_id": new_job_id("valid"), "prompt": "Hello", "max_tokens": 1, "temperature": 0.0}


def example_value(text: str, names: dict[str, int]) -> Any:
    """An Examples-table value: a JSON literal, with `"x" * N`, `2 ** N`, `name + N` for the
    lengths and bounds that would not fit in a table (names: from /health, e.g. vocab_size)."""
    consts = {"true": True, "false": False, "null": None, **names}

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in consts:
            return consts[node.id]
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {ev(k): ev(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            ops = {ast.Mult: lambda: a * b, ast.Pow: lambda: a**b, ast.Add: lambda: a + b,
                   ast.Sub: lambda: a - b}
            if type(node.op) in ops:
                return ops[type(node.op)]()
        raise ValueError(f"unsupported example value {text!r}")

    return ev(ast.parse(text, mode="eval").body)


@when(parsers.parse("I execute a valid request with {field} set to {value}"), target_fixture="run")
def with_field(worker: Worker, field: str, value: str) -> ExecuteResult:
    names = {}
    if "vocab_size" in value or "context_length" in value:
        h = worker.health()
        names = {"vocab_size": h["vocab_size"], "context_length": h["context_length"]}
    body = valid_request()
    body[field] = example_value(value, names)
    return execute(worker.client, body)


@when(parsers.parse("I execute a valid request without {field}"), target_fixture="run")
def without_field(worker: Worker, field: str) -> ExecuteResult:
    body = valid_request()
    del body[field]
    return execute(worker.client, body)


@when("I post a request body that is not valid JSON", target_fixture="run")
def invalid_json(worker: Worker) -> ExecuteResult:
    return execute(worker.client, b'{"job_id": "broken", "prompt": "Hello", ')


@when("I execute a valid request", target_fixture="run")
def a_valid_request(worker: Worker) -> ExecuteResult:
    return run_job(worker, valid_request())


@when("I execute a prompt longer than the context leaves room for", target_fixture="run")
def too_long_for_context(worker: Worker) -> ExecuteResult:
    ctx = int(worker.health()["context_length"])
    # " a" is one token in byte-level BPE vocabularies: ~16k tokens within the 32768-char limit.
    words = 16000
    if words + 2048 <= ctx:
        pytest.skip(f"context_length {ctx} is too large to exceed with a 32768-character prompt")
    body = valid_request()
    body.update(prompt="a" + " a" * (words - 1), max_tokens=2048)
    return execute(worker.client, body)


def _field_matches(found: Any, field: str) -> bool:
    # "stop" may be named more precisely, e.g. "stop[4]" or "stop.4".
    return isinstance(found, str) and (found == field or found.startswith((f"{field}[", f"{field}.")))


@then(parsers.parse('the request is rejected with 400 "{code:w}" naming the field "{field}"'))
def rejected_naming(run: ExecuteResult, code: str, field: str) -> None:
    rejected(run, code)
    found = run.body.get("field")
    assert _field_matches(found, field), f"the 400 body names field {found!r}, expected {field!r}: {run.body}"


@then(parsers.parse('the request is rejected with 400 "{code:w}"'))
def rejected(run: ExecuteResult, code: str) -> None:
    sent = json.dumps(run.request)[:160] if run.request else "(raw body)"
    assert not run.events, f"the worker opened a stream for an invalid request {sent}: {run.describe()}"
    assert run.status == 400, f"HTTP {run.status} for invalid request {sent}, expected 400: {run.describe()}"
    assert isinstance(run.body, dict), f"400 body is not a JSON object: {run.raw_body[:200]!r}"
    assert run.body.get("code") == code, f"code {run.body.get('code')!r}, expected {code!r}: {run.body}"
    assert isinstance(run.body.get("message"), str) and run.body["message"], f"no message: {run.body}"

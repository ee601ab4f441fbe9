"""Every invalid /execute body gets 400 INVALID_REQUEST naming the field, before any stream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.sse import execute

VALID = {"job_id": "validation", "prompt": "Hi", "max_tokens": 1}

# (field, bad value): out of range first, then wrong types. Strings that look like numbers
# and booleans must be refused too (no lenient conversion).
CASES: list[tuple[str, Any]] = [
    ("job_id", ""), ("job_id", "x" * 257), ("job_id", 5), ("job_id", None), ("job_id", ["a"]),
    ("prompt", ""), ("prompt", "x" * 32769), ("prompt", 5), ("prompt", None), ("prompt", {"text": "hi"}),
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 2049), ("max_tokens", "5"), ("max_tokens", 1.5),
    ("max_tokens", True), ("max_tokens", None),
    ("temperature", -0.1), ("temperature", 2.01), ("temperature", "1.0"), ("temperature", True),
    ("temperature", None),
    ("top_p", -0.01), ("top_p", 1.01), ("top_p", "0.5"), ("top_p", False),
    ("top_k", -1), ("top_k", 49153), ("top_k", "1"), ("top_k", 1.5), ("top_k", True),
    ("min_p", -0.1), ("min_p", 1.5), ("min_p", "0.1"),
    ("repetition_penalty", -0.5), ("repetition_penalty", 2.5), ("repetition_penalty", "1.1"),
    ("stop", "x"), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("stop", [1]), ("stop", None),
    ("stop", ["word " * 40]),  # more than 32 tokens
    ("seed", -1), ("seed", 2**64), ("seed", "1"), ("seed", 1.5), ("seed", True),
    ("chat", "true"), ("chat", 1), ("chat", None),
]


def _id(case: tuple[str, Any]) -> str:
    field, value = case
    return f"{field}={str(value)[:20]!s}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_field_is_400_naming_the_field(client: httpx.Client, case: tuple[str, Any]) -> None:
    field, value = case
    r = client.post("/execute", json={**VALID, field: value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "INVALID_REQUEST"
    assert body["field"] == field, body
    assert body["message"]
    assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("field", ["job_id", "prompt"])
def test_missing_required_field_is_named(client: httpx.Client, field: str) -> None:
    body = {k: v for k, v in VALID.items() if k != field}
    r = client.post("/execute", json=body)
    assert r.status_code == 400 and r.json()["field"] == field


def test_unknown_field_is_refused_and_named(client: httpx.Client) -> None:
    r = client.post("/execute", json={**VALID, "temprature": 0.5})
    assert r.status_code == 400
    assert r.json() == {**r.json(), "code": "INVALID_REQUEST", "field": "temprature"}


NOT_JSON = [
    b"{not json", b"", b"[1, 2]", b'"prompt"', b"null", b'{"job_id": "a",}',
    b'{"job_id": "a", "prompt": "\xff"}',  # not UTF-8
]


@pytest.mark.parametrize("raw", NOT_JSON)
def test_invalid_json_is_400(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/execute", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_REQUEST" and r.json()["message"]


def test_oversized_body_is_refused(client: httpx.Client) -> None:
    r = client.post("/execute", json={**VALID, "prompt": "x" * (2 << 20)})
    assert r.status_code == 413 and r.json()["code"] == "INVALID_REQUEST"


def test_boundary_values_are_accepted(client: httpx.Client) -> None:
    body = {**VALID, "temperature": 2.0, "top_p": 0.0, "top_k": 49152, "min_p": 1.0, "repetition_penalty": 2.0,
            "stop": ["a" * 10] * 4, "seed": 0, "chat": False, "job_id": "x" * 256}
    r, events = execute(client, body)
    assert r.status_code == 200 and events[-1].event == "end", events[-1].data
    # Integers are fine where floats are expected.
    r, events = execute(client, {**VALID, "temperature": 0, "top_p": 1})
    assert r.status_code == 200 and events[-1].event == "end", events[-1].data


def test_zero_repetition_penalty_is_served(client: httpx.Client) -> None:
    r, events = execute(client, {**VALID, "repetition_penalty": 0.0, "max_tokens": 2})
    assert r.status_code == 200  # accepted: the contract's range is 0.0..2.0
    assert events[-1].event == "end", events[-1].data


def test_cancel_body_is_validated(client: httpx.Client) -> None:
    assert client.post("/cancel", json={}).status_code == 400
    assert client.post("/cancel", json={"job_id": 5}).json()["field"] == "job_id"
    assert client.post("/cancel", json={"job_id": "a", "x": 1}).json()["field"] == "x"
    assert client.post("/cancel", content=b"{").status_code == 400


def test_unknown_path_and_method(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    r = client.get("/execute")
    assert r.status_code == 405

"""Checks schemathesis runs on every response, beside its own (loaded with SCHEMATHESIS_HOOKS).

Its built-in checks see a 200 `text/event-stream` as opaque; these read the stream and hold
it to the contract: `started` first, exactly one terminal event, last, and every error body
names its problem."""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis

TERMINAL = ("end", "error")
JOB_ERRORS = {"VRAM_OOM", "CANCELLED", "TIMEOUT", "INFERENCE_FAILED"}
REFUSALS = {
    400: {"INVALID_REQUEST", "CONTEXT_LENGTH_EXCEEDED"}, 401: {"UNAUTHORIZED"}, 404: {"NOT_FOUND"},
    405: {"METHOD_NOT_ALLOWED"}, 413: {"INVALID_REQUEST"}, 503: {"BUSY", "SHUTTING_DOWN"},
}


def _events(body: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in re.split(rb"\r\n\r\n|\n\n", body):
        # strict UTF-8: a `t` may never split a character; lines end at CR, LF or CRLF only
        # (the SSE spec's), not at every break str.splitlines() knows (U+2028, U+0085, ...)
        lines = re.split(r"\r\n|\r|\n", block.decode("utf-8"))
        name = next((ln[len("event:"):].strip() for ln in lines if ln.startswith("event:")), None)
        data = [ln[len("data:"):].strip() for ln in lines if ln.startswith("data:")]
        if name is not None:
            out.append((name, json.loads("\n".join(data))))
    return out


@schemathesis.check
def sse_stream_is_complete(ctx: Any, response: Any, case: Any) -> bool | None:
    if case.path != "/execute" or case.method.upper() != "POST" or response.status_code != 200:
        return None
    events = _events(response.content)
    names = [n for n, _ in events]
    if not names or names[0] != "started":
        raise AssertionError(f"stream does not start with `started`: {names[:5]}")
    if sum(n in TERMINAL for n in names) != 1 or names[-1] not in TERMINAL:
        raise AssertionError(f"stream must end with exactly one terminal event: {names}")
    if not set(names[1:-1]) <= {"token", "metrics"}:
        raise AssertionError(f"unexpected events between `started` and the end: {names}")
    index = 0
    for name, data in events:
        if name == "token":
            if data["i"] != index:
                raise AssertionError(f"token index {data['i']}, expected {index}")
            index += len(data["ids"])
    name, data = events[-1]
    if name == "error" and data.get("code") not in JOB_ERRORS:
        raise AssertionError(f"unknown error code in the stream: {data}")
    return True


@schemathesis.check
def refusals_name_the_problem(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400 or case.path == "/schema/openapi.json":
        return None
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")
    body = json.loads(response.content)
    allowed = REFUSALS.get(response.status_code)
    if allowed is None or body.get("code") not in allowed:
        raise AssertionError(f"{response.status_code} with code {body.get('code')!r}, expected one of {allowed}")
    if not isinstance(body.get("message"), str) or not body["message"]:
        raise AssertionError(f"refusal without a message: {body}")
    if body["code"] == "BUSY" and not response.headers.get("retry-after"):
        raise AssertionError("503 BUSY without Retry-After")
    return True

"""A small Server-Sent Events client for POST /execute, on httpx.

Each event keeps its raw `data:` bytes, so the gates can tell a worker that sends invalid
UTF-8 (a character split across two events) from one that does not: httpx's text decoding
would silently paper over it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = ("end", "error")


@dataclass
class SSEEvent:
    event: str
    raw: bytes  # the data field's bytes as received (lines joined with b"\n")
    data: Any = None  # parsed JSON, or None when it did not parse
    utf8_error: str | None = None  # why raw is not valid UTF-8, if it is not
    json_error: str | None = None


@dataclass
class ExecuteResult:
    """One /execute call: the HTTP status and either the SSE events or the error body."""

    request: dict[str, Any] | None
    status: int
    content_type: str
    body: Any = None  # parsed JSON body of a non-stream answer
    raw_body: bytes = b""
    events: list[SSEEvent] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def of(self, name: str) -> list[SSEEvent]:
        return [e for e in self.events if e.event == name]

    @property
    def started(self) -> dict[str, Any]:
        first = self.events[0] if self.events else None
        assert first is not None and first.event == "started", f"no started event first: {self.names}"
        return first.data

    @property
    def terminal(self) -> SSEEvent:
        ends = [e for e in self.events if e.event in TERMINAL]
        assert len(ends) == 1, f"expected exactly one terminal event, found {len(ends)}: {self.names}"
        return ends[0]

    @property
    def end(self) -> dict[str, Any]:
        t = self.terminal
        assert t.event == "end", f"stream ended with {t.event} {t.data}, expected end"
        return t.data

    @property
    def tokens(self) -> list[dict[str, Any]]:
        return [e.data for e in self.of("token")]

    @property
    def token_ids(self) -> list[int]:
        return [i for t in self.tokens for i in t.get("ids", [])]

    @property
    def text(self) -> str:
        return "".join(t.get("t", "") for t in self.tokens)

    def describe(self) -> str:
        if self.events:
            return f"HTTP {self.status}, events {self.names}, text {self.text[:200]!r}"
        return f"HTTP {self.status} {self.content_type}: {self.raw_body[:300]!r}"


def _parse_event(name: str, data_lines: list[bytes]) -> SSEEvent:
    raw = b"\n".join(data_lines)
    ev = SSEEvent(event=name, raw=raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        ev.utf8_error = str(exc)
        text = raw.decode("utf-8", errors="replace")
    try:
        ev.data = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        ev.json_error = str(exc)
    return ev


def iter_sse(chunks: Any) -> Any:
    """Events from an iterator of byte chunks (SSE framing: fields, blank line dispatches)."""
    buf = b""
    name, data = "message", []
    for chunk in chunks:
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl].removesuffix(b"\r"), buf[nl + 1 :]
            if not line:
                if data:
                    yield _parse_event(name, data)
                name, data = "message", []
                continue
            if line.startswith(b":"):
                continue  # comment / keep-alive
            key, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if key == b"event":
                name = value.decode("utf-8", errors="replace")
            elif key == b"data":
                data.append(value)
    if data:
        yield _parse_event(name, data)


def execute(
    client: httpx.Client,
    body: dict[str, Any] | bytes,
    *,
    on_event: Callable[[SSEEvent], bool | None] | None = None,
    headers: dict[str, str] | None = None,
) -> ExecuteResult:
    """POST /execute and read the stream to its end (or until on_event returns True, which
    closes the connection: a client disconnect)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    with client.stream("POST", "/execute", content=content, headers=hdrs) as resp:
        ctype = resp.headers.get("content-type", "")
        result = ExecuteResult(
            request=body if isinstance(body, dict) else None,
            status=resp.status_code,
            content_type=ctype,
            headers=dict(resp.headers),
        )
        if resp.status_code != 200 or not ctype.startswith("text/event-stream"):
            result.raw_body = resp.read()
            try:
                result.body = json.loads(result.raw_body)
            except ValueError:
                result.body = None
            return result
        for ev in iter_sse(resp.iter_bytes()):
            result.events.append(ev)
            if on_event is not None and on_event(ev):
                break
    return result

"""A small SSE reader for httpx streaming responses (no extra dependency).

Events are split on the raw bytes and each block is decoded as strict UTF-8, so a `t` that
ended inside a code point would fail here rather than be papered over by a lenient decoder."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass
class SSEEvent:
    event: str
    data: Any
    raw: bytes


def iter_events(response: httpx.Response) -> Iterator[SSEEvent]:
    buf = b""
    for chunk in response.iter_bytes():
        buf += chunk
        while m := _BOUNDARY.search(buf):
            block, buf = buf[: m.start()], buf[m.end() :]
            event = _parse(block)
            if event is not None:
                yield event


def _parse(block: bytes) -> SSEEvent | None:
    text = block.decode("utf-8")  # strict on purpose
    name, data = "message", []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    if not data:
        return None
    return SSEEvent(name, json.loads("\n".join(data)), block)


TERMINAL = ("end", "error")


def read_all(response: httpx.Response) -> list[SSEEvent]:
    """Every event until the terminal one (or the end of the stream)."""
    out = []
    for ev in iter_events(response):
        out.append(ev)
        if ev.event in TERMINAL:
            break
    return out


def execute(
    client: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[SSEEvent]]:
    """POST /execute; a 200 is read to its terminal event, anything else is returned as is."""
    with client.stream("POST", "/execute", json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            return r, []
        return r, read_all(r)


def check_event_order(events: list[SSEEvent]) -> None:
    """started, then token/metrics, then exactly one terminal event, last."""
    names = [e.event for e in events]
    assert names and names[0] == "started", names
    assert names[-1] in TERMINAL, names
    assert sum(n in TERMINAL for n in names) == 1, names
    assert set(names[1:-1]) <= {"token", "metrics"}, names
    index = 0
    for e in events:
        if e.event == "token":
            assert e.data["i"] == index, (e.data, index)
            index += len(e.data["ids"])


def token_ids(events: list[SSEEvent]) -> list[int]:
    return [i for e in events if e.event == "token" for i in e.data["ids"]]


def text(events: list[SSEEvent]) -> str:
    return "".join(e.data["t"] for e in events if e.event == "token")

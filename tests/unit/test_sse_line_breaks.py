"""A token's text with characters that JSON leaves raw but Unicode line splitters break on
(U+2028, U+2029, U+0085) must reach every SSE client as one `data:` line.

The SSE spec ends lines at CR, LF or CRLF only, and Litestar splits `data` there; but clients
that split with Unicode rules (Python's str.splitlines, for one) would cut such a JSON string
in two. The worker escapes them; both kinds of parser must read back the exact text.
"""

from __future__ import annotations

import json
import re

import pytest

from worker.generation import TokenEvent
from worker.http.app import to_sse

TEXTS = ["a\u2028b", "\u2029", "x\x85y", 'mixed \u2028\x85\u2029 "quoted"\n\ttab', "plain ascii", "é漢字🙂"]


def _data(lines: list[str]) -> object:
    return json.loads("\n".join(ln[len("data:"):].strip() for ln in lines if ln.startswith("data:")))


@pytest.mark.parametrize("text", TEXTS)
def test_token_text_survives_both_line_splitters(text):
    raw = to_sse(TokenEvent(text, 7, [1, 2, 3])).encode().decode("utf-8")
    assert not any(c in raw for c in "\u2028\u2029\x85")
    spec_lines = re.split(r"\r\n|\r|\n", raw)
    assert _data(spec_lines) == {"t": text, "i": 7, "ids": [1, 2, 3]}
    assert _data(raw.splitlines()) == {"t": text, "i": 7, "ids": [1, 2, 3]}

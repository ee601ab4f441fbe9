"""UTF-8 in the stream: every `t` is whole characters (no U+FFFD, strict UTF-8 on the wire) and
the concatenation of `t` equals the tokenizer's decoding of all generated ids."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest

from tests.service.conftest import SMOLLM, WorkerProcess, start_worker
from tests.service.sse import check_event_order, execute, text, token_ids
from worker.gguf_file import GGUFFile
from worker.models.registry import resolve
from worker.tokenizer import load_tokenizer
from worker.tokenizer.base import Tokenizer

PROMPTS = {
    "chinese": "请用中文写一句关于春天的话。",
    "japanese": "日本語で短い俳句を書いてください。",
    "arabic": "اكتب جملة قصيرة عن البحر باللغة العربية.",
    "emoji": "Reply using only emoji: 🐉🔥🌊😀👍🏽",
}


@cache
def tokenizer(model: str) -> Tokenizer:
    return load_tokenizer(GGUFFile(resolve(model)))


def check_text(events: list, tok: Tokenizer) -> None:
    check_event_order(events)
    pieces = [e.data["t"] for e in events if e.event == "token"]
    ids = token_ids(events)
    truncated = _ends_mid_character(b"".join(tok.token_bytes(i) for i in ids))
    for n, piece in enumerate(pieces):
        piece.encode("utf-8")  # no lone surrogates
        if truncated and n == len(pieces) - 1:
            # max_tokens stopped the job inside a character: the decoded text of the ids ends
            # in U+FFFD, and so must the stream (its concatenation equals that decoding).
            assert events[-1].data["stop_reason"] == "max_tokens"
            assert "\ufffd" not in piece.rstrip("\ufffd"), pieces
        else:
            assert "\ufffd" not in piece, pieces
    assert text(events) == tok.decode(ids)


def _ends_mid_character(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        return exc.end == len(data) and exc.reason == "unexpected end of data"


@pytest.mark.parametrize("lang", list(PROMPTS))
def test_multibyte_output_smollm(client, job_id: str, lang: str) -> None:
    r, events = execute(client, {"job_id": job_id, "prompt": PROMPTS[lang], "chat": True, "max_tokens": 10,
                                 "temperature": 0})
    assert r.status_code == 200
    check_text(events, tokenizer(SMOLLM))


def test_multibyte_stop_sequence_is_held_back_and_cut(client, job_id: str) -> None:
    prompt = PROMPTS["chinese"]
    _, full = execute(client, {"job_id": job_id + "a", "prompt": prompt, "chat": True, "max_tokens": 10,
                               "temperature": 0})
    whole = text(full)
    cut = next((ch for ch in whole[2:] if ord(ch) > 0x7F), None)
    if cut is None:
        pytest.skip(f"no non-ASCII character in {whole!r}")
    _, events = execute(client, {"job_id": job_id + "b", "prompt": prompt, "chat": True, "max_tokens": 10,
                                 "temperature": 0, "stop": [cut]})
    assert events[-1].data["stop_reason"] == "stop_sequence"
    assert text(events) == whole[: whole.index(cut)]


QWEN = "qwen2.5-0.5b-instruct"


@pytest.fixture(scope="module")
def qwen() -> Iterator[WorkerProcess]:
    w = start_worker("--ctx-size", "1024", model=QWEN)
    yield w
    w.stop()


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("lang", list(PROMPTS))
def test_multibyte_output_qwen(qwen: WorkerProcess, lang: str) -> None:
    with qwen.client() as c:
        r, events = execute(c, {"job_id": f"qwen-{lang}", "prompt": PROMPTS[lang], "chat": True,
                                "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200
    check_text(events, tokenizer(QWEN))
    assert any(ord(ch) > 0x7F for ch in text(events)), text(events)

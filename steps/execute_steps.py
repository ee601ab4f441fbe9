"""POST /execute: the shape of the event stream, token accounting, and UTF-8 safety."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pytest_bdd import parsers, then, when

from steps.sse import TERMINAL, ExecuteResult, execute
from steps.workers import Worker

KNOWN_EVENTS = {"started", "token", "metrics", *TERMINAL}
STOP_REASONS = {"max_tokens", "eos", "stop_sequence"}
ERROR_CODES = {"VRAM_OOM", "CANCELLED", "TIMEOUT", "INFERENCE_FAILED"}


def new_job_id(prefix: str = "gate") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def request(prompt: str, max_tokens: int, temperature: float, **extra: Any) -> dict[str, Any]:
    return {"job_id": new_job_id(), "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            **extra}


def run_job(worker: Worker, body: dict[str, Any], **kw: Any) -> ExecuteResult:
    result = execute(worker.client, body, **kw)
    assert result.status == 200, f"/execute {body.get('job_id')}: {result.describe()}"
    return result


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _rfc3339_utc(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return t.utcoffset() == dt.timedelta(0)


def check_shape(run: ExecuteResult) -> None:
    """started first, then tokens (and metrics), then exactly one terminal event, last."""
    names = run.names
    assert names, f"no events at all: {run.describe()}"
    unknown = [n for n in names if n not in KNOWN_EVENTS]
    assert not unknown, f"events outside the contract: {unknown}"
    assert names[0] == "started", f"first event is {names[0]!r}, expected started: {names}"
    assert names.count("started") == 1, f"{names.count('started')} started events: {names}"
    terminals = [i for i, n in enumerate(names) if n in TERMINAL]
    assert len(terminals) == 1, f"expected exactly one terminal event, found {len(terminals)}: {names}"
    assert terminals[0] == len(names) - 1, f"events after the terminal {names[terminals[0]]}: {names}"
    bad = [e.event for e in run.events if e.data is None or e.json_error]
    assert not bad, f"events whose data is not a JSON object: {bad}"


def check_started(run: ExecuteResult) -> None:
    s = run.started
    problems = []
    if run.request is not None and s.get("job_id") != run.request["job_id"]:
        problems.append(f"job_id {s.get('job_id')!r} is not the request's {run.request['job_id']!r}")
    if not isinstance(s.get("model"), str) or not s.get("model"):
        problems.append(f"model {s.get('model')!r}")
    if not _rfc3339_utc(s.get("started_at")):
        problems.append(f"started_at {s.get('started_at')!r} is not an RFC 3339 UTC time")
    seed = s.get("seed")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64):
        problems.append(f"seed {seed!r}")
    elif run.request is not None and "seed" in run.request and seed != run.request["seed"]:
        problems.append(f"seed {seed} is not the requested {run.request['seed']}")
    pt = s.get("prompt_tokens")
    if not (isinstance(pt, int) and not isinstance(pt, bool) and pt > 0):
        problems.append(f"prompt_tokens {pt!r}")
    assert not problems, "started event: " + "; ".join(problems) + f" ({s})"


def check_end(run: ExecuteResult) -> dict[str, Any]:
    end = run.end
    problems = [f"{k} {end.get(k)!r}" for k in ("decode_time_ms", "prefill_time_ms", "ttft_ms")
                if not _number(end.get(k))]
    if end.get("stop_reason") not in STOP_REASONS:
        problems.append(f"stop_reason {end.get('stop_reason')!r}")
    if end.get("seed") != run.started.get("seed"):
        problems.append(f"seed {end.get('seed')!r} differs from started's {run.started.get('seed')!r}")
    if end.get("tokens_out") != len(run.token_ids):
        problems.append(f"tokens_out {end.get('tokens_out')!r} but {len(run.token_ids)} ids were streamed")
    assert not problems, "end event: " + "; ".join(problems) + f" ({end})"
    return end


def check_indexes(run: ExecuteResult) -> None:
    """Each token event's `i` is the index of its first id; ids are non-empty lists of ints."""
    n = 0
    for k, tok in enumerate(run.tokens):
        ids, t = tok.get("ids"), tok.get("t")
        assert isinstance(t, str), f"token event {k}: t is {t!r}"
        assert isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids), (
            f"token event {k}: ids {ids!r}, expected a non-empty list of token ids")
        assert tok.get("i") == n, f"token event {k}: i is {tok.get('i')!r}, expected {n}"
        n += len(ids)


def utf8_problems(run: ExecuteResult) -> list[str]:
    """Token texts that are not whole, valid UTF-8 (a character split across events shows as
    invalid bytes on the wire, a lone surrogate escape, or U+FFFD)."""
    problems = []
    events = run.of("token")
    for k, ev in enumerate(events):
        if ev.utf8_error:
            problems.append(f"token event {k}: data is not valid UTF-8 ({ev.raw!r}: {ev.utf8_error})")
            continue
        t = (ev.data or {}).get("t", "")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"token event {k}: t {t!r} holds a lone surrogate (half a character)")
            continue
        if k == len(events) - 1 and t.endswith("\ufffd"):
            # Generation that stops (max_tokens, cancel) inside a character can only flush
            # its bytes as one U+FFFD, as decoding all ids would; anywhere else it is a fault.
            t = t[:-1]
        if "\ufffd" in t:
            problems.append(f"token event {k}: t {t!r} holds U+FFFD (a replaced broken character)")
    return problems


@when(parsers.parse('I execute "{prompt}" with max_tokens {max_tokens:d} and temperature {temperature:g}'),
      target_fixture="run")
def execute_prompt(worker: Worker, prompt: str, max_tokens: int, temperature: float) -> ExecuteResult:
    return run_job(worker, request(prompt, max_tokens, temperature))


@when(parsers.parse('I execute "{prompt}" as a chat turn with max_tokens {max_tokens:d} and temperature '
                    "{temperature:g}"), target_fixture="run")
def execute_chat(worker: Worker, prompt: str, max_tokens: int, temperature: float) -> ExecuteResult:
    return run_job(worker, request(prompt, max_tokens, temperature, chat=True))


@then("the stream opens with a started event for my job")
def opens_with_started(run: ExecuteResult) -> None:
    check_shape(run)
    check_started(run)


@then("the stream has exactly one terminal event, and it comes last")
def one_terminal(run: ExecuteResult) -> None:
    check_shape(run)


@then("the stream ends normally")
def ends_normally(run: ExecuteResult) -> None:
    check_shape(run)
    assert run.terminal.event == "end", f"stream ended with {run.terminal.event}: {run.terminal.data}"
    check_end(run)


@then("the token indexes count up from 0 without gaps")
def indexes(run: ExecuteResult) -> None:
    check_indexes(run)


@then(parsers.parse("the stream has exactly {n:d} token event"))
@then(parsers.parse("the stream has exactly {n:d} token events"))
def n_token_events(run: ExecuteResult, n: int) -> None:
    found = len(run.of("token"))
    assert found == n, f"{found} token events, expected {n}: {run.describe()}"


@then(parsers.parse('the end event reports {n:d} token out and stop reason "{reason}"'))
@then(parsers.parse('the end event reports {n:d} tokens out and stop reason "{reason}"'))
def end_reports(run: ExecuteResult, n: int, reason: str) -> None:
    end = check_end(run)
    assert end.get("tokens_out") == n, f"tokens_out {end.get('tokens_out')!r}, expected {n}"
    assert end.get("stop_reason") == reason, f"stop_reason {end.get('stop_reason')!r}, expected {reason!r}"


@then("every token text is valid UTF-8 with no replacement character")
def whole_utf8(run: ExecuteResult) -> None:
    check_shape(run)
    problems = utf8_problems(run)
    assert not problems, "; ".join(problems)


@then(parsers.parse('the stream ends with error "{code:w}"'))
def ends_with_error(run: ExecuteResult, code: str) -> None:
    check_shape(run)
    t = run.terminal
    assert t.event == "error", f"stream ended with {t.event} {t.data}, expected error {code}"
    assert t.data.get("code") == code, f"error code {t.data.get('code')!r}, expected {code!r} ({t.data})"
    assert isinstance(t.data.get("message"), str), f"error event without a message: {t.data}"


@then("the stream carries at least one token")
def some_tokens(run: ExecuteResult) -> None:
    check_shape(run)
    check_indexes(run)
    assert run.token_ids, f"no tokens: {run.describe()}"

"""Generation on a real model: the haiku prompt, determinism under a seed, seeds that differ."""

from __future__ import annotations

import re

from pytest_bdd import parsers, then, when

from steps.execute_steps import check_end, check_indexes, check_shape, request, run_job
from steps.sse import ExecuteResult
from steps.workers import Worker

HAIKU_PROMPT = "Write a haiku about GPU computing"
TIMES = {"once": 1, "twice": 2, "three times": 3, "four times": 4}


def _seeds(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"\d+", text)]


@when(parsers.parse("I execute the haiku prompt as a chat turn {times} with temperature {temperature:g}, "
                    "seed {seed:d} and max_tokens {max_tokens:d}"), target_fixture="runs")
def haiku_runs(worker: Worker, times: str, temperature: float, seed: int, max_tokens: int) -> list[ExecuteResult]:
    return [run_job(worker, request(HAIKU_PROMPT, max_tokens, temperature, seed=seed, chat=True))
            for _ in range(TIMES[times])]


@when(parsers.parse("I execute the haiku prompt as a chat turn with temperature {temperature:g}, "
                    "max_tokens {max_tokens:d} and seeds {seeds}"), target_fixture="runs")
def haiku_seeds(worker: Worker, temperature: float, max_tokens: int, seeds: str) -> list[ExecuteResult]:
    return [run_job(worker, request(HAIKU_PROMPT, max_tokens, temperature, seed=s, chat=True))
            for s in _seeds(seeds)]


def _check(run: ExecuteResult) -> None:
    check_shape(run)
    check_indexes(run)
    check_end(run)


@then("every run streams a haiku")
def streams_haiku(runs: list[ExecuteResult]) -> None:
    for k, run in enumerate(runs):
        _check(run)
        text = run.text.strip()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        stop = run.end["stop_reason"]
        assert text, f"run {k}: empty text"
        assert len(lines) >= 3 or stop == "eos", (
            f"run {k}: {len(lines)} line(s) and stop reason {stop!r}, expected a haiku "
            f"(3 lines, or a stop at end of turn): {text!r}")


@then("all runs stream identical token ids and text")
def identical(runs: list[ExecuteResult]) -> None:
    for run in runs:
        _check(run)
    first = runs[0]
    for k, run in enumerate(runs[1:], start=1):
        assert run.token_ids == first.token_ids, (
            f"run {k} differs from run 0:\n ids {run.token_ids}\n vs {first.token_ids}\n"
            f" text {run.text!r}\n vs {first.text!r}")
        assert run.text == first.text, f"run {k} text {run.text!r} differs from run 0's {first.text!r}"


@then("the runs do not all stream the same token ids")
def differ(runs: list[ExecuteResult]) -> None:
    for run in runs:
        _check(run)
    distinct = {tuple(r.token_ids) for r in runs}
    assert len(distinct) > 1, f"all {len(runs)} seeds gave the same output: {runs[0].text!r}"

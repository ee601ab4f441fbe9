"""Prompts in many scripts: accepted and counted over HTTP; round trips on the reference tokenizer.

A worker cannot be asked to tokenize, so over HTTP the gate checks what the contract shows:
the prompt is accepted and `prompt_tokens` is reported. For the reference worker the count
must equal the reference tokenizer's, and encode -> decode must give the text back.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pytest_bdd import given, parsers, then, when

from steps.execute_steps import check_shape, check_started, request, run_job
from steps.models import spec
from steps.samples import SAMPLES
from steps.sse import ExecuteResult
from steps.workers import Worker
from worker.tokenizer.base import Tokenizer


@cache
def reference_tokenizer(model: str) -> Tokenizer:
    """The reference tokenizer of a registry model or GGUF path (loaded once per run)."""
    from worker.gguf_file import GGUFFile
    from worker.models.registry import resolve
    from worker.tokenizer import load_tokenizer

    return load_tokenizer(GGUFFile(resolve(model)))


def served_model(worker: Worker) -> str | None:
    """The --model a started reference worker serves (None for an external worker)."""
    if worker.external or "--model" not in worker.args:
        return None
    return worker.args[worker.args.index("--model") + 1]


@when(parsers.parse("I execute the {language} sample with max_tokens {max_tokens:d}"), target_fixture="run")
def execute_sample(worker: Worker, language: str, max_tokens: int) -> ExecuteResult:
    return run_job(worker, request(SAMPLES[language], max_tokens, 0.0))


@then("the started event reports the prompt's token count")
def reports_prompt_tokens(worker: Worker, run: ExecuteResult) -> None:
    check_shape(run)
    check_started(run)  # a positive count, for any worker
    model = served_model(worker)
    if model is not None:
        assert run.request is not None
        expected = len(reference_tokenizer(model).encode_prompt(run.request["prompt"], False))
        found = run.started["prompt_tokens"]
        assert found == expected, f"prompt_tokens {found}, the reference tokenizer counts {expected}"


@given(parsers.parse("the {label} model's vocabulary"), target_fixture="tokenizer")
def vocabulary(label: str) -> Tokenizer:
    m = spec(label)
    assert m.registry is not None, f"{label} is not a registry model"
    return reference_tokenizer(m.registry)


@then("encoding each multilingual sample and decoding the ids gives the sample back")
def round_trips(tokenizer: Tokenizer) -> None:
    bad: dict[str, Any] = {}
    for language, text in SAMPLES.items():
        ids = tokenizer.encode(text, add_bos=False)
        back = tokenizer.decode(ids)
        if not ids or back != text:
            bad[language] = (text, ids, back)
    assert not bad, "round trip fails for " + "; ".join(f"{k}: {v[0]!r} -> {v[1]} -> {v[2]!r}" for k, v in bad.items())

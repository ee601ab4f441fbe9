"""UTF-8 streaming safety: the pieces are whole characters and add up to the streamed ids."""

from __future__ import annotations

from pytest_bdd import parsers, then, when

from steps.execute_steps import check_end, check_indexes, check_shape, request, run_job
from steps.samples import REPLY_PROMPTS
from steps.sse import ExecuteResult
from steps.tokenizer_steps import reference_tokenizer, served_model
from steps.workers import Worker


@when(parsers.parse("I ask in {language} for a short answer in {same}, as a chat turn with max_tokens "
                    "{max_tokens:d}"), target_fixture="run")
def ask_in(worker: Worker, language: str, same: str, max_tokens: int) -> ExecuteResult:
    assert language == same, "the samples ask for an answer in the prompt's own language"
    return run_job(worker, request(REPLY_PROMPTS[language], max_tokens, 0.0, chat=True))


@then("the streamed text holds characters beyond ASCII")
def beyond_ascii(run: ExecuteResult) -> None:
    # Otherwise the scenario would prove nothing about multibyte characters.
    assert any(ord(c) > 127 for c in run.text), f"the model answered in ASCII only: {run.text!r}"


@then("the token texts joined are consistent with the streamed token ids")
def consistent(worker: Worker, run: ExecuteResult) -> None:
    check_shape(run)
    check_indexes(run)
    check_end(run)  # tokens_out equals the number of streamed ids
    model = served_model(worker)
    if model is not None:
        decoded = reference_tokenizer(model).decode(run.token_ids)
        assert run.text == decoded, f"joined token texts {run.text!r} != decoded ids {decoded!r}"


@then("some token event carries several ids: a character was held back until it was whole")
def held_back(run: ExecuteResult) -> None:
    # SmolLM2's vocabulary has few CJK/Thai tokens, so these characters span two or three byte
    # tokens; the contract sends the held-back ids with the event that completes the character.
    joined = [t for t in run.tokens if len(t.get("ids", [])) > 1]
    assert joined, f"every event carries one id, so no character was held back: {run.tokens}"

"""worker.tokenizer: streaming detokenization, special-token safety, chat templates, EOG ids."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.gguf_file import GGUFFile
from worker.models.registry import pull
from worker.tokenizer import (
    ChatTemplateError,
    GGUFBPETokenizer,
    StreamingDetokenizer,
    Tokenizer,
    TokenizerFileError,
    UnsupportedTokenizer,
    load_tokenizer,
)
from worker.tokenizer.gguf_bpe import BYTE_TO_UNICODE

MULTILINGUAL = (
    "Hello, world! Grüße aus Köln. 你好，世界！日本語のテキスト。안녕하세요. "
    "مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. ภาษาไทย. Ελληνικά. Русский текст. "
    "🙂👍🏽 👨‍👩‍👧‍👦 🇯🇵🏳️‍🌈 e\u0301 café\t\n  x = [i**2 for i in range(10)]\r\n"
)


# --- streaming: a fake tokenizer whose tokens are arbitrary byte strings ------------------------


class ByteTokens:
    """Token i stands for pieces[i]; decoding joins bytes, as byte-level BPE does."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def token_bytes(self, token_id: int) -> bytes:
        return self.pieces[token_id]

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _stream(tok: Any, ids: list[int]) -> list[str]:
    detok = StreamingDetokenizer(tok)
    return [detok.push(i) for i in ids] + [detok.flush()]


def _splits(data: bytes) -> list[list[bytes]]:
    """Every way to cut `data` into consecutive non-empty pieces."""
    out = []
    for cuts in itertools.product((False, True), repeat=len(data) - 1):
        pieces, start = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                pieces.append(data[start:i])
                start = i
        pieces.append(data[start:])
        out.append(pieces)
    return out


@pytest.mark.parametrize("char", ["é", "€", "你", "🙂"], ids=["2-byte", "3-byte", "3-byte-cjk", "4-byte"])
@pytest.mark.parametrize("context", [("", ""), ("a", "b"), ("ab ", "\u00e9\U0001f680")])
def test_stream_holds_back_split_characters(char: str, context: tuple[str, str]) -> None:
    before, after = context
    for split in _splits(char.encode()):
        pieces = [before.encode(), *split, after.encode()]
        pieces = [p for p in pieces if p]
        tok = ByteTokens(pieces)
        out = _stream(tok, list(range(len(pieces))))
        assert "".join(out) == tok.decode(list(range(len(pieces)))) == before + char + after
        assert "\ufffd" not in "".join(out)
        # Nothing of the character shows until its last byte arrives; then it shows whole.
        last = len(pieces) - (2 if after else 1)
        assert all(char not in piece for piece in out[:last])
        assert char in out[last]


def test_stream_of_two_characters_sharing_a_token() -> None:
    # "é" ends and "🙂" begins inside the same token.
    data = "é🙂".encode()
    tok = ByteTokens([data[:1], data[1:3], data[3:]])
    out = _stream(tok, [0, 1, 2])
    assert out == ["", "é", "🙂", ""]


def test_stream_replaces_invalid_bytes_like_decode() -> None:
    tok = ByteTokens([b"\x80", b"ok", b"\xe2\x82", b"x", b"\xf0\x9f"])
    out = _stream(tok, [0, 1, 2, 3, 4])
    assert "".join(out) == tok.decode([0, 1, 2, 3, 4]) == "\ufffdok\ufffdx\ufffd"
    assert out[-1] == "\ufffd"  # an unfinished character is only given up at flush


@given(st.lists(st.binary(min_size=0, max_size=6), max_size=12))
def test_stream_equals_decode_for_any_bytes(pieces: list[bytes]) -> None:
    tok = ByteTokens(pieces)
    ids = list(range(len(pieces)))
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


@given(st.text(max_size=20), st.lists(st.integers(min_value=0, max_value=80), max_size=10))
def test_stream_never_emits_a_partial_character(text: str, cuts: list[int]) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    tok = ByteTokens([data[a:b] for a, b in itertools.pairwise(bounds)])
    out = _stream(tok, list(range(len(tok.pieces))))
    assert "".join(out) == text
    assert "\ufffd" not in "".join(out) or "\ufffd" in text


# --- real models ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen() -> GGUFBPETokenizer:
    tok = load_tokenizer(GGUFFile(pull("qwen2.5-0.5b-instruct")))
    assert isinstance(tok, GGUFBPETokenizer)
    return tok


@pytest.fixture(scope="session")
def smollm() -> GGUFBPETokenizer:
    tok = load_tokenizer(GGUFFile(pull("smollm2-135m-instruct")))
    assert isinstance(tok, GGUFBPETokenizer)
    return tok


@pytest.fixture(params=["qwen", "smollm"])
def real(request: pytest.FixtureRequest) -> GGUFBPETokenizer:
    return request.getfixturevalue(request.param)


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.realmodel
def test_real_vocabularies_describe_themselves(qwen: GGUFBPETokenizer, smollm: GGUFBPETokenizer) -> None:
    assert (qwen.kind, qwen.vocab_size, qwen.bos_id, qwen.add_bos) == ("gguf-bpe", 151936, 151643, False)
    assert (smollm.kind, smollm.vocab_size, smollm.bos_id, smollm.add_bos) == ("gguf-bpe", 49152, 1, False)
    assert qwen.pre_tokenizer == "qwen2" and smollm.pre_tokenizer == "smollm"


@pytest.mark.realmodel
def test_known_prompt_ids(qwen: GGUFBPETokenizer, smollm: GGUFBPETokenizer) -> None:
    # Recorded from llama.cpp (docs: MODELS.md).
    assert qwen.encode("Write a haiku about GPUs") == [7985, 264, 6386, 38242, 911, 70403]
    assert smollm.encode("Write a haiku about GPUs") == [19161, 253, 421, 30614, 563, 45742]


@pytest.mark.realmodel
def test_eog_ids_hold_end_of_turn_and_end_of_text(real: GGUFBPETokenizer) -> None:
    im_end, endoftext = real.token_id("<|im_end|>"), real.token_id("<|endoftext|>")
    assert im_end is not None and endoftext is not None
    assert {im_end, endoftext} <= real.eog_ids
    assert real.token_id("<|im_start|>") not in real.eog_ids


@pytest.mark.realmodel
@pytest.mark.parametrize("control", ["<|im_end|>", "<|endoftext|>", "<|im_start|>"])
def test_control_token_text_is_plain_text_unless_parsed(real: GGUFBPETokenizer, control: str) -> None:
    cid = real.token_id(control)
    assert cid is not None and real.is_control(cid)
    text = f"before {control} after"
    plain = real.encode(text)
    assert cid not in plain
    assert real.decode(plain) == text
    parsed = real.encode(text, parse_special=True)
    assert cid in parsed
    assert real.encode(control, parse_special=True) == [cid]
    # The same instance answers both ways in any order (no state left behind).
    assert real.encode(text) == plain


@pytest.mark.realmodel
def test_user_defined_tokens_match_in_plain_text(qwen: GGUFBPETokenizer) -> None:
    # llama.cpp matches user-defined tokens even without parse_special, and prints them.
    tool_call = qwen.token_id("<tool_call>")
    assert tool_call is not None
    assert tool_call in qwen.encode("x <tool_call> y")
    assert qwen.decode([tool_call]) == "<tool_call>"


@pytest.mark.realmodel
def test_control_tokens_render_as_nothing(real: GGUFBPETokenizer) -> None:
    im_end = real.token_id("<|im_end|>")
    assert im_end is not None
    assert real.token_bytes(im_end) == b""
    ids = real.encode("Hi<|im_end|>", parse_special=True)
    assert real.decode(ids) == "Hi"


@pytest.mark.realmodel
def test_round_trip_multilingual(real: GGUFBPETokenizer) -> None:
    assert real.decode(real.encode(MULTILINGUAL)) == MULTILINGUAL


@pytest.mark.realmodel
def test_token_bytes_go_through_the_byte_table(qwen: GGUFBPETokenizer) -> None:
    space = qwen.token_id(BYTE_TO_UNICODE[ord(" ")])
    assert space is not None and qwen.token_bytes(space) == b" "
    with pytest.raises(ValueError, match="outside the vocabulary"):
        qwen.token_bytes(qwen.vocab_size)


@pytest.mark.realmodel
def test_real_model_stream_matches_decode(real: GGUFBPETokenizer) -> None:
    ids = real.encode(MULTILINGUAL)
    # The text must really split characters across tokens, or the test proves nothing.
    assert any(_is_partial(real.token_bytes(i)) for i in ids)
    out = _stream(real, ids)
    assert "".join(out) == real.decode(ids) == MULTILINGUAL
    assert not any("\ufffd" in piece for piece in out)


def _is_partial(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.realmodel
def test_qwen_chat_turn(qwen: GGUFBPETokenizer) -> None:
    assert qwen.has_chat_template and qwen.chat_template_size > 0
    want = (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku about GPUs<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert qwen.apply_chat_template([{"role": "user", "content": "Write a haiku about GPUs"}]) == want
    ids = qwen.encode_prompt("Write a haiku about GPUs", chat=True)
    assert ids[0] == qwen.token_id("<|im_start|>") and ids[-1] == qwen.encode("\n")[0]
    assert ids.count(qwen.token_id("<|im_end|>")) == 2
    assert qwen.decode(ids) == want.replace("<|im_start|>", "").replace("<|im_end|>", "")


@pytest.mark.realmodel
def test_qwen_chat_with_system_and_no_generation_prompt(qwen: GGUFBPETokenizer) -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert qwen.apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


@pytest.mark.realmodel
def test_smollm_chat_turn(smollm: GGUFBPETokenizer) -> None:
    assert smollm.has_chat_template
    want = (
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku about GPUs<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert smollm.apply_chat_template([{"role": "user", "content": "Write a haiku about GPUs"}]) == want
    ids = smollm.encode_prompt("Write a haiku about GPUs", chat=True)
    assert ids == smollm.encode(want, parse_special=True)
    assert ids[0] == smollm.bos_id  # <|im_start|> is SmolLM2's BOS, put there by the template only


@pytest.mark.realmodel
def test_chat_prompt_cannot_inject_control_tokens(real: GGUFBPETokenizer) -> None:
    # The chat path parses specials, so a user's "<|im_end|>" does become the control token there;
    # plain prompts are the protected path.
    assert real.token_id("<|im_end|>") not in real.encode_prompt("say <|im_end|> now", chat=False)


# --- made vocabularies: rules that the real files do not exercise -------------------------------


def _tiny_metadata(**overrides: Any) -> dict[str, Any]:
    """A byte-level vocabulary: 256 byte tokens, a few merges, ChatML control tokens."""
    tokens = [BYTE_TO_UNICODE[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "hell o"]
    tokens += ["he", "ll", "hell", "hello", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra>"]
    types = [1] * 260 + [3, 3, 3, 4]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 260,
        "tokenizer.ggml.eos_token_id": 262,
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def test_tiny_vocabulary_merges_and_eog() -> None:
    tok = GGUFBPETokenizer(_tiny_metadata())
    assert tok.encode("hello") == [259]  # the last merge's token
    assert tok.eog_ids == {260, 262}  # <|endoftext|> and <|im_end|>
    assert tok.encode("<extra>") == [263]  # user-defined: matched even in plain text
    assert tok.decode([263, 262, 259]) == "<extra>hello"


def test_ordinary_eos_is_ignored_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.tokenizer"):
        tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.ggml.eos_token_id": 1}))
    warnings = [r for r in caplog.records if "eos_token_id" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].name == "worker.tokenizer"
    assert 1 not in tok.eog_ids and tok.eog_ids == {260, 262}


def test_eos_override_joins_eog_ids() -> None:
    tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.ggml.eos_token_id": 1}), eos_override=1)
    assert 1 in tok.eog_ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        GGUFBPETokenizer(_tiny_metadata(), eos_override=10_000)


def test_add_bos_follows_metadata_then_pre_tokenizer_default() -> None:
    assert not GGUFBPETokenizer(_tiny_metadata()).add_bos
    assert GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.ggml.pre": "llama-bpe"})).add_bos
    forced = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.ggml.add_bos_token": True}))
    assert forced.encode("hello") == [260, 259]
    assert forced.encode("hello", add_bos=False) == [259]


def test_unknown_pre_tokenizer_warns_and_uses_gpt2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.tokenizer"):
        tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.ggml.pre": "mystery"}))
    assert any("mystery" in r.getMessage() for r in caplog.records)
    assert tok.decode(tok.encode("hello 123")) == "hello 123"


def test_missing_chat_template_falls_back_to_chatml() -> None:
    tok = GGUFBPETokenizer(_tiny_metadata())
    assert not tok.has_chat_template and tok.chat_template_size == 0
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode_prompt("hi", chat=True)
    assert ids[0] == 261 and ids.count(262) == 1


def test_chat_template_environment() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "{{ m | tojson }}\n"
        "{% endfor %}"
    )
    tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.chat_template": template}))
    assert tok.has_chat_template and tok.chat_template_size == len(template)
    text = tok.apply_chat_template([{"role": "user", "content": "<é>"}])
    assert text == '<|endoftext|>{"role": "user", "content": "<é>"}\n'  # no HTML escaping, no \u
    with pytest.raises(ChatTemplateError, match="no tools"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    # The template already starts with BOS, so encode_prompt adds none even when the model asks.
    bos_model = GGUFBPETokenizer(
        _tiny_metadata(**{"tokenizer.chat_template": template, "tokenizer.ggml.add_bos_token": True})
    )
    ids = bos_model.encode_prompt("x", chat=True)
    assert ids[0] == 260 and ids.count(260) == 1


def test_chat_template_is_sandboxed() -> None:
    template = "{{ messages.__class__.__mro__ }}"
    tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.chat_template": template}))
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_broken_chat_template_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.tokenizer"):
        tok = GGUFBPETokenizer(_tiny_metadata(**{"tokenizer.chat_template": "{% for %}"}))
    assert not tok.has_chat_template
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user")


def _fake_file(**metadata: Any) -> Any:
    return SimpleNamespace(path=Path("/models/x.gguf"), metadata=metadata)


def test_load_tokenizer_dispatch() -> None:
    assert isinstance(load_tokenizer(_fake_file(**_tiny_metadata())), Tokenizer)
    spm = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581hi"],
           "tokenizer.ggml.token_type": [2, 3, 3, 1]}  # fmt: skip
    assert load_tokenizer(_fake_file(**spm)).kind == "gguf-spm"
    with pytest.raises(UnsupportedTokenizer, match="'bert'"):
        load_tokenizer(_fake_file(**{"tokenizer.ggml.model": "bert"}))
    # A tokenizer.json, when given, wins over the GGUF vocabulary (tests/unit/test_tokenizer_hf_json.py).
    with pytest.raises(TokenizerFileError, match=r"no-such-dir/tokenizer\.json: tokenizer\.json not found"):
        load_tokenizer(_fake_file(**_tiny_metadata()), tokenizer_json="no-such-dir/tokenizer.json")

"""The hf-json tokenizer: a tokenizer.json run by `tokenizers`, checked against references
that share none of its code, on the same vocabularies:

- the GGUF tokenizers, whose ids equal llama.cpp's (tests/conformance), on Qwen2.5's and
  SmolLM2's real vocabularies and on the phi3 fixture's SentencePiece vocabulary, written as
  tokenizer.json files the way the published ones are laid out (fixtures/hf_tokenizer.py);
- llama.cpp's own ids for the prompt recorded in MODELS.md;
- tiktoken on an o200k-style vocabulary (gpt-oss's pre-tokenizer and harmony tokens).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tokenizers import Tokenizer as HFTokenizer

from fixtures.hf_tokenizer import (
    O200K_PATTERN,
    QWEN2_PATTERN,
    byte_level_json,
    sentencepiece_json,
    tiktoken_json,
    write,
)
from tests.conformance.corpus import CHAT_PROMPTS, CORPUS
from worker.gguf_file import GGUFFile
from worker.models.registry import pull
from worker.tokenizer import (
    GGUFBPETokenizer,
    GGUFSPMTokenizer,
    HFJSONTokenizer,
    StreamingDetokenizer,
    TokenizerFileError,
    UnsupportedTokenizer,
    find_tokenizer_json,
    load_tokenizer,
)
from worker.tokenizer.gguf_bpe import BYTE_TO_UNICODE, UNICODE_TO_BYTE

TEXTS = [*CORPUS, *CHAT_PROMPTS]
MULTILINGUAL = "Grüße, 你好，世界！🙂👍🏽 👨‍👩‍👧‍👦 e\u0301 café\t\n  x = [i**2 for i in range(10)]\r\n"


def _registry(name: str) -> GGUFFile:
    try:
        return GGUFFile(pull(name, quiet=True))
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"registry model {name} is not cached and cannot be pulled here: {e}")


# --- real vocabularies: tokenizer.json == the GGUF tokenizer (== llama.cpp) -----------------------


class Pair(SimpleNamespace):
    name: str
    gguf: GGUFBPETokenizer
    hf: HFJSONTokenizer
    path: Path
    normalize: Any  # what the tokenizer.json's normalizer does to a text


def _pair(name: str, style: str, folder: Path) -> Pair:
    f = _registry(name)
    m = f.metadata
    doc = byte_level_json(m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"], m["tokenizer.ggml.merges"], style)
    path = write(doc, folder / "tokenizer.json")
    gguf = load_tokenizer(f)
    assert isinstance(gguf, GGUFBPETokenizer)
    hf = load_tokenizer(f, tokenizer_json=path, n_vocab=len(m["tokenizer.ggml.tokens"]))
    assert isinstance(hf, HFJSONTokenizer)
    # Qwen2's tokenizer.json normalizes to NFC; llama.cpp does not normalize at all.
    normalize = (lambda t: unicodedata.normalize("NFC", t)) if style == "qwen2" else (lambda t: t)
    return Pair(name=name, gguf=gguf, hf=hf, path=path, normalize=normalize)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return _pair("qwen2.5-0.5b-instruct", "qwen2", tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return _pair("smollm2-135m-instruct", "smollm", tmp_path_factory.mktemp("smollm"))


@pytest.fixture(params=["qwen", "smollm"])
def pair(request: pytest.FixtureRequest) -> Pair:
    return request.getfixturevalue(request.param)


def _differing(pair: Pair, texts: list[str], parse_special: bool) -> list[str]:
    return [
        t for t in texts
        if pair.hf.encode(t, parse_special=parse_special)
        != pair.gguf.encode(pair.normalize(t), parse_special=parse_special)
    ]  # fmt: skip


@pytest.mark.realmodel
def test_known_prompt_ids_are_llama_cpps(qwen: Pair, smollm: Pair) -> None:
    # Recorded from llama.cpp (MODELS.md).
    assert qwen.hf.encode("Write a haiku about GPUs") == [7985, 264, 6386, 38242, 911, 70403]
    assert smollm.hf.encode("Write a haiku about GPUs") == [19161, 253, 421, 30614, 563, 45742]


@pytest.mark.realmodel
def test_plain_ids_equal_the_gguf_tokenizer_on_the_corpus(pair: Pair) -> None:
    bad = _differing(pair, TEXTS, parse_special=False)
    assert not bad, f"{pair.name}: {len(bad)} of {len(TEXTS)} differ, e.g. {bad[:3]}"


@pytest.mark.realmodel
def test_qwen_normalizes_to_nfc_as_its_tokenizer_json_says(qwen: Pair) -> None:
    # The corpus has decomposed text, where transformers (NFC) and llama.cpp (raw) part ways.
    decomposed = [t for t in TEXTS if unicodedata.normalize("NFC", t) != t]
    assert decomposed
    assert any(qwen.hf.encode(t) != qwen.gguf.encode(t) for t in decomposed)
    assert qwen.hf.encode("e\u0301") == qwen.gguf.encode("é")


@pytest.mark.realmodel
def test_special_parsing_equals_the_gguf_tokenizer(pair: Pair) -> None:
    bad = _differing(pair, TEXTS, parse_special=True)
    # Only where llama.cpp promotes an ordinary vocabulary token by its text: Qwen's "</s>" is a
    # plain token in its tokenizer.json (transformers splits it as text), a control token to llama.cpp.
    assert all("</s>" in t for t in bad), bad
    assert bool(bad) == (pair.name.startswith("qwen")), bad


@pytest.mark.realmodel
def test_attributes_equal_the_gguf_tokenizer(pair: Pair) -> None:
    g, h = pair.gguf, pair.hf
    assert (h.kind, h.vocab_size, h.bos_id, h.eos_id, h.add_bos) == ("hf-json", g.vocab_size, g.bos_id, g.eos_id,
                                                                     g.add_bos)  # fmt: skip
    assert h.eog_ids == g.eog_ids and h.token_id("<|im_end|>") in h.eog_ids
    assert [h.is_control(i) for i in range(h.vocab_size)] == [g.is_control(i) for i in range(g.vocab_size)]


@pytest.mark.realmodel
def test_token_bytes_equal_the_gguf_tokenizer_for_every_id(pair: Pair) -> None:
    n = pair.gguf.vocab_size
    bad = [i for i in range(n) if pair.hf.token_bytes(i) != pair.gguf.token_bytes(i)]
    assert not bad, [(i, pair.gguf.token_text(i)) for i in bad[:5]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pair.hf.token_bytes(n)


@pytest.mark.realmodel
def test_qwen_padding_ids_beyond_the_file_render_as_nothing(qwen: Pair) -> None:
    # Qwen's embedding has 151936 rows; its tokenizer.json stops at 151664.
    assert json.loads(qwen.path.read_text())["added_tokens"][-1]["id"] == 151664
    assert qwen.hf.vocab_size == 151936 and qwen.hf.token_bytes(151935) == b""


@pytest.mark.realmodel
def test_token_bytes_agree_with_the_tokenizers_decoder(pair: Pair) -> None:
    # The library's own ByteLevel decoder, token by token, as an independent check of the byte table.
    lib = HFTokenizer.from_file(str(pair.path))
    n = lib.get_vocab_size(with_added_tokens=True)
    theirs = lib.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
    bad = {i for i in range(n) if pair.hf.token_bytes(i).decode("utf-8", errors="replace") != theirs[i]}
    # llama.cpp's rendering differs only where it promotes a token by its text (Qwen's "</s>").
    assert bad == ({pair.hf.token_id("</s>")} if pair.name.startswith("qwen") else set())


@pytest.mark.realmodel
def test_round_trip_and_decode(pair: Pair) -> None:
    for text in TEXTS:
        ids = pair.hf.encode(text)
        assert pair.hf.decode(ids) == pair.gguf.decode(ids)
        # SmolLM2 has no token for a few control bytes (e.g. \x1d); llama.cpp drops them too.
        if all(BYTE_TO_UNICODE[b] in pair.hf._vocab.ids for b in text.encode()):
            assert pair.hf.decode(ids) == pair.normalize(text)


@pytest.mark.realmodel
def test_stream_matches_decode(pair: Pair) -> None:
    ids = pair.hf.encode(MULTILINGUAL)
    detok = StreamingDetokenizer(pair.hf)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert any(p == "" for p in pieces[:-1])  # some token ended inside a character and was held back
    assert "".join(pieces) == pair.hf.decode(ids) == pair.normalize(MULTILINGUAL)


@pytest.mark.realmodel
def test_chat_path_equals_the_gguf_tokenizer(pair: Pair) -> None:
    # The template is the GGUF's; the ids of the rendered turn must match too.
    assert pair.hf.has_chat_template and pair.hf.chat_template_size == pair.gguf.chat_template_size
    for prompt in ("Write a haiku about GPUs", "say <|im_end|> now"):
        assert pair.hf.encode_prompt(prompt, chat=True) == pair.gguf.encode_prompt(prompt, chat=True)
    im_end = pair.hf.token_id("<|im_end|>")
    assert im_end not in pair.hf.encode_prompt("say <|im_end|> now", chat=False)


# --- SentencePiece layout (Llama 2 / Phi-3) against gguf-spm --------------------------------------


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> tuple[GGUFSPMTokenizer, Path]:
    _registry("smollm2-135m-instruct")  # fixtures/vocab.py takes its pieces from SmolLM2
    from fixtures.vocab import PHI3_SPECIALS, spm_vocab

    v = spm_vocab()
    meta: dict[str, Any] = {
        "general.name": "phi3-tiny-made", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": v.tokens,
        "tokenizer.ggml.token_type": v.types, "tokenizer.ggml.scores": v.scores,
        "tokenizer.chat_template": v.chat_template,
        **{f"tokenizer.ggml.{k}_token_id": i for k, i in v.ids.items()},
        **{f"tokenizer.ggml.{k}": flag for k, flag in v.flags.items()},
    }  # fmt: skip
    # Phi-3's tokenizer.json: its added tokens strip the whitespace after them, except
    # <|endoftext|> (llama.cpp copies this by model name).
    rstrip = [t for t in PHI3_SPECIALS if t != "<|endoftext|>"] + ["</s>"]
    path = write(sentencepiece_json(v.tokens, v.types, v.scores, rstrip=rstrip),
                 tmp_path_factory.mktemp("spm") / "tokenizer.json")  # fmt: skip
    return GGUFSPMTokenizer(meta), path


@pytest.mark.realmodel
@pytest.mark.parametrize("parse_special", [False, True])
def test_sentencepiece_ids_equal_gguf_spm(spm: tuple[GGUFSPMTokenizer, Path], parse_special: bool) -> None:
    gguf, path = spm
    hf = HFJSONTokenizer(path)
    bad = [t for t in TEXTS if hf.encode(t, add_bos=False, parse_special=parse_special)
           != gguf.encode(t, add_bos=False, parse_special=parse_special)]  # fmt: skip
    assert not bad, bad[:3]
    assert [hf.token_bytes(i) for i in range(gguf.vocab_size)] == [gguf.token_bytes(i) for i in range(gguf.vocab_size)]
    for text in TEXTS:
        assert hf.decode(hf.encode(text)) == gguf.decode(gguf.encode(text))  # including the dropped prefix space
    assert hf.eog_ids == gguf.eog_ids and hf.bos_id == gguf.bos_id == 1


@pytest.mark.realmodel
@pytest.mark.parametrize("layout", ["legacy", "metaspace"])
def test_sentencepiece_decode_agrees_with_the_tokenizers_decoder(
    spm: tuple[GGUFSPMTokenizer, Path], layout: str, tmp_path: Path
) -> None:
    doc = json.loads(spm[1].read_text())
    if layout == "metaspace":  # newer Llama / Mistral files: Metaspace pre-tokenizer and decoder
        meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
        doc["normalizer"], doc["pre_tokenizer"] = None, meta
        doc["decoder"] = {"type": "Sequence", "decoders": [meta, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    path = write(doc, tmp_path / "tokenizer.json")
    hf, lib = HFJSONTokenizer(path), HFTokenizer.from_file(str(path))
    for text in TEXTS:
        ids = hf.encode(text, parse_special=True)
        theirs = lib.decode(ids, skip_special_tokens=True)
        if "<unk>" in text:  # llama.cpp (so gguf-spm and hf-json) shows <unk> as ▅; transformers skips it
            assert hf.decode(ids).replace("\u2585", "").strip() == theirs.strip(), text
        else:
            assert hf.decode(ids) == theirs, text


@pytest.mark.realmodel
def test_sentencepiece_bos_rule(spm: tuple[GGUFSPMTokenizer, Path]) -> None:
    _, path = spm
    hf = HFJSONTokenizer(path)
    assert hf.add_bos and hf.encode("hi")[0] == 1  # the post-processor's <s>, as transformers adds it
    # Phi-3's tokenizer_config.json turns it off, and names BOS/EOS (as AddedToken dicts).
    path.with_name("tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": False, "bos_token": {"content": "<s>"}, "eos_token": "<|endoftext|>"}))  # fmt: skip
    try:
        hf = HFJSONTokenizer(path)
    finally:
        path.with_name("tokenizer_config.json").unlink()
    assert not hf.add_bos and hf.encode("hi")[0] != 1
    assert hf.eos_id == hf.token_id("<|endoftext|>") and hf.eos_id in hf.eog_ids


# --- o200k (gpt-oss) against tiktoken --------------------------------------------------------------


@pytest.fixture(scope="module")
def o200k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[bytes, int], dict[str, int], Path]:
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (the o200k reference) is not installed")
    _registry("smollm2-135m-instruct")
    from fixtures.vocab import HARMONY_SPECIALS, bpe_vocab

    # tiktoken ranks: the 256 bytes, SmolLM2's tokens in merge order, then every 2-4 byte run of
    # the corpus, so that tokens cross the places where pre-tokenizers split differently
    # (case changes, digit runs, punctuation before '/'): a wrong split regex changes ids.
    ranks = {bytes([b]): b for b in range(256)}
    v = bpe_vocab(8192)
    for text, kind in zip(v.tokens, v.types, strict=True):
        if kind == 1:
            ranks.setdefault(bytes(UNICODE_TO_BYTE[c] for c in text), len(ranks))
    for text in CORPUS:
        data = text.encode()
        for n in (2, 3, 4):
            for i in range(len(data) - n + 1):
                # Not "</s>": llama.cpp's rules (which hf-json keeps, see
                # test_special_parsing_equals_the_gguf_tokenizer) would make it end generation.
                if data[i : i + n] != b"</s>":
                    ranks.setdefault(data[i : i + n], len(ranks))
    specials = {t: len(ranks) + i for i, t in enumerate(HARMONY_SPECIALS)}
    enc = tiktoken.Encoding("o200k-style", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    path = write(tiktoken_json(ranks, specials, O200K_PATTERN), tmp_path_factory.mktemp("o200k") / "tokenizer.json")
    return enc, ranks, specials, path


HARMONY_TURN = "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello<|return|>"


@pytest.mark.realmodel
def test_o200k_ids_equal_tiktoken(o200k: tuple[Any, dict[bytes, int], dict[str, int], Path], tmp_path: Path) -> None:
    enc, ranks, specials, path = o200k
    hf = HFJSONTokenizer(path)
    texts = [*TEXTS, HARMONY_TURN]
    assert [t for t in texts if hf.encode(t) != enc.encode(t, disallowed_special=())] == []
    assert [t for t in texts if hf.encode(t, parse_special=True) != enc.encode(t, allowed_special="all")] == []
    assert all(hf.token_bytes(i) == enc.decode_single_token_bytes(i) for i in ranks.values())
    # The check can fail: the same ranks under Qwen2's split regex give other ids.
    qwen_split = HFJSONTokenizer(write(tiktoken_json(ranks, specials, QWEN2_PATTERN), tmp_path / "tokenizer.json"))
    assert sum(qwen_split.encode(t) != enc.encode(t, disallowed_special=()) for t in texts) > 20


@pytest.mark.realmodel
def test_o200k_harmony_tokens(o200k: tuple[Any, dict[bytes, int], dict[str, int], Path]) -> None:
    _, _, specials, path = o200k
    hf = HFJSONTokenizer(path)
    # llama.cpp's harmony rules: <|return|> and <|call|> end generation, <|end|> only closes a
    # message; the structure markers are shown in the text, <|startoftext|> is not.
    assert hf.eog_ids == {specials["<|return|>"], specials["<|call|>"]}
    ids = hf.encode(HARMONY_TURN, parse_special=True)
    assert hf.decode(ids) == HARMONY_TURN.replace("<|return|>", "")
    assert hf.token_bytes(specials["<|startoftext|>"]) == b""


# --- made files: errors, lookup, fallbacks (no registry model needed) -----------------------------


def _tiny_json(**changes: Any) -> dict[str, Any]:
    """A byte-level tokenizer.json: the 256 byte characters, "he", "hell", "hello", three control tokens."""
    tokens = [BYTE_TO_UNICODE[b] for b in range(256)] + ["he", "ll", "hell", "hello"]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * 260 + [3, 3, 3]
    doc = byte_level_json(tokens, types, ["h e", "l l", "he ll", "hell o"], "qwen2")
    doc.update(changes)
    return doc


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write(_tiny_json(), tmp_path / "tokenizer.json")


def test_tiny_file_encodes_decodes_and_guards_control_tokens(tiny: Path) -> None:
    tok = HFJSONTokenizer(tiny)
    assert tok.encode("hello") == [259]
    assert tok.encode("<|im_end|>", parse_special=True) == [262]
    assert 262 not in tok.encode("<|im_end|>")  # plain prompts cannot inject it
    assert tok.decode([259, 262, *tok.encode(" hé")]) == "hello hé"
    assert tok.eog_ids == {260, 262} and (tok.bos_id, tok.eos_id, tok.add_bos) == (None, None, False)
    assert not tok.has_chat_template  # ChatML stands in
    assert tok.encode_prompt("hi", chat=True)[0] == 261


def test_added_tokens_outside_the_model_vocabulary_keep_their_ids(tmp_path: Path) -> None:
    # Qwen's own layout: the control tokens appear only in added_tokens, right after the vocabulary.
    doc = _tiny_json()
    doc["model"]["vocab"] = {t: i for t, i in doc["model"]["vocab"].items() if i < 260}
    tok = HFJSONTokenizer(write(doc, tmp_path / "tokenizer.json"))
    assert tok.encode("<|im_end|>hello", parse_special=True) == [262, 259]
    assert tok.is_control(262) and tok.token_text(262) == "<|im_end|>"


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(TokenizerFileError, match=f"^{re.escape(str(missing))}: tokenizer.json not found$"):
        HFJSONTokenizer(missing)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"model": {"type": "BPE", ', "malformed tokenizer.json: .* at line 1 column"),
        ('{"version": "1.0"}', "malformed tokenizer.json: no 'model' object"),
        ("[1, 2]", "malformed tokenizer.json: no 'model' object"),
        ('{"model": {"type": "NoSuchModel"}}', "malformed tokenizer.json: "),
        (b"\xff\xfe{}", "malformed tokenizer.json: not UTF-8"),
    ],
    ids=["truncated", "no-model", "not-an-object", "library-rejects", "not-utf8"],
)
def test_malformed_file_names_it(tmp_path: Path, content: str | bytes, why: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TokenizerFileError, match=f"^{re.escape(str(path))}: {why}"):
        HFJSONTokenizer(path)


def test_merges_of_unknown_tokens_are_rejected_naming_the_file(tmp_path: Path) -> None:
    doc = _tiny_json()
    doc["model"]["merges"].append(["he", "zz-not-a-token"])
    path = write(doc, tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerFileError, match=f"^{re.escape(str(path))}: malformed tokenizer.json: "):
        HFJSONTokenizer(path)


def test_added_token_ids_that_the_library_renumbers_are_refused(tmp_path: Path) -> None:
    doc = _tiny_json()
    # The added tokens only in added_tokens (as in Qwen's file), after a gap where "hello" was.
    doc["model"]["vocab"] = {t: i for t, i in doc["model"]["vocab"].items() if i < 259}
    doc["model"]["merges"].pop()
    path = write(doc, tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerFileError, match=r"added token '<\|endoftext\|>' is declared as id 260 but .* 259"):
        HFJSONTokenizer(path)


def test_unsupported_decoder_names_the_file(tmp_path: Path) -> None:
    path = write(_tiny_json(decoder={"type": "WordPiece", "prefix": "##", "cleanup": True}), tmp_path / "t.json")
    with pytest.raises(UnsupportedTokenizer, match=f"^{re.escape(str(path))}: decoder WordPiece is not supported"):
        HFJSONTokenizer(path)


def test_ids_beyond_the_model_are_refused(tiny: Path) -> None:
    want = r"token id 262 \('<\|im_end\|>'\) is outside the model's vocabulary of 100 tokens"
    with pytest.raises(TokenizerFileError, match=want):
        HFJSONTokenizer(tiny, n_vocab=100)


def test_malformed_tokenizer_config_names_it(tiny: Path) -> None:
    config = tiny.with_name("tokenizer_config.json")
    config.write_text("{not json")
    with pytest.raises(TokenizerFileError, match=f"^{re.escape(str(config))}: malformed tokenizer_config.json"):
        HFJSONTokenizer(tiny)
    config.write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(TokenizerFileError, match="bos_token '<s>' is not in"):
        HFJSONTokenizer(tiny)


def test_special_ids_from_gguf_metadata_are_matched_by_text(tiny: Path) -> None:
    # A GGUF that numbers the same tokens differently: its ids are translated through the texts.
    gguf_tokens = ["<|im_end|>", "<|endoftext|>", "x"]
    meta = {"tokenizer.ggml.tokens": gguf_tokens, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0}
    tok = HFJSONTokenizer(tiny, meta)
    assert (tok.bos_id, tok.eos_id) == (260, 262)
    tok = HFJSONTokenizer(tiny, {"tokenizer.ggml.eos_token_id": 261})  # no GGUF vocabulary: taken as is
    assert tok.eos_id == 261 and 261 in tok.eog_ids  # a control token, so it ends generation
    assert 5 in HFJSONTokenizer(tiny, eos_override=5).eog_ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        HFJSONTokenizer(tiny, eos_override=10_000)


def test_vocabulary_mismatch_with_the_gguf_warns(tiny: Path, caplog: pytest.LogCaptureFixture) -> None:
    gguf_tokens = [BYTE_TO_UNICODE[b] for b in range(256)] + ["he", "ll", "HELL", "hello"]
    with caplog.at_level(logging.WARNING, logger="worker.tokenizer"):
        HFJSONTokenizer(tiny, {"tokenizer.ggml.tokens": gguf_tokens})
    assert any("differ on 1 of 263 token texts" in r.getMessage() and "id 258" in r.getMessage()
               for r in caplog.records)  # fmt: skip


@pytest.mark.parametrize("where", ["gguf", "config-string", "config-list", "jinja", "none"])
def test_chat_template_sources_in_order(tiny: Path, where: str) -> None:
    templates = {w: "{% for m in messages %}" + w + ":{{ m['content'] }}{% endfor %}" for w in ("gguf", "config",
                                                                                                  "jinja")}
    meta = {"tokenizer.chat_template": templates["gguf"]} if where == "gguf" else {}
    config: dict[str, Any] = {}
    if where in ("gguf", "config-string"):
        config["chat_template"] = templates["config"]
    if where == "config-list":
        config["chat_template"] = [{"name": "tool_use", "template": "x"},
                                   {"name": "default", "template": templates["config"]}]  # fmt: skip
    tiny.with_name("tokenizer_config.json").write_text(json.dumps(config))
    if where != "none":
        tiny.with_name("chat_template.jinja").write_text(templates["jinja"])
    tok = HFJSONTokenizer(tiny, meta)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    want = {"gguf": "gguf:hi", "config-string": "config:hi", "config-list": "config:hi", "jinja": "jinja:hi",
            "none": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"}  # fmt: skip
    assert rendered == want[where]
    assert tok.has_chat_template == (where != "none")


def test_find_tokenizer_json(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    assert find_tokenizer_json(model, None) is None
    beside = write(_tiny_json(), tmp_path / "tokenizer.json")
    assert find_tokenizer_json(model, None) == beside
    assert find_tokenizer_json(model, tmp_path / "other.json") == tmp_path / "other.json"  # given wins
    assert find_tokenizer_json(model, tmp_path) == beside  # a folder holding one

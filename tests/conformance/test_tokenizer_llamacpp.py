"""Our tokenizer against llama.cpp's on the same GGUF files: ids, pieces, text, EOG ids.

Every corpus string must give the same ids as llama.cpp; there are no listed exceptions.

Decoding is the concatenation of llama.cpp's token_to_piece (the text llama.cpp streams). Its
llama_detokenize also removes spaces before punctuation for some pre-tokenizers (gpt-2,
llama-bpe, default, starcoder: "a . b" -> "a. b"); we do not, so decode is compared with
llama_detokenize on the real models (qwen2, smollm: no clean-up) and piece by piece elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from corpus import CHAT_PROMPTS, CORPUS

from worker.gguf_file import GGUFFile
from worker.tokenizer import Tokenizer, load_tokenizer
from worker.tokenizer.gguf_bpe import GGUFBPETokenizer

if TYPE_CHECKING:  # only for annotations: importing conftest by name is fragile
    from conftest import LlamaVocab, MadeVocab

pytestmark = [pytest.mark.conformance, pytest.mark.realmodel]

ModelPair = tuple[str, Tokenizer, "LlamaVocab"]


def _report(what: str, bad: Sequence[tuple[str, object, object]], total: int) -> str:
    lines = [f"{what}: {len(bad)} of {total} strings differ from llama.cpp"]
    for text, ours, theirs in bad[:10]:
        lines.append(f"  {text!r}\n    ours:      {ours}\n    llama.cpp: {theirs}")
    return "\n".join(lines)


def _compare_corpus(
    name: str, ours: Callable[[str], object], theirs: Callable[[str], object], texts: Sequence[str] = CORPUS
) -> None:
    bad = [(t, a, b) for t in texts if (a := ours(t)) != (b := theirs(t))]
    assert not bad, _report(name, bad, len(texts))


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 200
    assert len(set(CORPUS)) == len(CORPUS)


def test_bos_rule_matches(model_pair: ModelPair) -> None:
    _, ours, ref = model_pair
    assert ours.add_bos == ref.add_bos
    assert ours.bos_id == ref.lib.llama_vocab_bos(ref.vocab)


def test_plain_text_ids_match(model_pair: ModelPair) -> None:
    name, ours, ref = model_pair
    _compare_corpus(
        f"{name} plain text",
        lambda t: ours.encode(t),
        lambda t: ref.tokenize(t, add_special=True, parse_special=False),
    )


def test_explicit_bos_matches(model_pair: ModelPair) -> None:
    _, ours, ref = model_pair
    bos = ref.lib.llama_vocab_bos(ref.vocab)
    for text in CORPUS[:20]:
        plain = ref.tokenize(text, add_special=False, parse_special=False)
        assert ours.encode(text, add_bos=False) == plain
        assert ours.encode(text, add_bos=True) == [bos, *plain]


def test_special_parsing_ids_match(model_pair: ModelPair) -> None:
    name, ours, ref = model_pair
    _compare_corpus(
        f"{name} parse_special",
        lambda t: ours.encode(t, parse_special=True),
        lambda t: ref.tokenize(t, add_special=True, parse_special=True),
    )


def test_chat_prompts_match(model_pair: ModelPair) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, ours, ref = model_pair
    assert isinstance(ours, GGUFBPETokenizer)
    template = ref.llm.metadata["tokenizer.chat_template"]
    bos = ours.token_text(ours.bos_id) if ours.bos_id is not None else ""
    eos = ours.token_text(ours.eos_id) if ours.eos_id is not None else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    for prompt in CHAT_PROMPTS:
        rendered = formatter(messages=[{"role": "user", "content": prompt}]).prompt
        assert ours.apply_chat_template([{"role": "user", "content": prompt}]) == rendered
        add_special = not (bos and rendered.startswith(bos))
        want = ref.tokenize(rendered, add_special=add_special, parse_special=True)
        assert ours.encode_prompt(prompt, chat=True) == want, prompt


def test_decode_matches_llama_detokenize(model_pair: ModelPair) -> None:
    name, ours, ref = model_pair
    for special in (False, True):
        bad = []
        for text in CORPUS:
            ids = ref.tokenize(text, add_special=True, parse_special=special)
            want = ref.detokenize(ids)
            got = b"".join(ours.token_bytes(i) for i in ids)
            if got != want or ours.decode(ids) != want.decode("utf-8", errors="replace"):
                bad.append((text, got, want))
        assert not bad, _report(f"{name} decode (ids parsed with special={special})", bad, len(CORPUS))


def test_every_token_piece_matches(model_pair: ModelPair) -> None:
    name, ours, ref = model_pair
    assert ours.vocab_size == ref.n_tokens
    bad = [i for i in range(ours.vocab_size) if ours.token_bytes(i) != ref.piece(i)]
    assert not bad, f"{name}: {len(bad)} token pieces differ, e.g. " + ", ".join(
        f"{i}: {ours.token_bytes(i)!r} vs {ref.piece(i)!r}" for i in bad[:5]
    )


def test_eog_and_control_tokens_match(model_pair: ModelPair) -> None:
    _, ours, ref = model_pair
    assert isinstance(ours, GGUFBPETokenizer)
    assert ours.eog_ids == {i for i in range(ref.n_tokens) if ref.is_eog(i)}
    ours_control = {i for i in range(ours.vocab_size) if ours.is_control(i)}
    assert ours_control == {i for i in range(ref.n_tokens) if ref.is_control(i)}


# --- other pre-tokenizers, on made vocabularies -------------------------------------------------

MADE_PRES = (
    "gpt-2", "llama-bpe", "llama3", "gpt-4o", "llama4", "default", "qwen2", "deepseek-r1-qwen",
    "smollm", "starcoder", "refact",
)  # fmt: skip
# One name per distinct regex list, to show the made vocabularies can tell them apart.
REGEX_FAMILIES = ("gpt-2", "llama-bpe", "gpt-4o", "default", "qwen2", "smollm")


MadePair = Callable[..., tuple[GGUFBPETokenizer, "LlamaVocab"]]


@pytest.fixture(scope="module")
def made_pair(made_vocab_factory: MadeVocab, open_llama_vocab: Callable[[Path], LlamaVocab]) -> MadePair:
    cache: dict[Path, tuple[GGUFBPETokenizer, LlamaVocab]] = {}

    def get(pre: str, extra_tokens: tuple[tuple[str, int], ...] = ()) -> tuple[GGUFBPETokenizer, LlamaVocab]:
        path = made_vocab_factory(pre, extra_tokens)
        if path not in cache:
            tok = load_tokenizer(GGUFFile(path))
            assert isinstance(tok, GGUFBPETokenizer)
            cache[path] = tok, open_llama_vocab(path)
        return cache[path]

    return get


@pytest.mark.parametrize("pre", MADE_PRES)
def test_pre_tokenizer_ids_match(pre: str, made_pair: MadePair) -> None:
    ours, ref = made_pair(pre)
    assert ours.add_bos == ref.add_bos
    for special in (False, True):
        _compare_corpus(
            f"pre={pre} special={special}",
            lambda t, s=special: ours.encode(t, parse_special=s),
            lambda t, s=special: ref.tokenize(t, add_special=True, parse_special=s),
        )


def test_made_vocabularies_tell_the_regexes_apart(
    made_pair: MadePair,
) -> None:
    # Guards the test above: with a vocabulary blind to the split, any regex would pass.
    ids = {pre: [made_pair(pre)[0].encode(t) for t in CORPUS] for pre in REGEX_FAMILIES}
    for i, a in enumerate(REGEX_FAMILIES):
        for b in REGEX_FAMILIES[i + 1 :]:
            assert ids[a] != ids[b], f"the corpus cannot distinguish pre={a} from pre={b}"


# --- tokens llama.cpp recognises by their text, on made vocabularies -----------------------------
# Appended to SmolLM2's vocabulary (which already has <|endoftext|>, <|im_end|> and <reponame>).
# Type 1 = normal, 2 = unknown, 3 = control, 4 = user-defined, 5 = unused. One FIM marker per
# group: with several, llama.cpp's choice depends on hash-map order.
N, UNK, CTRL, USER, UNUSED = 1, 2, 3, 4, 5
SPECIAL_VOCABS: dict[str, tuple[tuple[str, int], ...]] = {
    "harmony": (
        ("<|return|>", N), ("<|call|>", N), ("<|end|>", CTRL), ("<|channel|>", CTRL), ("<|message|>", CTRL),
        ("<|start|>", CTRL), ("<|constrain|>", CTRL), ("<|eot_id|>", N), ("<|eom_id|>", N),
        ("<end_of_turn>", N), ("</s>", N), ("<EOT>", N), ("_<EOT>", N), ("[EOT]", N), ("<|end_of_text|>", N),
        ("<end_of_utterance>", N), ("<｜end▁of▁sentence｜>", N), ("<eos>", N), ("<|flush|>", N),
        ("<fim_prefix>", N), ("<SUF>", N), ("<|code_middle|>", N), ("<PAD>", N), ("<|file_sep|>", N),
        ("<|eos|>", N), ("<end>", N), ("<|end_of_turn|>", N), ("<unk>", UNK), ("[PAD9]", UNUSED),
        ("<my_tool>", USER), ("<|ünïcode|>", USER), ("<ctrl_x>", CTRL),
    ),
    "end-is-eog": (("<|end|>", N), ("<|return|>", N), ("<fim-pad>", N), ("<|fim_prefix|>", CTRL)),
}  # fmt: skip


@pytest.mark.parametrize("name", SPECIAL_VOCABS)
def test_special_token_rules_match(name: str, made_pair: MadePair) -> None:
    extra = SPECIAL_VOCABS[name]
    ours, ref = made_pair("smollm", extra)
    assert ours.eog_ids == {i for i in range(ref.n_tokens) if ref.is_eog(i)}
    ours_control = {i for i in range(ours.vocab_size) if ours.is_control(i)}
    assert ours_control == {i for i in range(ref.n_tokens) if ref.is_control(i)}
    first = ours.vocab_size - len(extra)
    assert [ours.token_bytes(i) for i in range(first, ours.vocab_size)] == [
        ref.piece(i) for i in range(first, ref.n_tokens)
    ]
    texts = [f"a{t}b {t} {t}{t}\n{t[:-1]}" for t, _ in extra] + [" ".join(t for t, _ in extra)]
    for special in (False, True):
        _compare_corpus(
            f"{name} special={special}",
            lambda t, s=special: ours.encode(t, parse_special=s),
            lambda t, s=special: ref.tokenize(t, add_special=True, parse_special=s),
            texts,
        )
        for text in texts:
            ids = ref.tokenize(text, add_special=True, parse_special=special)
            assert ours.decode(ids) == ref.detokenize(ids).decode("utf-8", errors="replace")

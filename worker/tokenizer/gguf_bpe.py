"""Byte-level BPE vocabularies from GGUF metadata (`tokenizer.ggml.model = gpt2`).

The vocabulary, merges and pre-tokenizer regexes are those llama.cpp uses for the same file
(llama-vocab.cpp), so token ids match llama.cpp's; the BPE itself runs in Hugging Face
`tokenizers`. Token attributes follow llama.cpp too, including the tokens it promotes to
control or end-of-generation by their text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from worker.tokenizer.vocab import (
    CONTROL,
    END_NOT_EOG_IF,
    FIM_EOG,
    FIM_TEXTS,
    HARMONY_VISIBLE,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    HFVocabTokenizer,
    Vocab,
    check_eos_override,
    meta_id,
)

log = logging.getLogger("worker.tokenizer")


# --- pre-tokenizer regexes (llama-vocab.cpp, per pre-tokenizer type) ---------------------------
# Applied in order, each splitting the pieces the previous one produced, like llama.cpp's
# unicode_regex_split. Contractions are spelled out case by case instead of (?i:...) as in
# llama.cpp's adapted versions.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Qwen2: the llama3 regex with single digits.
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# o200k: llama.cpp's adapted form, where "upper" means a letter that is not a-z and "lower" a
# letter that is not A-Z (so every non-ASCII letter counts as both). Kept because ids must match
# llama.cpp's, not tiktoken's.
_UPPERISH = r"(?:(?=\p{L})[^a-z])"
_LOWERISH = r"(?:(?=\p{L})[^A-Z])"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}*{_LOWERISH}+{_CONTRACTIONS}?"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPERISH}+{_LOWERISH}*{_CONTRACTIONS}?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple[str, ...]
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token key
    ignore_merges: bool = False  # a whole word found in the vocabulary is taken as one token


_GPT2_PRE = PreTokenizer((_GPT2,))
_LLAMA3_PRE = PreTokenizer((_LLAMA3,), add_bos=True, ignore_merges=True)
_STARCODER_PRE = PreTokenizer((r"\p{N}", _GPT2))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    # llama.cpp's fallback for "default" or a missing name: punctuation runs, then GPT-2,
    # then digit runs cut into threes.
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    "gpt-2": _GPT2_PRE,
    "gpt2": _GPT2_PRE,  # not a name llama.cpp accepts, but an obvious spelling of the one above
    "llama-bpe": _LLAMA3_PRE,
    "llama3": _LLAMA3_PRE,
    "llama-v3": _LLAMA3_PRE,
    "qwen2": PreTokenizer((_QWEN2,)),
    "deepseek-r1-qwen": PreTokenizer((_QWEN2,)),
    "smollm": _STARCODER_PRE,  # every digit alone, then GPT-2's regex
    "starcoder": _STARCODER_PRE,
    "refact": _STARCODER_PRE,
    "gpt-4o": PreTokenizer((_GPT4O,)),
    "llama4": PreTokenizer((_GPT4O,)),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}
_TO_LATIN1 = {ord(c): b for b, c in BYTE_TO_UNICODE.items()}


def _byte_decode(text: str) -> bytes:
    try:
        return text.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        # A character outside the table (malformed vocabulary) stands for its own UTF-8 bytes.
        return b"".join(bytes((UNICODE_TO_BYTE[c],)) if c in UNICODE_TO_BYTE else c.encode("utf-8") for c in text)


def _piece(text: str, kind: int) -> bytes:
    # llama.cpp's token_to_piece(special=False) for BPE: normal tokens through the byte table,
    # user-defined tokens as written, everything else (control, unknown, unused) as nothing.
    if kind == NORMAL:
        return _byte_decode(text)
    if kind == USER_DEFINED:
        return text.encode("utf-8")
    return b""


def find_eog(vocab: Vocab, metadata: Mapping[str, Any], eos_override: int | None) -> frozenset[int]:
    """End-of-generation ids, llama.cpp's way for BPE: by text, FIM markers, metadata ids.

    Also settles token types as llama.cpp does (FIM markers control, harmony markers visible).
    """
    ids, types, n = vocab.ids, vocab.types, vocab.n
    eog = vocab.eog_by_text()
    for role, texts in FIM_TEXTS.items():
        found = meta_id(metadata, f"tokenizer.ggml.fim_{role}_token_id", n)
        if found is None:
            found = next((ids[t] for t in texts if t in ids), None)
        if found is not None:
            types[found] = CONTROL
            if role in FIM_EOG:
                eog.add(found)
    eog |= vocab.eog_from_metadata(metadata)
    for text in HARMONY_VISIBLE:
        if text in ids:
            types[ids[text]] = USER_DEFINED
    if "<|end|>" in ids and any(a in ids and b in ids for a, b in END_NOT_EOG_IF):
        end = ids["<|end|>"]
        eog.discard(end)
        types[end] = USER_DEFINED

    if vocab.eos_id is not None:
        if types[vocab.eos_id] == CONTROL:
            eog.add(vocab.eos_id)
        else:
            log.warning(
                "metadata eos_token_id %d (%r, token type %d) is not a control token, so a model "
                "could emit it as text; ignoring it (end of generation uses %s; --eos-token-id "
                "overrides)",
                vocab.eos_id, vocab.texts[vocab.eos_id], types[vocab.eos_id], sorted(eog),
            )  # fmt: skip
    check_eos_override(eos_override, n)
    if eos_override is not None:
        eog.add(eos_override)
    return frozenset(eog)


class GGUFBPETokenizer(HFVocabTokenizer):
    kind = "gguf-bpe"

    def __init__(self, metadata: Mapping[str, Any], *, eos_override: int | None = None) -> None:
        vocab = Vocab.from_gguf(metadata)
        self._vocab = vocab
        self.vocab_size = vocab.n

        pre_name = metadata.get("tokenizer.ggml.pre") or "default"
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            log.warning("unknown pre-tokenizer %r; splitting words with GPT-2's regex", pre_name)
            pre = _GPT2_PRE
        self.pre_tokenizer = pre_name

        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.add_bos = vocab.add_bos if vocab.add_bos is not None else pre.add_bos
        if self.add_bos and self.bos_id is None:
            raise ValueError("the vocabulary asks for a BOS token but tokenizer.ggml.bos_token_id is missing")

        self.eog_ids = find_eog(vocab, metadata, eos_override)
        self._bytes = [_piece(t, k) for t, k in zip(vocab.texts, vocab.types, strict=True)]

        merges = self._merge_pairs(metadata.get("tokenizer.ggml.merges") or [])
        self._set_pipelines(self._build_hf(pre, merges), self._build_hf(pre, merges))

        super().__init__(vocab.chat_template(metadata.get("tokenizer.chat_template")))

    # --- the Hugging Face pipeline ---------------------------------------------------------------

    def _merge_pairs(self, merges: Sequence[str]) -> list[tuple[str, str]]:
        ids = self._vocab.ids
        pairs: list[tuple[str, str]] = []
        dropped = 0
        for m in merges:
            cut = m.find(" ", 1)  # as llama.cpp: a token may itself start with a space
            if cut < 0:
                dropped += 1
                continue
            a, b = m[:cut], m[cut + 1 :]
            # `tokenizers` rejects merges whose parts or result are not tokens; such a merge could
            # never yield a token in llama.cpp either.
            if a in ids and b in ids and a + b in ids:
                pairs.append((a, b))
            else:
                dropped += 1
        if dropped:
            log.warning("ignored %d BPE merges that do not produce vocabulary tokens", dropped)
        return pairs

    def _build_hf(self, pre: PreTokenizer, merges: list[tuple[str, str]]) -> HFTokenizer:
        v = self._vocab
        tok = HFTokenizer(models.BPE(vocab=dict(v.ids), merges=merges, ignore_merges=pre.ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = decoders.ByteLevel()
        # llama.cpp matches control and unknown tokens only when parsing specials, but
        # user-defined tokens always, before the regex split.
        special, user = [], []
        for i, kind in enumerate(v.types):
            if kind not in (CONTROL, UNKNOWN, USER_DEFINED):
                continue
            text = v.texts[i]
            if v.ids[text] != i:  # shadowed by a later duplicate
                continue
            if kind == USER_DEFINED:
                user.append(AddedToken(text, special=False, normalized=False))
            else:
                special.append(AddedToken(text, special=True, normalized=False))
        tok.add_special_tokens(special)
        tok.add_tokens(user)
        return tok

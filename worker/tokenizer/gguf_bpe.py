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

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from worker.tokenizer.base import Tokenizer
from worker.tokenizer.chat import ChatTemplate

log = logging.getLogger("worker.tokenizer")


# `tokenizer.ggml.token_type` values (plain ints: they are compared in loops over the vocabulary).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


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


# --- tokens llama.cpp recognises by their text -------------------------------------------------
# End of turn / text: always end generation, and are treated as control tokens even when the
# file marks them normal (Qwen2.5's vocabulary has an ordinary "</s>" that llama.cpp stops on).
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]",
        "<|end_of_text|>", "<end_of_utterance>", "<｜end▁of▁sentence｜>", "<eos>",
    }
)  # fmt: skip
# Fill-in-the-middle markers: one per group becomes control (here the first in list order;
# llama.cpp takes whichever its hash map yields first, so only one marker per group is
# unambiguous). Pad, repo and file separator also end generation: a code model emitting them
# has left the file it was writing.
FIM_TEXTS: dict[str, tuple[str, ...]] = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
            "<｜fim▁begin｜>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
            "<｜fim▁hole｜>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "▁<MID>", "<|code_middle|>",
            "<｜fim▁end｜>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}  # fmt: skip
FIM_EOG = ("pad", "rep", "sep")
# gpt-oss (harmony) structure tokens are rendered in output, so llama.cpp makes them
# user-defined; and "<|end|>" only closes a message there, so it is not end of generation.
HARMONY_VISIBLE = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
END_NOT_EOG_IF = (("<|return|>", "<|call|>"), ("<|calls|>", "<|flush|>"))


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


def _meta_id(metadata: Mapping[str, Any], key: str, n_vocab: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    value = int(value)
    # Converters write -1 or an out-of-range id to mean "none".
    return value if 0 <= value < n_vocab else None


class GGUFBPETokenizer(Tokenizer):
    kind = "gguf-bpe"

    def __init__(self, metadata: Mapping[str, Any], *, eos_override: int | None = None) -> None:
        tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
        n = len(tokens)
        if n == 0:
            raise ValueError("tokenizer.ggml.tokens is empty")
        raw_types = metadata.get("tokenizer.ggml.token_type")
        types = np.asarray(raw_types, dtype=np.int32) if raw_types is not None else np.full(n, NORMAL, dtype=np.int32)
        if len(types) != n:
            raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        # llama.cpp renames empty tokens so that they cannot match anything.
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.vocab_size = n
        self._texts = tokens
        self._types = types.copy()
        # Later duplicates win, as in llama.cpp's token_to_id map.
        self._ids = {t: i for i, t in enumerate(tokens)}

        pre_name = metadata.get("tokenizer.ggml.pre") or "default"
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            log.warning("unknown pre-tokenizer %r; splitting words with GPT-2's regex", pre_name)
            pre = _GPT2_PRE
        self.pre_tokenizer = pre_name

        self.bos_id = _meta_id(metadata, "tokenizer.ggml.bos_token_id", n)
        self.eos_id = _meta_id(metadata, "tokenizer.ggml.eos_token_id", n)
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        self.add_bos = bool(add_bos) if add_bos is not None else pre.add_bos
        if self.add_bos and self.bos_id is None:
            raise ValueError("the vocabulary asks for a BOS token but tokenizer.ggml.bos_token_id is missing")

        self.eog_ids = self._find_eog(metadata, eos_override)
        self._bytes = [_piece(t, k) for t, k in zip(tokens, self._types.tolist(), strict=True)]

        merges = self._merge_pairs(metadata.get("tokenizer.ggml.merges") or [])
        # Two instances: added-token matching is a per-instance switch in `tokenizers`, and
        # flipping it per call would race between threads.
        self._hf_plain = self._build_hf(pre, merges)
        self._hf_plain.encode_special_tokens = True  # control tokens stay plain text
        self._hf_special = self._build_hf(pre, merges)

        super().__init__(
            ChatTemplate(
                metadata.get("tokenizer.chat_template"),
                bos_token=tokens[self.bos_id] if self.bos_id is not None else "",
                eos_token=tokens[self.eos_id] if self.eos_id is not None else "",
            )
        )

    # --- attributes ----------------------------------------------------------------------------

    def _find_eog(self, metadata: Mapping[str, Any], eos_override: int | None) -> frozenset[int]:
        """End-of-generation ids, llama.cpp's way: by text, FIM markers, and metadata ids."""
        ids, types, n = self._ids, self._types, self.vocab_size
        eog: set[int] = set()

        for text in EOG_TEXTS:
            if text in ids:
                eog.add(ids[text])
                types[ids[text]] = CONTROL
        for role, texts in FIM_TEXTS.items():
            found = _meta_id(metadata, f"tokenizer.ggml.fim_{role}_token_id", n)
            if found is None:
                found = next((ids[t] for t in texts if t in ids), None)
            if found is not None:
                types[found] = CONTROL
                if role in FIM_EOG:
                    eog.add(found)
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            found = _meta_id(metadata, key, n)
            if found is not None:
                eog.add(found)
        for text in HARMONY_VISIBLE:
            if text in ids:
                types[ids[text]] = USER_DEFINED
        if "<|end|>" in ids and any(a in ids and b in ids for a, b in END_NOT_EOG_IF):
            end = ids["<|end|>"]
            eog.discard(end)
            types[end] = USER_DEFINED

        if self.eos_id is not None:
            if types[self.eos_id] == CONTROL:
                eog.add(self.eos_id)
            else:
                log.warning(
                    "metadata eos_token_id %d (%r, token type %d) is not a control token, so a model "
                    "could emit it as text; ignoring it (end of generation uses %s; --eos-token-id "
                    "overrides)",
                    self.eos_id, self._texts[self.eos_id], int(types[self.eos_id]), sorted(eog),
                )  # fmt: skip
        if eos_override is not None:
            if not 0 <= eos_override < n:
                raise ValueError(f"eos_token_id override {eos_override} is outside the vocabulary (0..{n - 1})")
            eog.add(eos_override)
        return frozenset(eog)

    # --- the Hugging Face pipeline ---------------------------------------------------------------

    def _merge_pairs(self, merges: Sequence[str]) -> list[tuple[str, str]]:
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
            if a in self._ids and b in self._ids and a + b in self._ids:
                pairs.append((a, b))
            else:
                dropped += 1
        if dropped:
            log.warning("ignored %d BPE merges that do not produce vocabulary tokens", dropped)
        return pairs

    def _build_hf(self, pre: PreTokenizer, merges: list[tuple[str, str]]) -> HFTokenizer:
        tok = HFTokenizer(models.BPE(vocab=dict(self._ids), merges=merges, ignore_merges=pre.ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = decoders.ByteLevel()
        # llama.cpp matches control and unknown tokens only when parsing specials, but
        # user-defined tokens always, before the regex split.
        special, user = [], []
        for i in np.flatnonzero(np.isin(self._types, (CONTROL, UNKNOWN, USER_DEFINED))).tolist():
            text = self._texts[i]
            if self._ids[text] != i:  # shadowed by a later duplicate
                continue
            if self._types[i] == USER_DEFINED:
                user.append(AddedToken(text, special=False, normalized=False))
            else:
                special.append(AddedToken(text, special=True, normalized=False))
        tok.add_special_tokens(special)
        tok.add_tokens(user)
        return tok

    # --- Tokenizer -------------------------------------------------------------------------------

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        hf = self._hf_special if parse_special else self._hf_plain
        ids = hf.encode(text, add_special_tokens=False).ids
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._bytes[token_id]

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (byte-level characters, control names)."""
        return self._texts[token_id]

    def token_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def is_control(self, token_id: int) -> bool:
        return bool(self._types[token_id] == CONTROL)

"""The vocabulary table every tokenizer kind fills in: token texts, types, ids, BOS/EOS.

The GGUF tokenizers read it from `tokenizer.ggml.*` metadata the way llama.cpp's
llama_vocab::load does for every vocabulary type; hf-json builds the same table from a
tokenizer.json. Token types and the special-token texts below are llama.cpp's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from worker.tokenizer.base import Tokenizer
from worker.tokenizer.chat import ChatTemplate

# `tokenizer.ggml.token_type` values (plain ints: they are compared in loops over the vocabulary).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

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


def meta_id(metadata: Mapping[str, Any], key: str, n_vocab: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    value = int(value)
    # Converters write -1 or an out-of-range id to mean "none".
    return value if 0 <= value < n_vocab else None


def check_eos_override(eos_override: int | None, n_vocab: int) -> None:
    if eos_override is not None and not 0 <= eos_override < n_vocab:
        raise ValueError(f"eos_token_id override {eos_override} is outside the vocabulary (0..{n_vocab - 1})")


@dataclass
class Vocab:
    """Per-id token texts and types (mutable: llama.cpp promotes some tokens by their text)."""

    texts: list[str]
    types: list[int]
    ids: dict[str, int]  # text -> id; later duplicates win, as in llama.cpp's token_to_id map
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool | None = None  # the file's own rule; None when it states none

    @property
    def n(self) -> int:
        return len(self.texts)

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Vocab:
        """`tokenizer.ggml.tokens`, `token_type`, the BOS/EOS ids and `add_bos_token`."""
        tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
        n = len(tokens)
        if n == 0:
            raise ValueError("tokenizer.ggml.tokens is empty")
        raw_types = metadata.get("tokenizer.ggml.token_type")
        types = np.asarray(raw_types, dtype=np.int32) if raw_types is not None else np.full(n, NORMAL, np.int32)
        if len(types) != n:
            raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        # llama.cpp renames empty tokens so that they cannot match anything.
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        return cls(
            texts=tokens,
            types=types.tolist(),
            ids={t: i for i, t in enumerate(tokens)},
            bos_id=meta_id(metadata, "tokenizer.ggml.bos_token_id", n),
            eos_id=meta_id(metadata, "tokenizer.ggml.eos_token_id", n),
            add_bos=bool(add_bos) if add_bos is not None else None,
        )

    def eog_by_text(self) -> set[int]:
        """End-of-turn/text tokens found by their text, promoted to control as llama.cpp does."""
        found: set[int] = set()
        for text in EOG_TEXTS:
            if text in self.ids:
                found.add(self.ids[text])
                self.types[self.ids[text]] = CONTROL
        return found

    def eog_from_metadata(self, metadata: Mapping[str, Any]) -> set[int]:
        found: set[int] = set()
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            tid = meta_id(metadata, key, self.n)
            if tid is not None:
                found.add(tid)
        return found

    def chat_template(self, source: str | None) -> ChatTemplate:
        return ChatTemplate(
            source,
            bos_token=self.texts[self.bos_id] if self.bos_id is not None else "",
            eos_token=self.texts[self.eos_id] if self.eos_id is not None else "",
        )


class VocabTokenizer(Tokenizer):
    """A tokenizer backed by a `Vocab` table and the bytes each token stands for."""

    _vocab: Vocab
    _bytes: list[bytes]

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._bytes[token_id]

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (byte-level characters, `▁`, control names)."""
        return self._vocab.texts[token_id]

    def token_id(self, text: str) -> int | None:
        return self._vocab.ids.get(text)

    def is_control(self, token_id: int) -> bool:
        return self._vocab.types[token_id] == CONTROL


class HFVocabTokenizer(VocabTokenizer):
    """A `VocabTokenizer` whose text -> ids runs in Hugging Face `tokenizers`.

    Two instances of the same pipeline: added-token matching is a per-instance switch in
    `tokenizers`, and flipping it per call would race between threads.
    """

    _hf_plain: HFTokenizer  # control tokens stay plain text
    _hf_special: HFTokenizer  # control tokens are matched (chat templates)

    def _set_pipelines(self, plain: HFTokenizer, special: HFTokenizer) -> None:
        plain.encode_special_tokens = True
        self._hf_plain, self._hf_special = plain, special

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        hf = self._hf_special if parse_special else self._hf_plain
        ids = hf.encode(text, add_special_tokens=False).ids
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

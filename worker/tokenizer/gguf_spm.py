"""SentencePiece-style vocabularies from GGUF metadata (`tokenizer.ggml.model = llama`).

A small pure-Python port of llama.cpp's llm_tokenizer_spm (llama-vocab.cpp), not Hugging Face
`tokenizers`: llama.cpp's loop is score-driven BPE over UTF-8 characters (the best-scoring
adjacent pair whose concatenation is a token merges first, ties to the leftmost), with
`rev_merge` resegmentation and `<0xXX>` byte fallback, and its special-token partitioning,
space-prefix rule and Phi-3 RSTRIP attributes are llama.cpp's own, so a port is the direct way
to match its ids. Cost is O(n log n) per text fragment; fine for prompts.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from worker.tokenizer.vocab import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    Vocab,
    VocabTokenizer,
    check_eos_override,
)

log = logging.getLogger("worker.tokenizer")

SPACE = "\u2581"  # SentencePiece's visible space
_C_SPACE = " \t\n\v\f\r"  # C isspace()


class GGUFSPMTokenizer(VocabTokenizer):
    kind = "gguf-spm"

    def __init__(self, metadata: Mapping[str, Any], *, eos_override: int | None = None) -> None:
        vocab = Vocab.from_gguf(metadata)
        n = vocab.n
        raw_scores = metadata.get("tokenizer.ggml.scores")
        # float32 as llama.cpp keeps them: equal float32 scores tie, and ties go to the leftmost pair.
        scores = np.asarray(raw_scores, dtype=np.float32).tolist() if raw_scores is not None else [0.0] * n
        if len(scores) != n:
            raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        self._vocab = vocab
        self.vocab_size = n
        self._texts, self._types, self._ids = vocab.texts, vocab.types, vocab.ids
        self._scores = scores
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.add_bos = vocab.add_bos if vocab.add_bos is not None else True  # llama.cpp's SPM default
        self.add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))

        eog = vocab.eog_by_text() | vocab.eog_from_metadata(metadata)
        if self.eos_id is not None:
            eog.add(self.eos_id)
        check_eos_override(eos_override, n)
        if eos_override is not None:
            eog.add(eos_override)
        self.eog_ids = frozenset(eog)

        # llama.cpp's cache_special_tokens: control, user-defined and unknown, longest first.
        special = [i for i, k in enumerate(self._types) if k in (CONTROL, USER_DEFINED, UNKNOWN)]
        special.sort(key=lambda i: -len(self._texts[i].encode("utf-8")))
        self._special = special
        # llama.cpp's Phi-3 attributes (by general.name): special tokens swallow the
        # whitespace after them, except <unk>, <s> and <|endoftext|>; </s> does too.
        self._rstrip: set[int] = set()
        name = str(metadata.get("general.name", "")).lower()
        if "phi-3" in name or "phi3" in name:
            self._rstrip = set(special)
            if "</s>" in self._ids:
                self._rstrip.add(self._ids["</s>"])
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                self._rstrip.discard(self._ids.get(t, -1))
        self._bytes = [self._piece(i) for i in range(n)]
        super().__init__(vocab.chat_template(metadata.get("tokenizer.chat_template")))

    # --- pieces ---------------------------------------------------------------------------------
    def _piece(self, i: int) -> bytes:
        # llama.cpp's token_to_piece(special=False) for SPM vocabularies.
        text, kind = self._texts[i], self._types[i]
        if kind == NORMAL:
            return text.replace(SPACE, " ").encode("utf-8")
        if kind == USER_DEFINED:
            return text.encode("utf-8")
        if kind == BYTE:
            return bytes((int(text[3:5], 16),))
        if kind == UNKNOWN:
            return "\u2585".encode()
        return b""

    def decode(self, ids: Iterable[int]) -> str:
        # llama_detokenize: with add_space_prefix, the first token's leading space is dropped.
        data = b"".join(self.token_bytes(int(i)) for i in ids)
        if self.add_space_prefix and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    # --- encoding -------------------------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """llama.cpp's tokenizer_st_partition: raw-text fragments (str) and special ids (int)."""
        frags: list[str | int] = [text] if text else []
        for tid in self._special:
            if not parse_special and self._types[tid] in (CONTROL, UNKNOWN):
                continue
            needle = self._texts[tid]
            out: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                pos = 0
                while True:
                    hit = frag.find(needle, pos)
                    if hit < 0:
                        break
                    if hit > pos:
                        out.append(frag[pos:hit])
                    out.append(tid)
                    pos = hit + len(needle)
                    if tid in self._rstrip:
                        while pos < len(frag) and frag[pos] in _C_SPACE:
                            pos += 1
                if pos < len(frag):
                    out.append(frag[pos:])
            frags = out
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on already-escaped text."""
        syms = list(text)  # one symbol per UTF-8 character
        n = len(syms)
        if n == 0:
            return
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        rev_merge: dict[str, tuple[str, str]] = {}
        heap: list[tuple[float, int, int, str]] = []

        def add_bigram(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            joined = syms[left] + syms[right]
            tid = self._ids.get(joined)
            if tid is None:
                return
            # Max-score first, then the leftmost (llm_bigram_spm::comparator).
            heapq.heappush(heap, (-self._scores[tid], left, right, joined))
            rev_merge[joined] = (syms[left], syms[right])

        for i in range(1, n):
            add_bigram(i - 1, i)
        while heap:
            _, left, right, joined = heapq.heappop(heap)
            # Stale: a side was merged away or changed since this pair was queued.
            if not (alive[left] and alive[right]) or nxt[left] != right or syms[left] + syms[right] != joined:
                continue
            syms[left] = joined
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add_bigram(prev[left], left)
            add_bigram(left, nxt[left])
        i = 0
        while i >= 0:
            self._resegment(syms[i], rev_merge, out)
            i = nxt[i]

    def _resegment(self, text: str, rev_merge: dict[str, tuple[str, str]], out: list[int]) -> None:
        tid = self._ids.get(text)
        if tid is not None:
            out.append(tid)
            return
        parts = rev_merge.get(text)
        if parts is not None:
            self._resegment(parts[0], rev_merge, out)
            self._resegment(parts[1], rev_merge, out)
            return
        for b in text.encode("utf-8"):
            byte_id = self._ids.get(f"<0x{b:02X}>")
            if byte_id is None:
                byte_id = self._ids.get(chr(b))
            if byte_id is None:
                raise ValueError(f"byte 0x{b:02X} has no token (no <0x{b:02X}> byte fallback)")
            out.append(byte_id)

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        ids: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token")
            ids.append(self.bos_id)
        is_prev_special = True  # the first fragment gets the space prefix
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                ids.append(frag)
                is_prev_special = True
                continue
            raw = (" " if self.add_space_prefix and is_prev_special else "") + frag
            self._spm(raw.replace(" ", SPACE), ids)
            is_prev_special = False
        if self.add_eos and add_bos is not False and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

"""Incremental detokenization for streaming: text goes out as soon as it is whole."""

from __future__ import annotations

import codecs
from typing import Protocol


class _TokenBytes(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces that never end inside a character.

    Byte-level BPE tokens can hold part of a UTF-8 sequence (one emoji may span several tokens),
    so their bytes are fed to an incremental UTF-8 decoder: it holds back an incomplete tail
    until a later token completes it, and replaces invalid bytes exactly as a one-shot
    `bytes.decode(errors="replace")` would. Hence the pieces joined (plus `flush()`) equal
    `tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer: _TokenBytes) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is left at the end; an incomplete character becomes U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

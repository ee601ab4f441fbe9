"""The tokenizer interface every vocabulary kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from worker.tokenizer.chat import ChatTemplate


class UnsupportedTokenizer(ValueError):
    """A vocabulary kind this worker cannot tokenize (yet)."""


class Tokenizer(ABC):
    """Text <-> token ids for one model, plus its chat template and end-of-generation ids.

    Prompt text is plain text unless `parse_special=True`: a user typing `<|im_end|>` must not
    be able to inject the control token; only the chat-template path parses special tokens.
    """

    kind: str  # "gguf-bpe" | "gguf-spm" | "hf-json"
    vocab_size: int
    bos_id: int | None
    eos_id: int | None  # as the metadata says; may be an ordinary token (see eog_ids)
    add_bos: bool  # the model's own rule for plain prompts
    eog_ids: frozenset[int]  # generation stops on any of these

    def __init__(self, chat: ChatTemplate) -> None:
        self._chat = chat

    @property
    def has_chat_template(self) -> bool:
        """False when the model has no usable template and ChatML stands in for it."""
        return self._chat.from_model

    @property
    def chat_template_size(self) -> int:
        """Characters in the model's own template (0 with the ChatML fallback)."""
        return self._chat.size

    @abstractmethod
    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; `add_bos=None` follows the model's rule."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes the token stands for (b"" for control tokens); may be part of a character."""

    def decode(self, ids: Iterable[int]) -> str:
        # Joining bytes first lets a character split across tokens come out whole.
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        return self._chat.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_prompt(self, prompt: str, chat: bool) -> list[int]:
        """Ids for a request's prompt: plain text, or one user turn through the chat template."""
        if not chat:
            return self.encode(prompt)
        text = self.apply_chat_template([{"role": "user", "content": prompt}])
        # Templates that start with {{ bos_token }} already carry it; a second BOS hurts quality.
        bos = self._chat.bos_token
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.encode(text, add_bos=add_bos, parse_special=True)

"""Tokenizers: GGUF vocabularies (and later tokenizer.json) behind one `Tokenizer` interface."""

from __future__ import annotations

import os

from worker.gguf_file import GGUFFile
from worker.tokenizer.base import Tokenizer
from worker.tokenizer.chat import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError
from worker.tokenizer.gguf_bpe import GGUFBPETokenizer
from worker.tokenizer.gguf_spm import GGUFSPMTokenizer
from worker.tokenizer.stream import StreamingDetokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplate",
    "ChatTemplateError",
    "GGUFBPETokenizer",
    "GGUFSPMTokenizer",
    "StreamingDetokenizer",
    "Tokenizer",
    "UnsupportedTokenizer",
    "load_tokenizer",
]


class UnsupportedTokenizer(ValueError):
    """A vocabulary kind this worker cannot tokenize (yet)."""


def load_tokenizer(
    gguf_file: GGUFFile,
    *,
    eos_override: int | None = None,
    tokenizer_json: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """The tokenizer for a model, chosen by `tokenizer.ggml.model`."""
    if tokenizer_json is not None:
        raise UnsupportedTokenizer(
            f"{tokenizer_json}: tokenizer.json (hf-json) tokenizers are not supported yet; "
            "use the vocabulary inside the GGUF file"
        )
    model = gguf_file.metadata.get("tokenizer.ggml.model")
    if model == "gpt2":
        return GGUFBPETokenizer(gguf_file.metadata, eos_override=eos_override)
    if model == "llama":
        return GGUFSPMTokenizer(gguf_file.metadata, eos_override=eos_override)
    raise UnsupportedTokenizer(
        f"{gguf_file.path}: unsupported tokenizer.ggml.model {model!r}; "
        "supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece)"
    )

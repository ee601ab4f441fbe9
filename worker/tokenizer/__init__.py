"""Tokenizers: GGUF vocabularies or a tokenizer.json behind one `Tokenizer` interface."""

from __future__ import annotations

import os

from worker.gguf_file import GGUFFile
from worker.tokenizer.base import Tokenizer, UnsupportedTokenizer
from worker.tokenizer.chat import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError
from worker.tokenizer.gguf_bpe import GGUFBPETokenizer
from worker.tokenizer.gguf_spm import GGUFSPMTokenizer
from worker.tokenizer.hf_json import HFJSONTokenizer, TokenizerFileError, find_tokenizer_json
from worker.tokenizer.stream import StreamingDetokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplate",
    "ChatTemplateError",
    "GGUFBPETokenizer",
    "GGUFSPMTokenizer",
    "HFJSONTokenizer",
    "StreamingDetokenizer",
    "Tokenizer",
    "TokenizerFileError",
    "UnsupportedTokenizer",
    "find_tokenizer_json",
    "load_tokenizer",
]


def load_tokenizer(
    gguf_file: GGUFFile,
    *,
    eos_override: int | None = None,
    tokenizer_json: str | os.PathLike[str] | None = None,
    n_vocab: int | None = None,
) -> Tokenizer:
    """The tokenizer for a model: `tokenizer_json` when given (hf-json), else the GGUF's own
    vocabulary, chosen by `tokenizer.ggml.model`. `n_vocab` is the model's embedding rows."""
    if tokenizer_json is not None:
        return HFJSONTokenizer(tokenizer_json, gguf_file.metadata, n_vocab=n_vocab, eos_override=eos_override)
    model = gguf_file.metadata.get("tokenizer.ggml.model")
    if model == "gpt2":
        return GGUFBPETokenizer(gguf_file.metadata, eos_override=eos_override)
    if model == "llama":
        return GGUFSPMTokenizer(gguf_file.metadata, eos_override=eos_override)
    raise UnsupportedTokenizer(
        f"{gguf_file.path}: unsupported tokenizer.ggml.model {model!r}; "
        "supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece), or a tokenizer.json "
        "(beside the model or --tokenizer)"
    )

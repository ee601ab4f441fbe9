"""Conformance fixtures: llama.cpp (llama-cpp-python) as the independent reference.

llama-cpp-python is an optional dependency: without it these tests skip, unless
WORKER_REQUIRE_LLAMA_CPP=1 (set by the conformance nox session), where its absence fails.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from worker.gguf_file import GGUFFile
from worker.models.registry import pull
from worker.tokenizer import Tokenizer, load_tokenizer

REAL_MODELS = ("qwen2.5-0.5b-instruct", "smollm2-135m-instruct")


def import_llama_cpp() -> ModuleType:
    if os.environ.get("WORKER_REQUIRE_LLAMA_CPP") == "1":
        try:
            import llama_cpp
        except ImportError as e:
            pytest.fail(f"WORKER_REQUIRE_LLAMA_CPP=1 but llama_cpp cannot be imported: {e}")
        return llama_cpp
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python (the reference) is not installed; pip install '.[conformance]'"
    )


class LlamaVocab:
    """llama.cpp's tokenizer for one GGUF file, loaded vocabulary-only."""

    def __init__(self, lib: ModuleType, path: str | os.PathLike[str]) -> None:
        self.lib = lib
        self.llm = lib.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = lib.llama_model_get_vocab(self.llm.model)
        self.n_tokens = int(lib.llama_vocab_n_tokens(self.vocab))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        # llama-cpp-python's add_bos is llama.cpp's add_special: BOS only if the vocabulary wants it.
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special))

    def piece(self, token_id: int, *, special: bool = False) -> bytes:
        # Own buffer handling: Llama.detokenize uses a fixed 32-byte buffer that long tokens overflow.
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token_id, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def detokenize(self, ids: list[int]) -> bytes:
        """llama.cpp's own llama_detokenize, keeping special tokens as they are (rendered empty)."""
        arr = (self.lib.llama_token * len(ids))(*ids)
        size = 64 + 8 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_eog(self, token_id: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token_id))

    def is_control(self, token_id: int) -> bool:
        return bool(self.lib.llama_vocab_is_control(self.vocab, token_id))

    @property
    def add_bos(self) -> bool:
        return bool(self.lib.llama_vocab_get_add_bos(self.vocab))


@pytest.fixture(scope="session")
def llama_cpp() -> ModuleType:
    return import_llama_cpp()


@pytest.fixture(scope="session")
def open_llama_vocab(llama_cpp: ModuleType) -> Callable[[str | os.PathLike[str]], LlamaVocab]:
    """path -> llama.cpp's tokenizer for that file (for tests that make their own files)."""
    return lambda path: LlamaVocab(llama_cpp, path)


@pytest.fixture(scope="session", params=REAL_MODELS)
def model_pair(request: pytest.FixtureRequest, llama_cpp: ModuleType) -> tuple[str, Tokenizer, LlamaVocab]:
    """(name, our tokenizer, llama.cpp's) for each real model."""
    path = pull(request.param)
    return request.param, load_tokenizer(GGUFFile(path)), LlamaVocab(llama_cpp, path)


# --- made vocabularies: SmolLM2's, under other pre-tokenizer names ------------------------------
# Both real models split digits one by one and learned no merges across case changes or
# contractions, so their ids cannot tell llama3's, gpt-4o's or gpt-2's regex apart. The made
# files add merges that only a particular split can reach: 2- and 3-digit numbers, and whole
# words that some regexes cut (CamelCase, "dog's", mixed-case Greek).
CHAIN_WORDS = (
    "CamelCaseIdentifiersLikeThisOne", " dog's", " DON'T", " I'M", " iPhone", " XMLHttpRequest",
    " McDonald's", " αβΓΔ", "αβΓΔ", " ΑΒΓΔαβγδ",
)  # fmt: skip


def _augmented_vocab(fields: dict[str, Any], ref: LlamaVocab) -> dict[str, Any]:
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = [int(t) for t in fields["tokenizer.ggml.token_type"]]
    merges = list(fields["tokenizer.ggml.merges"])
    known = set(tokens)
    known_merges = set(merges)

    def add(a: str, b: str) -> None:
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
            types.append(1)
        if f"{a} {b}" not in known_merges:
            known_merges.add(f"{a} {b}")
            merges.append(f"{a} {b}")

    digits = "0123456789"
    for a in digits:
        for b in digits:
            add(a, b)
    for ab in (a + b for a in digits for b in digits):
        for c in digits:
            add(ab, c)
    # Chains built from llama.cpp's own pieces of each word under the original vocabulary.
    for word in CHAIN_WORDS:
        pieces = [tokens[i] for i in ref.tokenize(word, add_special=False, parse_special=False)]
        acc = pieces[0]
        for p in pieces[1:]:
            add(acc, p)
            acc += p
    return {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}


MadeVocab = Callable[..., Path]


@pytest.fixture(scope="session")
def made_vocab_factory(llama_cpp: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> MadeVocab:
    """(pre, extra_tokens) -> a vocabulary-only GGUF: SmolLM2's metadata under that pre name, with
    the extra merges above and `extra_tokens` ((text, token_type) pairs) appended."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    src = pull("smollm2-135m-instruct")
    reader = GGUFReader(src)
    fields = {name: (f.contents(), f.types) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    augmented = _augmented_vocab({k: v for k, (v, _) in fields.items()}, LlamaVocab(llama_cpp, src))
    folder = tmp_path_factory.mktemp("made_vocab")
    made: dict[tuple[str, tuple[tuple[str, int], ...]], Path] = {}

    def make(pre: str, extra_tokens: tuple[tuple[str, int], ...] = ()) -> Path:
        key = (pre, extra_tokens)
        if key not in made:
            path = folder / f"vocab-{len(made)}.gguf"
            overrides = {
                **augmented,
                "tokenizer.ggml.pre": pre,
                "tokenizer.ggml.tokens": augmented["tokenizer.ggml.tokens"] + [t for t, _ in extra_tokens],
                "tokenizer.ggml.token_type": augmented["tokenizer.ggml.token_type"] + [k for _, k in extra_tokens],
            }
            writer = GGUFWriter(path, fields["general.architecture"][0])
            for name, (value, types) in fields.items():
                if name == "general.architecture":
                    continue
                sub = types[1] if types[0] == GGUFValueType.ARRAY else None
                writer.add_key_value(name, overrides.get(name, value), types[0], sub_type=sub)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            made[key] = path
        return made[key]

    return make

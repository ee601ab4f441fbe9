"""Tokenizers from a Hugging Face `tokenizer.json` (kind `hf-json`).

Encoding is the `tokenizers` library running the file as written (normalizer, pre-tokenizer,
model, added tokens), so ids are those of `transformers` for the same file, not llama.cpp's
where the two differ (e.g. Qwen2's NFC normalizer, which llama.cpp does not apply).

What the file does not say comes from beside it or from the GGUF, in this order:
- BOS / EOS: `tokenizer_config.json` next to the file (`bos_token`, `eos_token`), else the GGUF's
  `tokenizer.ggml.{bos,eos}_token_id` looked up by the token's text (so a GGUF vocabulary that
  numbers its tokens differently cannot point at the wrong token), else the token the file's
  post-processor puts first.
- add BOS: `tokenizer_config.json`'s `add_bos_token`, else whether the post-processor adds one
  (what `transformers` does).
- chat template: the GGUF's `tokenizer.chat_template`, else `tokenizer_config.json`'s
  `chat_template`, else `chat_template.jinja`, else ChatML.

Token attributes and rendering follow llama.cpp's rules for the same vocabulary, as gguf-bpe
does: end-of-generation ids by text, FIM and EOG texts promoted to control (rendered as
nothing), harmony markers and non-special added tokens rendered as written. So a stream over
hf-json shows what it shows over gguf-bpe.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from worker.tokenizer.base import UnsupportedTokenizer
from worker.tokenizer.gguf_bpe import UNICODE_TO_BYTE, find_eog
from worker.tokenizer.vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, HFVocabTokenizer, Vocab

log = logging.getLogger("worker.tokenizer")

TOKENIZER_JSON = "tokenizer.json"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TO_LATIN1 = {ord(c): b for c, b in UNICODE_TO_BYTE.items()}


class TokenizerFileError(ValueError):
    """A tokenizer.json (or its tokenizer_config.json) that is missing or cannot be used."""


def find_tokenizer_json(model_path: str | os.PathLike[str], explicit: str | os.PathLike[str] | None) -> Path | None:
    """The tokenizer.json to use: the one given (a file, or a folder holding one), else one beside the model."""
    if explicit is not None:
        path = Path(explicit)
        return path / TOKENIZER_JSON if path.is_dir() else path
    beside = Path(model_path).with_name(TOKENIZER_JSON)
    return beside if beside.is_file() else None


def _read_json(path: Path, what: str) -> tuple[str, Any]:
    """The file's text and its parsed JSON; a clear error naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerFileError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise TokenizerFileError(f"{path}: malformed {what}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TokenizerFileError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{path}: malformed {what}: {e.msg} at line {e.lineno} column {e.colno}") from None


def _node_types(node: Any) -> list[dict[str, Any]]:
    """A decoder / pre-tokenizer and, for a Sequence, its members, flattened."""
    if not isinstance(node, dict):
        return []
    members = node.get("decoders") or node.get("pretokenizers")
    if node.get("type") == "Sequence" and isinstance(members, list):
        return [leaf for m in members for leaf in _node_types(m)]
    return [node]


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _decoder_style(spec: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """How tokens become bytes: ('byte-level' | 'sentencepiece', the space marker, how decoding
    drops the prefix space: '' not at all, 'text' one leading space of the text (Llama's Strip
    after Fuse), 'first-token' every marker of the first token (Metaspace's own rule)); None for
    decoders without a per-token byte rule (WordPiece...)."""
    decoders = _node_types(spec.get("decoder"))
    kinds = {d.get("type") for d in decoders}
    if "ByteLevel" in kinds or (not decoders and "ByteLevel" in {p.get("type") for p in
                                                                   _node_types(spec.get("pre_tokenizer"))}):
        return "byte-level", "", ""
    space, strip = "", ""
    for d in decoders:
        if d.get("type") == "Replace" and (d.get("pattern") or {}).get("String") and d.get("content") == " ":
            space = d["pattern"]["String"]
        elif d.get("type") == "Metaspace":
            space = d.get("replacement") or "\u2581"
            if d.get("prepend_scheme", "always") != "never" and d.get("add_prefix_space", True) is not False:
                strip = "first-token"
        elif d.get("type") == "Strip" and d.get("content") == " " and int(d.get("start", 0)) > 0:
            strip = "text"
    if space or "ByteFallback" in kinds:
        return "sentencepiece", space or "\u2581", strip
    return None


class HFJSONTokenizer(HFVocabTokenizer):
    kind = "hf-json"

    def __init__(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Any] | None = None,
        *,
        n_vocab: int | None = None,
        eos_override: int | None = None,
    ) -> None:
        """`metadata`: the model's GGUF metadata (chat template, special ids); `n_vocab`: the
        model's embedding rows, which the tokenizer's ids must fit (padding ids render as nothing)."""
        self.path = path = Path(path)
        metadata = metadata or {}
        raw, spec = _read_json(path, "tokenizer.json")
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise TokenizerFileError(f"{path}: malformed tokenizer.json: no 'model' object")
        try:
            self._set_pipelines(HFTokenizer.from_str(raw), HFTokenizer.from_str(raw))
        except Exception as e:  # the library raises plain Exception with its parser's message
            raise TokenizerFileError(f"{path}: malformed tokenizer.json: {e}") from None
        config_path = path.with_name("tokenizer_config.json")
        config = _read_json(config_path, "tokenizer_config.json")[1] if config_path.is_file() else {}
        if not isinstance(config, dict):
            raise TokenizerFileError(f"{config_path}: malformed tokenizer_config.json: not a JSON object")

        style = _decoder_style(spec)
        if style is None:
            kinds = ", ".join(sorted(str(d.get("type")) for d in _node_types(spec.get("decoder")))) or "none"
            raise UnsupportedTokenizer(
                f"{path}: decoder {kinds} is not supported (per-token bytes for streaming are known for "
                "ByteLevel and SentencePiece-style decoders: Metaspace, or Replace '▁' with ByteFallback)"
            )
        self._style, self._space, self._strip_leading = style
        vocab = self._vocab_table(spec, n_vocab)
        self._vocab = vocab
        self.vocab_size = vocab.n
        self._compare_with_gguf(metadata)

        vocab.bos_id = self._special_id(config.get("bos_token"), metadata, "bos")
        vocab.eos_id = self._special_id(config.get("eos_token"), metadata, "eos")
        prefix = self._post_processor_prefix()
        if vocab.bos_id is None and len(prefix) == 1:
            vocab.bos_id = prefix[0]
        add_bos = config.get("add_bos_token")
        self.add_bos = bool(add_bos) if add_bos is not None else len(prefix) == 1
        if self.add_bos and vocab.bos_id is None:
            raise TokenizerFileError(f"{path}: add_bos_token is set but no BOS token is known")
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id

        # GGUF ids of special tokens, translated by text into this file's ids, drive llama.cpp's
        # end-of-generation rules (FIM markers, eot/eom).
        self.eog_ids = find_eog(vocab, self._translated_ids(metadata), eos_override)
        self._bytes = [self._piece(i) for i in range(vocab.n)]
        super().__init__(vocab.chat_template(self._chat_source(metadata, config)))

    # --- reading the file ----------------------------------------------------------------------

    def _vocab_table(self, spec: Mapping[str, Any], n_vocab: int | None) -> Vocab:
        ids: dict[str, int] = self._hf_special.get_vocab(with_added_tokens=True)
        top = max(ids.values(), default=-1)
        if n_vocab is not None and top >= n_vocab:
            text = next(t for t, i in ids.items() if i == top)
            raise TokenizerFileError(
                f"{self.path}: token id {top} ({text!r}) is outside the model's vocabulary of {n_vocab} "
                "tokens; is this tokenizer.json the model's own?"
            )
        n = max(top + 1, n_vocab or 0)
        if n == 0:
            raise TokenizerFileError(f"{self.path}: malformed tokenizer.json: the vocabulary is empty")
        texts = [""] * n
        types = [UNUSED] * n  # ids the file does not define (model padding) render as nothing
        for text, i in ids.items():
            texts[i] = text
            types[i] = NORMAL
        if self._style == "sentencepiece" and spec["model"].get("byte_fallback"):
            for text, i in ids.items():
                if _BYTE_TOKEN.fullmatch(text):
                    types[i] = BYTE
        for i, added in self._hf_special.get_added_tokens_decoder().items():
            types[i] = CONTROL if added.special else USER_DEFINED
        # `tokenizers` numbers an added token that the model lacks by counting, whatever id the
        # file says; a file with gaps would then hand the model ids it was not trained on.
        for entry in spec.get("added_tokens") or []:
            declared, content = entry.get("id"), entry.get("content")
            if isinstance(declared, int) and ids.get(content) != declared:
                raise TokenizerFileError(
                    f"{self.path}: malformed tokenizer.json: added token {content!r} is declared as id {declared} "
                    f"but `tokenizers` numbers it {ids.get(content)} (gaps in the ids before it?)"
                )
        unk = spec["model"].get("unk_token")
        if isinstance(unk, str) and unk in ids:  # also when listed as an added token, as llama.cpp types it
            types[ids[unk]] = UNKNOWN
        return Vocab(texts=texts, types=types, ids=ids)

    def _compare_with_gguf(self, metadata: Mapping[str, Any]) -> None:
        """Warn when the GGUF's own vocabulary spells its tokens differently: then the ids this
        file produces are not the ones the model was trained on."""
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            return
        texts, types = self._vocab.texts, self._vocab.types
        bad = [i for i in range(min(len(tokens), len(texts))) if types[i] != UNUSED and tokens[i] != texts[i]]
        if bad:
            i = bad[0]
            log.warning(
                "%s and the GGUF vocabulary differ on %d of %d token texts (first: id %d is %r here, %r in the "
                "GGUF); token ids come from %s",
                self.path, len(bad), len(texts), i, texts[i], tokens[i], self.path.name,
            )  # fmt: skip

    def _gguf_id(self, metadata: Mapping[str, Any], key: str) -> int | None:
        """A GGUF special-token id as an id of this file, matched by the token's text."""
        value = metadata.get(key)
        if value is None:
            return None
        gid = int(value)
        tokens = metadata.get("tokenizer.ggml.tokens")
        if tokens:
            return self._vocab.ids.get(tokens[gid]) if 0 <= gid < len(tokens) else None
        return gid if 0 <= gid < self._vocab.n and self._vocab.types[gid] != UNUSED else None

    def _translated_ids(self, metadata: Mapping[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in metadata:
            if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
                tid = self._gguf_id(metadata, key)
                if tid is not None:
                    out[key] = tid
        return out

    def _special_id(self, config_value: Any, metadata: Mapping[str, Any], which: str) -> int | None:
        text = _token_content(config_value)
        if text is not None:
            tid = self._vocab.ids.get(text)
            if tid is None:
                raise TokenizerFileError(
                    f"{self.path.with_name('tokenizer_config.json')}: {which}_token {text!r} is not in {self.path}"
                )
            return tid
        return self._gguf_id(metadata, f"tokenizer.ggml.{which}_token_id")

    def _post_processor_prefix(self) -> list[int]:
        """Ids the file's post-processor puts before a text (Llama's <s>, Llama 3's <|begin_of_text|>)."""
        probe = "a"
        plain = self._hf_plain.encode(probe, add_special_tokens=False).ids
        full = self._hf_plain.encode(probe, add_special_tokens=True).ids
        for k in range(len(full) - len(plain) + 1):
            if full[k : k + len(plain)] == plain:
                return full[:k]
        return []

    def _chat_source(self, metadata: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
        source = metadata.get("tokenizer.chat_template")
        if source:
            return str(source)
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if isinstance(source, str) and source:
            return source
        jinja = self.path.with_name("chat_template.jinja")
        return jinja.read_text(encoding="utf-8") if jinja.is_file() else None

    # --- rendering -----------------------------------------------------------------------------

    def _piece(self, i: int) -> bytes:
        text, kind = self._vocab.texts[i], self._vocab.types[i]
        if kind == USER_DEFINED:
            return text.encode("utf-8")
        if kind == BYTE:
            return bytes((int(text[3:5], 16),))
        if kind == UNKNOWN and self._style == "sentencepiece":
            return "\u2585".encode()  # llama.cpp's rendering of <unk>
        if kind != NORMAL:
            return b""
        if self._style == "sentencepiece":
            return text.replace(self._space, " ").encode("utf-8")
        try:
            return text.translate(_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:
            # The ByteLevel decoder's own rule: a token with a character outside the byte table
            # stands for its UTF-8 bytes, whole.
            return text.encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        data = b"".join(self.token_bytes(i) for i in ids)
        if self._strip_leading == "text" and data.startswith(b" "):
            data = data[1:]  # Strip after Fuse: the prefix space the normalizer added
        elif self._strip_leading == "first-token":
            # The first token the decoder sees, i.e. after the skipped special ones.
            k = next((k for k, i in enumerate(ids) if self._vocab.types[i] != CONTROL), None)
            if k is not None and self._vocab.types[ids[k]] == NORMAL:
                head = b"".join(self.token_bytes(i) for i in ids[: k + 1])
                first = self._vocab.texts[ids[k]].replace(self._space, "").encode("utf-8")
                data = first + data[len(head) :]
        return data.decode("utf-8", errors="replace")

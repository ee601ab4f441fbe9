"""Generation: prefill, decode loop, sampling, and the text a client sees.

Kept apart from the model (gpt-fast style): `generate()` drives any ModelAdapter, and
`TextAssembler` turns token ids into UTF-8-safe text pieces with stop-sequence hold-back. The
CLI and the HTTP engine both consume the same event stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.model import LoadedModel
from worker.sampler import Sampler, SamplingParams
from worker.tokenizer.stream import StreamingDetokenizer


class Cancelled(Exception):
    """The job was cancelled (or timed out) at a token boundary."""


@dataclass(frozen=True)
class TokenEvent:
    text: str
    index: int  # index of the event's first token among the generated tokens
    ids: list[int]


@dataclass(frozen=True)
class FinishEvent:
    stop_reason: str  # "max_tokens" | "eos" | "stop_sequence"
    tokens_out: int
    prefill_time_ms: float
    decode_time_ms: float
    ttft_ms: float
    prompt_tokens: int


@dataclass
class TextAssembler:
    """ids -> text pieces that never end inside a code point and never show a stop sequence.

    Text that could still turn into a stop sequence is held back until it is certain either
    way; ids whose text is held ride with the next piece that is released."""

    detok: StreamingDetokenizer
    stop: Sequence[str] = ()
    _text: str = ""
    _ids: list[int] = field(default_factory=list)
    _first: int = 0
    _count: int = 0
    stopped: bool = False

    def push(self, token_id: int) -> TokenEvent | None:
        self._ids.append(token_id)
        self._count += 1
        self._text += self.detok.push(token_id)
        if self.stop:
            hits = [(self._text.find(s), s) for s in self.stop if s in self._text]
            if hits:
                at = min(h[0] for h in hits)
                self._text = self._text[:at]
                self.stopped = True
                return self._release(len(self._text))
            return self._release(len(self._text) - self._held_suffix())
        return self._release(len(self._text))

    def finish(self) -> TokenEvent | None:
        if not self.stopped:
            self._text += self.detok.flush()
        return self._release(len(self._text), force=bool(self._ids))

    def _held_suffix(self) -> int:
        """Length of the longest tail of the pending text that starts some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _release(self, upto: int, force: bool = False) -> TokenEvent | None:
        if upto <= 0 and not force:
            return None
        event = TokenEvent(text=self._text[:upto], index=self._first, ids=self._ids)
        self._text = self._text[upto:]
        self._first = self._count
        self._ids = []
        return event


def generate(
    model: LoadedModel,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    sampling: SamplingParams,
    stop: Sequence[str] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[TokenEvent | FinishEvent]:
    """Yield token events then one FinishEvent. Raises Cancelled when should_stop() turns true,
    and the backend's OutOfDeviceMemory when the job's buffers do not fit; the job's KV cache
    is freed on every path."""
    t0 = time.perf_counter()
    n_prompt = len(prompt_ids)
    cache = model.adapter.new_cache(n_prompt + max_tokens)
    decoder = None
    try:
        sampler = Sampler(sampling)
        text = TextAssembler(StreamingDetokenizer(model.tokenizer), stop)
        history = list(prompt_ids)
        eog = model.tokenizer.eog_ids
        if should_stop():
            raise Cancelled
        logits = model.adapter.forward(np.asarray(prompt_ids, dtype=np.int64), 0, cache)
        t_prefill = time.perf_counter()
        decoder = model.adapter.decoder(cache)
        ttft = None
        reason = "max_tokens"
        produced = 0
        pos = n_prompt
        token = sampler.sample(logits, history)
        while True:
            if should_stop():
                raise Cancelled
            if ttft is None:
                ttft = time.perf_counter()
            if token in eog:
                reason = "eos"
                break
            produced += 1
            history.append(token)
            event = text.push(token)
            if event is not None:
                yield event
            if text.stopped:
                reason = "stop_sequence"
                break
            if produced >= max_tokens:
                break
            if sampler.greedy:
                # argmax on the device: only the id comes back, not the logits
                token = decoder.greedy(token, pos)
            else:
                token = sampler.sample(decoder.logits(token, pos), history)
            pos += 1
        last = text.finish()
        if last is not None and (last.text or last.ids):
            yield last
        t_end = time.perf_counter()
        ttft = ttft or t_end
        yield FinishEvent(
            stop_reason=reason,
            tokens_out=produced,
            prefill_time_ms=(t_prefill - t0) * 1e3,
            decode_time_ms=(t_end - ttft) * 1e3,
            ttft_ms=(ttft - t0) * 1e3,
            prompt_tokens=n_prompt,
        )
    finally:
        if decoder is not None:
            decoder.close()
        model.backend.free_kv_cache(cache)

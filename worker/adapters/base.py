"""The model adapter interface: one forward pass per architecture family, backend-agnostic."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.backends.base import Backend, KVCache
from worker.gguf_file import GGUFFile
from worker.model_config import ModelConfig

Progress = Callable[[int, int], None]  # (tensors done, tensors total)


class ModelAdapter(ABC):
    """Maps GGUF tensors to weights on a backend and runs the forward pass over a KV cache."""

    architectures: tuple[str, ...] = ()

    def __init__(self, cfg: ModelConfig, backend: Backend) -> None:
        self.cfg = cfg
        self.backend = backend

    @abstractmethod
    def load(self, f: GGUFFile, progress: Progress | None = None) -> None:
        """Bring every weight onto the backend."""

    @abstractmethod
    def forward(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        """Run tokens at positions start.. through the model, filling the cache; returns the
        float32 logits [vocab] of the last position, on the host."""

    def new_cache(self, capacity: int) -> KVCache:
        return self.backend.new_kv_cache(self.cfg, capacity)

    # A backend may capture one decode step and replay it (CUDA graphs) when the adapter's
    # forward pass for one token is made only of operations that read the token and its
    # position from device memory; adapters that say False always run forward().
    capturable: bool = False
    # Likewise for a whole prompt (prefill graphs): every operation of an n-token forward pass
    # reads what it needs from device memory (gpt-oss routes a prompt's experts on the host).
    prompt_capturable: bool = False

    def logits(self, tokens: np.ndarray, start: int, cache: KVCache) -> Any:
        """forward() without the copy to the host: the backend's [1, vocab] array."""
        raise NotImplementedError

    def decoder(self, cache: KVCache) -> Decoder:
        return self.backend.decoder(self, cache)


class Decoder:
    """Runs a job's one-token steps after the prefill: the token at `pos` -> next logits.

    This plain one calls forward() each step (and works with any object that has one, such
    as the engine's fault-injecting wrapper); a backend can return a faster subclass."""

    def __init__(self, adapter: Any, cache: KVCache) -> None:
        self.adapter, self.cache = adapter, cache

    def logits(self, token: int, pos: int) -> np.ndarray:
        return self.adapter.forward(np.asarray([token], dtype=np.int64), pos, self.cache)

    def greedy(self, token: int, pos: int) -> int:
        """argmax of the next logits (first index on ties, as np.argmax)."""
        return int(np.argmax(self.logits(token, pos)))

    def close(self) -> None:
        return None

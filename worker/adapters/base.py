"""The model adapter interface: one forward pass per architecture family, backend-agnostic."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

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

"""architecture -> adapter."""

from __future__ import annotations

from worker.adapters.base import ModelAdapter
from worker.adapters.gpt import GPTAdapter
from worker.adapters.llama import LlamaAdapter
from worker.backends.base import Backend
from worker.gguf_file import GGUFFile
from worker.model_config import SUPPORTED_ARCHITECTURES, ModelConfig, UnsupportedArchitecture

ADAPTERS: dict[str, type[ModelAdapter]] = {
    arch: cls for cls in (LlamaAdapter, GPTAdapter) for arch in cls.architectures
}


def adapter_for(f: GGUFFile, cfg: ModelConfig, backend: Backend) -> ModelAdapter:
    cls = ADAPTERS.get(cfg.architecture)
    if cls is None:
        raise UnsupportedArchitecture(
            f.path,
            f"unsupported architecture {cfg.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    return cls(cfg, backend)

"""Loading a model: GGUF file -> config -> tokenizer -> adapter with weights on a backend."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.adapters import adapter_for
from worker.adapters.base import ModelAdapter
from worker.backends.base import Backend
from worker.gguf_file import GGUFFile
from worker.model_config import ModelConfig
from worker.tokenizer import find_tokenizer_json, load_tokenizer
from worker.tokenizer.base import Tokenizer

log = logging.getLogger("worker.model")


@dataclass
class LoadedModel:
    path: Path
    name: str
    cfg: ModelConfig
    quant_kind: str
    tokenizer: Tokenizer
    adapter: ModelAdapter
    backend: Backend
    context_length: int

    def encode_prompt(self, prompt: str, chat: bool) -> list[int]:
        return self.tokenizer.encode_prompt(prompt, chat)


def make_backend(device: str, memory_limit: int | None = None, gpu_device: int = 0) -> Backend:
    """`auto` picks CUDA when CuPy sees a GPU, else the NumPy reference backend."""
    if device in ("auto", "cuda"):
        try:
            from worker.backends.cupy_backend import CupyBackend, cuda_available
        except ImportError:
            cuda_available = None  # type: ignore[assignment]
        if cuda_available is not None and cuda_available():
            return CupyBackend(gpu_device, memory_limit=memory_limit)
        if device == "cuda":
            raise RuntimeError("--device cuda: no usable CUDA GPU (CuPy backend unavailable or no device found)")
        log.warning("no CUDA GPU found: using the CPU reference backend (slow)")
    from worker.backends.numpy_backend import NumpyBackend

    return NumpyBackend(memory_limit=memory_limit)


def load_model(
    path: str | os.PathLike[str],
    backend: Backend,
    *,
    ctx_size: int | None = None,
    eos_token_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """`tokenizer`: a tokenizer.json (or a folder with one) to use instead of the GGUF's vocabulary;
    without it, a tokenizer.json beside the model file is used when there is one."""
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    tokenizer_json = find_tokenizer_json(path, tokenizer)
    if tokenizer_json is not None and tokenizer is None:
        # Louder than an explicit choice: a file nobody named changes the model's token ids.
        log.warning("using %s found beside the model instead of the GGUF's vocabulary (hf-json)", tokenizer_json)
    tok = load_tokenizer(f, eos_override=eos_token_id, tokenizer_json=tokenizer_json, n_vocab=cfg.vocab_size)
    adapter = adapter_for(f, cfg, backend)
    adapter.load(f, progress)
    ctx = min(ctx_size or cfg.context_length, cfg.context_length)
    backend.prepare(adapter, ctx)
    return LoadedModel(
        path=Path(path),
        name=cfg.name,
        cfg=cfg,
        quant_kind=f.quant_kind,
        tokenizer=tok,
        adapter=adapter,
        backend=backend,
        context_length=ctx,
    )

"""Llama-style decoder: RMSNorm, RoPE, GQA, SwiGLU (llama, qwen2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.adapters.base import ModelAdapter, Progress
from worker.backends.base import KVCache
from worker.gguf_file import GGUFFile


@dataclass
class LlamaLayer:
    attn_norm: Any
    wq: Any
    wk: Any
    wv: Any
    wo: Any
    bq: Any | None
    bk: Any | None
    bv: Any | None
    ffn_norm: Any
    w_gate: Any
    w_up: Any
    w_down: Any


class LlamaAdapter(ModelAdapter):
    architectures = ("llama", "qwen2")

    def load(self, f: GGUFFile, progress: Progress | None = None) -> None:
        be, cfg = self.backend, self.cfg
        total = cfg.n_layer + 2
        self.tok_embd = be.embedding(f, "token_embd.weight")
        if progress:
            progress(1, total)

        def opt(name: str) -> Any | None:
            return be.vector(f, name) if name in f.tensors else None

        self.layers: list[LlamaLayer] = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            self.layers.append(
                LlamaLayer(
                    attn_norm=be.vector(f, p + "attn_norm.weight"),
                    wq=be.matrix(f, p + "attn_q.weight"),
                    wk=be.matrix(f, p + "attn_k.weight"),
                    wv=be.matrix(f, p + "attn_v.weight"),
                    wo=be.matrix(f, p + "attn_output.weight"),
                    bq=opt(p + "attn_q.bias"),
                    bk=opt(p + "attn_k.bias"),
                    bv=opt(p + "attn_v.bias"),
                    ffn_norm=be.vector(f, p + "ffn_norm.weight"),
                    w_gate=be.matrix(f, p + "ffn_gate.weight"),
                    w_up=be.matrix(f, p + "ffn_up.weight"),
                    w_down=be.matrix(f, p + "ffn_down.weight"),
                )
            )
            if progress:
                progress(i + 2, total)
        self.out_norm = be.vector(f, "output_norm.weight")
        # Tied embeddings: the output head is the embedding table.
        self.output = be.matrix(f, "output.weight" if "output.weight" in f.tensors else "token_embd.weight")
        if progress:
            progress(total, total)

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        be, cfg = self.backend, self.cfg
        n = len(tokens)
        positions = np.arange(start, start + n)
        x = be.embed(self.tok_embd, tokens)
        for i, L in enumerate(self.layers):
            h = be.rms_norm(x, L.attn_norm, cfg.norm_eps)
            q = be.linear(h, L.wq, L.bq).reshape(n, cfg.n_head, cfg.head_dim)
            k = be.linear(h, L.wk, L.bk).reshape(n, cfg.n_kv_heads, cfg.head_dim)
            v = be.linear(h, L.wv, L.bv).reshape(n, cfg.n_kv_heads, cfg.head_dim)
            q = be.rope(q, positions, cfg)
            k = be.rope(k, positions, cfg)
            attn = be.attention(q, k, v, cache, i, start)
            x = be.add(x, be.linear(attn, L.wo))
            if i == cfg.n_layer - 1:
                x = be.last_row(x)  # only the last position's logits are needed
            h = be.rms_norm(x, L.ffn_norm, cfg.norm_eps)
            x = be.add(x, be.linear(be.swiglu(be.linear(h, L.w_gate), be.linear(h, L.w_up)), L.w_down))
        x = be.rms_norm(x, self.out_norm, cfg.norm_eps)
        return be.to_host(be.linear(x, self.output))[0]

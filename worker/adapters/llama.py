"""Llama-style decoder: RMSNorm, RoPE, GQA, SwiGLU (llama, qwen2, phi3).

phi3 (llama.cpp's llm_build_phi3): fused `attn_qkv` whose output rows are Q, then K, then V;
fused `ffn_up` whose output's first half is the gate and second half the up projection
(ggml_swiglu on the unsplit tensor: silu(first half) * second half); NeoX RoPE; Q is scaled by
1/sqrt(head_dim) before Q.K and the product is not scaled again.
"""

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
    wq: Any  # phi3: the fused QKV weight, wk and wv None
    wk: Any | None
    wv: Any | None
    wo: Any
    bq: Any | None
    bk: Any | None
    bv: Any | None
    ffn_norm: Any
    w_gate: Any | None  # phi3: None, w_up holds gate and up
    w_up: Any
    w_down: Any


class LlamaAdapter(ModelAdapter):
    architectures = ("llama", "qwen2", "phi3")

    def load(self, f: GGUFFile, progress: Progress | None = None) -> None:
        be, cfg = self.backend, self.cfg
        total = cfg.n_layer + 2
        self.tok_embd = be.embedding(f, "token_embd.weight")
        if progress:
            progress(1, total)

        def opt(name: str) -> Any | None:
            return be.vector(f, name) if name in f.tensors else None

        self.layers: list[LlamaLayer] = []
        fused = cfg.architecture == "phi3"
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            if fused:
                self.layers.append(
                    LlamaLayer(
                        attn_norm=be.vector(f, p + "attn_norm.weight"),
                        wq=be.matrix(f, p + "attn_qkv.weight"), wk=None, wv=None,
                        wo=be.matrix(f, p + "attn_output.weight"),
                        bq=opt(p + "attn_qkv.bias"), bk=None, bv=None,
                        ffn_norm=be.vector(f, p + "ffn_norm.weight"),
                        w_gate=None, w_up=be.matrix(f, p + "ffn_up.weight"),
                        w_down=be.matrix(f, p + "ffn_down.weight"),
                    )
                )  # fmt: skip
                if progress:
                    progress(i + 2, total)
                continue
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
            if L.wk is None:  # phi3: one product, split into Q | K | V
                qkv = be.linear(h, L.wq, L.bq)
                nq, nk = cfg.n_head * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
                q = qkv[:, :nq].reshape(n, cfg.n_head, cfg.head_dim)
                k = qkv[:, nq : nq + nk].reshape(n, cfg.n_kv_heads, cfg.head_dim)
                v = qkv[:, nq + nk :].reshape(n, cfg.n_kv_heads, cfg.head_dim)
            else:
                q = be.linear(h, L.wq, L.bq).reshape(n, cfg.n_head, cfg.head_dim)
                k = be.linear(h, L.wk, L.bk).reshape(n, cfg.n_kv_heads, cfg.head_dim)
                v = be.linear(h, L.wv, L.bv).reshape(n, cfg.n_kv_heads, cfg.head_dim)
            q = be.rope(q, positions, cfg)
            k = be.rope(k, positions, cfg)
            if L.wk is None:
                # llama.cpp scales Q before the f16 round of Q.K, then uses kq_scale 1.
                q = be.scale(q, 1.0 / np.sqrt(cfg.head_dim))
                attn = be.attention_ext(q, k, v, cache, i, start, kq_scale=1.0)
            else:
                attn = be.attention(q, k, v, cache, i, start)
            x = be.add(x, be.linear(attn, L.wo))
            if i == cfg.n_layer - 1:
                x = be.last_row(x)  # only the last position's logits are needed
            h = be.rms_norm(x, L.ffn_norm, cfg.norm_eps)
            if L.w_gate is None:
                gu = be.linear(h, L.w_up)
                half = gu.shape[-1] // 2
                act = be.swiglu(gu[:, :half], gu[:, half:])
            else:
                act = be.swiglu(be.linear(h, L.w_gate), be.linear(h, L.w_up))
            x = be.add(x, be.linear(act, L.w_down))
        x = be.rms_norm(x, self.out_norm, cfg.norm_eps)
        return be.to_host(be.linear(x, self.output))[0]

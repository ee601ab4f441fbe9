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

    @property
    def capturable(self) -> bool:  # type: ignore[override]
        # (Not yet recorded with YaRN RoPE: gpt-oss's step reads YaRN's device table, a
        # Llama-family one has no GPU test of it.)
        return not self.cfg.rope_yarn

    @property
    def prompt_capturable(self) -> bool:  # type: ignore[override]
        return self.capturable

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        return self.backend.prompt_forward(self, tokens, start, cache)

    def logits(self, tokens: np.ndarray, start: int, cache: KVCache) -> Any:
        be, cfg = self.backend, self.cfg
        n = len(tokens)
        nq, nk = cfg.n_head * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        # phi3: llama.cpp scales Q before the f16 round of Q.K, then uses kq_scale 1.
        q_scale = 1.0 / np.sqrt(cfg.head_dim) if cfg.architecture == "phi3" else None
        x = be.embed(self.tok_embd, tokens)
        for i, L in enumerate(self.layers):
            if L.wk is None:  # phi3: one product, split into Q | K | V
                (qkv,) = be.norm_linears(x, L.attn_norm, cfg.norm_eps, [L.wq], [L.bq])
                q, k, v = qkv[:, :nq], qkv[:, nq : nq + nk], qkv[:, nq + nk :]
            else:
                q, k, v = be.norm_linears(x, L.attn_norm, cfg.norm_eps, [L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv])
            x = be.attention_output(
                q.reshape(n, cfg.n_head, cfg.head_dim),
                k.reshape(n, cfg.n_kv_heads, cfg.head_dim),
                v.reshape(n, cfg.n_kv_heads, cfg.head_dim),
                cache, i, start, cfg, L.wo, x, q_scale=q_scale,
            )  # fmt: skip
            if i == cfg.n_layer - 1:
                x = be.last_row(x)  # only the last position's logits are needed
            h = be.norm_swiglu(x, L.ffn_norm, cfg.norm_eps, L.w_gate, L.w_up, round_for=L.w_down)
            x = be.linear_add(h, L.w_down, x)
        (out,) = be.norm_linears(x, self.out_norm, cfg.norm_eps, [self.output], [None])
        return out

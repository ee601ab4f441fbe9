"""GPT-family decoders: GPT-2 and gpt-oss, following llama.cpp's graphs (llm_build_gpt2,
llm_build_openai_moe_iswa).

gpt2: learned position embeddings, LayerNorm with bias, fused QKV + bias, MHA, GELU MLP.
gpt-oss: RMSNorm, GQA with per-head attention sinks, sliding-window attention on even layers
(llama.cpp's swa pattern 2: layer il is SWA iff il % 2 == 0), YaRN NeoX RoPE, and a
mixture-of-experts FFN: router logits (+bias), top-k experts, softmax over the k chosen logits,
expert SwiGLU with clamp 7.0 and alpha 1.702, MXFP4 expert weights with biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.adapters.base import ModelAdapter, Progress
from worker.backends.base import KVCache, MoE
from worker.gguf_file import GGUFFile

OAI_SWIGLU_ALPHA = 1.702
OAI_SWIGLU_LIMIT = 7.0


@dataclass
class GPT2Layer:
    attn_norm: Any
    attn_norm_b: Any
    wqkv: Any
    bqkv: Any
    wo: Any
    bo: Any
    ffn_norm: Any
    ffn_norm_b: Any
    w_up: Any
    b_up: Any
    w_down: Any
    b_down: Any


@dataclass
class OSSLayer:
    attn_norm: Any
    wq: Any
    bq: Any
    wk: Any
    bk: Any
    wv: Any
    bv: Any
    wo: Any
    bo: Any
    sinks: Any
    post_norm: Any
    moe: MoE


class GPTAdapter(ModelAdapter):
    architectures = ("gpt2", "gpt-oss")

    def load(self, f: GGUFFile, progress: Progress | None = None) -> None:
        be, cfg = self.backend, self.cfg
        total = cfg.n_layer + 2
        self.tok_embd = be.embedding(f, "token_embd.weight")
        self.pos_embd = be.embedding(f, "position_embd.weight") if cfg.architecture == "gpt2" else None
        if progress:
            progress(1, total)
        self.layers: list[Any] = []
        for i in range(cfg.n_layer):
            p = f"blk.{i}."

            def m(n: str, p: str = p) -> Any:
                return be.matrix(f, p + n + ".weight")

            def vec(n: str, p: str = p) -> Any:
                return be.vector(f, p + n)

            if cfg.architecture == "gpt2":
                layer: Any = GPT2Layer(
                    attn_norm=vec("attn_norm.weight"), attn_norm_b=vec("attn_norm.bias"),
                    wqkv=m("attn_qkv"), bqkv=vec("attn_qkv.bias"),
                    wo=m("attn_output"), bo=vec("attn_output.bias"),
                    ffn_norm=vec("ffn_norm.weight"), ffn_norm_b=vec("ffn_norm.bias"),
                    w_up=m("ffn_up"), b_up=vec("ffn_up.bias"),
                    w_down=m("ffn_down"), b_down=vec("ffn_down.bias"),
                )  # fmt: skip
            else:
                layer = OSSLayer(
                    attn_norm=vec("attn_norm.weight"),
                    wq=m("attn_q"), bq=vec("attn_q.bias"),
                    wk=m("attn_k"), bk=vec("attn_k.bias"),
                    wv=m("attn_v"), bv=vec("attn_v.bias"),
                    wo=m("attn_output"), bo=vec("attn_output.bias"),
                    sinks=vec("attn_sinks.weight"),
                    post_norm=vec("post_attention_norm.weight"),
                    moe=MoE(
                        router=m("ffn_gate_inp"), router_b=vec("ffn_gate_inp.bias"),
                        gate=be.experts(f, p + "ffn_gate_exps.weight"), gate_b=vec("ffn_gate_exps.bias"),
                        up=be.experts(f, p + "ffn_up_exps.weight"), up_b=vec("ffn_up_exps.bias"),
                        down=be.experts(f, p + "ffn_down_exps.weight"), down_b=vec("ffn_down_exps.bias"),
                        n_used=cfg.n_expert_used, alpha=OAI_SWIGLU_ALPHA, limit=OAI_SWIGLU_LIMIT,
                    ),
                )  # fmt: skip
            self.layers.append(layer)
            if progress:
                progress(i + 2, total)
        self.out_norm = be.vector(f, "output_norm.weight")
        self.out_norm_b = be.vector(f, "output_norm.bias") if "output_norm.bias" in f.tensors else None
        self.output = be.matrix(f, "output.weight" if "output.weight" in f.tensors else "token_embd.weight")
        if progress:
            progress(total, total)

    @property
    def capturable(self) -> bool:  # type: ignore[override]
        # gpt-oss's one-token step reads its token and position from device memory on a backend
        # that routes experts on the device (CUDA); gpt2's learned positions are looked up
        # from the host.
        return self.cfg.architecture == "gpt-oss"

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        if self.cfg.architecture == "gpt2":
            return self._forward_gpt2(tokens, start, cache)
        return self.backend.prompt_forward(self, tokens, start, cache)

    def logits(self, tokens: np.ndarray, start: int, cache: KVCache) -> Any:
        if self.cfg.architecture == "gpt2":
            raise NotImplementedError("gpt2 runs forward() only")
        return self._logits_oss(tokens, start, cache)

    def _forward_gpt2(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        be, cfg = self.backend, self.cfg
        n = len(tokens)
        positions = np.arange(start, start + n)
        if start + n > cfg.context_length:
            raise ValueError(f"position {start + n} is past gpt2's {cfg.context_length} learned positions")
        x = be.add(be.embed(self.tok_embd, tokens), be.embed(self.pos_embd, positions))
        E, H, D = cfg.n_embd, cfg.n_head, cfg.head_dim
        for i, L in enumerate(self.layers):
            h = be.layer_norm(x, L.attn_norm, L.attn_norm_b, cfg.norm_eps)
            qkv = be.linear(h, L.wqkv, L.bqkv)
            q = qkv[:, :E].reshape(n, H, D)
            k = qkv[:, E : 2 * E].reshape(n, H, D)
            v = qkv[:, 2 * E :].reshape(n, H, D)
            attn = be.attention(q, k, v, cache, i, start)
            x = be.add(x, be.linear(attn, L.wo, L.bo))
            if i == cfg.n_layer - 1:
                x = be.last_row(x)
            h = be.layer_norm(x, L.ffn_norm, L.ffn_norm_b, cfg.norm_eps)
            x = be.add(x, be.linear(be.gelu(be.linear(h, L.w_up, L.b_up)), L.w_down, L.b_down))
        x = be.layer_norm(x, self.out_norm, self.out_norm_b, cfg.norm_eps)
        return be.to_host(be.linear(x, self.output))[0]

    def _logits_oss(self, tokens: np.ndarray, start: int, cache: KVCache) -> Any:
        be, cfg = self.backend, self.cfg
        n = len(tokens)
        H, KV, D = cfg.n_head, cfg.n_kv_heads, cfg.head_dim
        x = be.embed(self.tok_embd, tokens)
        for i, L in enumerate(self.layers):
            q, k, v = be.norm_linears(x, L.attn_norm, cfg.norm_eps, [L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv])
            attn = be.rope_attention(
                q.reshape(n, H, D), k.reshape(n, KV, D), v.reshape(n, KV, D), cache, i, start, cfg,
                kq_scale=1.0 / np.sqrt(cfg.rope_dim), sinks=L.sinks,
                window=cfg.sliding_window if i % 2 == 0 else 0,
            )  # fmt: skip
            x = be.linear_add(attn, L.wo, x, L.bo)
            if i == cfg.n_layer - 1:
                x = be.last_row(x)
            x = be.norm_moe(x, L.post_norm, cfg.norm_eps, L.moe)
        (out,) = be.norm_linears(x, self.out_norm, cfg.norm_eps, [self.output], [None])
        return out

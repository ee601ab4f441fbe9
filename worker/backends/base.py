"""The backend interface the model adapters are written against.

An adapter's forward pass is written once, in terms of these operations; the NumPy backend
(the reference, CPU) and the CuPy backend (CUDA) implement them. Arrays are the backend's own
(numpy.ndarray or cupy.ndarray); `to_host` brings one back as NumPy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.gguf_file import GGUFFile
from worker.model_config import ModelConfig

Array = Any


class OutOfDeviceMemory(MemoryError):
    """A job needed more device memory than the budget allows (maps to VRAM_OOM)."""

    def __init__(self, requested: int, in_use: int, limit: int) -> None:
        self.requested, self.in_use, self.limit = requested, in_use, limit
        super().__init__(f"out of device memory: requested {requested} B with {in_use} B in use, limit {limit} B")


@dataclass
class MoE:
    """A mixture-of-experts FFN (gpt-oss): the router [n_expert, E] and its bias; the experts'
    gate and up [n_expert][F, E] and down [n_expert][E, F] (Backend.experts), their biases
    [n_expert * out]; how many experts a token uses; the clamped SwiGLU's alpha and limit."""

    router: Any
    router_b: Any
    gate: Any
    gate_b: Any
    up: Any
    up_b: Any
    down: Any
    down_b: Any
    n_used: int
    alpha: float
    limit: float


@dataclass
class KVCache:
    """Per-job K and V buffers, [layer][position, kv_head, head_dim], sized for the job."""

    k: Array
    v: Array
    capacity: int
    nbytes: int


class Backend(ABC):
    name: str  # "cpu" or "cuda:N"

    # -- loading ---------------------------------------------------------------------------
    @abstractmethod
    def matrix(self, f: GGUFFile, name: str) -> Any:
        """A weight matrix [out, in] in the form linear() consumes."""

    @abstractmethod
    def vector(self, f: GGUFFile, name: str) -> Array:
        """A 1-D float32 tensor (norm weights, biases)."""

    @abstractmethod
    def embedding(self, f: GGUFFile, name: str) -> Any:
        """A token-embedding table whose rows embed() looks up."""

    # -- memory ----------------------------------------------------------------------------
    @abstractmethod
    def new_kv_cache(self, cfg: ModelConfig, capacity: int) -> KVCache:
        """Allocate a job's KV cache; raises OutOfDeviceMemory past the budget."""

    @abstractmethod
    def free_kv_cache(self, cache: KVCache) -> None: ...

    @abstractmethod
    def memory_in_use(self) -> int:
        """Bytes the backend holds now (weights + live job buffers)."""

    # -- compute ---------------------------------------------------------------------------
    @abstractmethod
    def embed(self, table: Any, ids: np.ndarray) -> Array: ...

    @abstractmethod
    def linear(self, x: Array, w: Any, bias: Array | None = None) -> Array:
        """x [n, in] @ w.T -> [n, out] (+ bias)."""

    @abstractmethod
    def rms_norm(self, x: Array, weight: Array, eps: float) -> Array: ...

    @abstractmethod
    def rope(self, x: Array, positions: np.ndarray, cfg: ModelConfig) -> Array:
        """Rotate x [n, heads, head_dim] in place of position; layout from cfg.rope_style."""

    @abstractmethod
    def attention(
        self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start: int
    ) -> Array:
        """Store k, v [n, kv_heads, d] at positions start..start+n, then causal GQA attention
        of q [n, heads, d] over positions 0..start+n; returns [n, heads * d]."""

    @abstractmethod
    def swiglu(self, gate: Array, up: Array) -> Array: ...

    @abstractmethod
    def add(self, a: Array, b: Array) -> Array: ...

    @abstractmethod
    def last_row(self, x: Array) -> Array: ...

    @abstractmethod
    def to_host(self, x: Array) -> np.ndarray: ...

    # -- operations of some architectures (gpt2, phi3, gpt-oss); optional per backend ----------
    def experts(self, f: GGUFFile, name: str) -> Any:
        """A 3-D expert tensor [n_expert, out, in] in the form linear_expert() consumes."""
        raise NotImplementedError("experts not implemented on this backend")

    def linear_expert(self, x: Array, w: Any, expert: int, bias: Array | None = None) -> Array:
        """x [n, in] @ w[expert].T -> [n, out] (+ bias[expert], bias being [n_expert, out])."""
        raise NotImplementedError("linear_expert not implemented on this backend")

    def layer_norm(self, x: Array, weight: Array, bias: Array, eps: float) -> Array:
        raise NotImplementedError("layer_norm not implemented on this backend")

    def gelu(self, x: Array) -> Array:
        """GELU, tanh approximation (as ggml computes it)."""
        raise NotImplementedError("gelu not implemented on this backend")

    def swiglu_oai(self, gate: Array, up: Array, alpha: float, limit: float) -> Array:
        """gpt-oss's clamped SwiGLU: g = min(gate, limit); g * sigmoid(alpha g) * (clamp(up) + 1)."""
        raise NotImplementedError("swiglu_oai not implemented on this backend")

    def scale(self, x: Array, s: float) -> Array:
        raise NotImplementedError("scale not implemented on this backend")

    def concat_rows(self, rows: list[Array]) -> Array:
        """Stack [1, d] rows into [n, d] (per-token MoE outputs)."""
        raise NotImplementedError("concat_rows not implemented on this backend")

    def attention_ext(
        self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start: int, *,
        kq_scale: float | None = None, sinks: Array | None = None, window: int = 0,
    ) -> Array:
        """attention() with options: kq_scale (default 1/sqrt(d)), per-head sink logits [heads]
        counted in the softmax denominator, and a sliding window (a key at position p is seen
        from query position t iff t - p < window; 0 = no window)."""
        raise NotImplementedError("attention_ext not implemented on this backend")

    # -- fused steps: what a decoder layer does between two reads of the residual stream ------
    # The defaults compose the primitive operations above, so the NumPy reference computes
    # exactly what it computed before these existed; the CUDA backend overrides them with one
    # kernel each for a single row (decode), which is where launch count decides speed.
    def norm_linears(
        self, x: Array, norm: Array, eps: float, ws: list[Any], biases: list[Array | None]
    ) -> list[Array]:
        """rms_norm(x) then one product per weight (Q, K, V; or the output head)."""
        h = self.rms_norm(x, norm, eps)
        return [self.linear(h, w, b) for w, b in zip(ws, biases, strict=True)]

    def linear_add(self, x: Array, w: Any, residual: Array, bias: Array | None = None) -> Array:
        """residual + (x @ w.T + bias)."""
        return self.add(residual, self.linear(x, w, bias))

    def norm_swiglu(
        self, x: Array, norm: Array, eps: float, w_gate: Any | None, w_up: Any, round_for: Any | None = None
    ) -> Array:
        """swiglu(gate, up) of rms_norm(x); w_gate None: w_up holds gate rows then up rows (phi3).
        round_for: the weight whose linear_add takes the result next (the down projection); a
        backend may prepare that product's input here. No effect on results."""
        h = self.rms_norm(x, norm, eps)
        if w_gate is None:
            gu = self.linear(h, w_up)
            half = gu.shape[-1] // 2
            return self.swiglu(gu[:, :half], gu[:, half:])
        return self.swiglu(self.linear(h, w_gate), self.linear(h, w_up))

    def rope_attention(
        self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start: int, cfg: ModelConfig,
        *, q_scale: float | None = None, kq_scale: float | None = None, sinks: Array | None = None,
        window: int = 0,
    ) -> Array:
        """RoPE on q and k at positions start.., then attention(). q_scale (phi3): Q is scaled
        after RoPE and the product Q.K is not scaled again (llama.cpp's order). kq_scale, sinks
        and window (gpt-oss) as attention_ext takes them."""
        positions = np.arange(start, start + q.shape[0])
        q = self.rope(q, positions, cfg)
        k = self.rope(k, positions, cfg)
        if q_scale is not None:
            q, kq_scale = self.scale(q, q_scale), 1.0
        if kq_scale is None and sinks is None and not window:
            return self.attention(q, k, v, cache, layer, start)
        return self.attention_ext(q, k, v, cache, layer, start, kq_scale=kq_scale, sinks=sinks, window=window)

    def attention_output(
        self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start: int, cfg: ModelConfig, wo: Any,
        residual: Array, *, q_scale: float | None = None, bias: Array | None = None,
    ) -> Array:
        """residual + rope_attention(...) @ wo.T (+ bias): a layer's attention through its output
        projection, which a backend may do in one step (the CUDA backend's decode)."""
        attn = self.rope_attention(q, k, v, cache, layer, start, cfg, q_scale=q_scale)
        return self.linear_add(attn, wo, residual, bias)

    def norm_moe(self, x: Array, norm: Array, eps: float, moe: MoE) -> Array:
        """x + the experts' output for rms_norm(x): per token, the moe.n_used experts of highest
        router logit (descending, the first index on ties, as ggml_argsort_top_k), weighted by
        the softmax of the chosen logits, each expert a clamped SwiGLU (swiglu_oai) with
        biases; the weighted sum adds in that order."""
        h = self.rms_norm(x, norm, eps)
        logits = self.to_host(self.linear(h, moe.router, moe.router_b))  # [n, n_expert], tiny
        rows = []
        for t in range(logits.shape[0]):
            chosen = np.argsort(-logits[t], kind="stable")[: moe.n_used]
            sel = logits[t, chosen]
            w = np.exp(sel - sel.max())
            w *= np.float32(1.0 / w.sum(dtype=np.float64))
            x_t = h[t : t + 1]
            acc = None
            for e, we in zip(chosen.tolist(), w.tolist(), strict=True):
                gate = self.linear_expert(x_t, moe.gate, e, moe.gate_b)
                up = self.linear_expert(x_t, moe.up, e, moe.up_b)
                act = self.swiglu_oai(gate, up, moe.alpha, moe.limit)
                y = self.scale(self.linear_expert(act, moe.down, e, moe.down_b), we)
                acc = y if acc is None else self.add(acc, y)
            rows.append(acc)
        return self.add(x, rows[0] if len(rows) == 1 else self.concat_rows(rows))

    def prepare(self, adapter: Any, max_len: int) -> None:
        """Called once the adapter's weights are loaded, with the longest context a job may
        have: a backend may set up per-model work ahead (the CUDA one captures prompt graphs)."""
        return None

    def prompt_forward(self, adapter: Any, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        """adapter.forward through adapter.logits: the last position's logits, on the host. A
        backend may replay a captured prefill instead (same kernels, same cache contents)."""
        return self.to_host(adapter.logits(tokens, start, cache))[0]

    def decoder(self, adapter: Any, cache: KVCache) -> Any:
        """The object that runs a job's one-token steps (worker.adapters.base.Decoder); a
        backend may return one that replays a captured step."""
        from worker.adapters.base import Decoder

        return Decoder(adapter, cache)

    # -- status (defaults for backends with no device) --------------------------------------
    def verify_residency(self) -> dict[str, Any]:
        """Check that every weight and KV-cache buffer is device memory. `resident` is the
        verdict /health reports; a backend with no device (the CPU reference) says False."""
        return {"resident": False, "device": self.name, "buffers": 0, "bytes": 0, "failures": []}

    def device_info(self) -> dict[str, Any]:
        """What /health reports about the device (`sm`, `cuda_runtime_version`, ...)."""
        return {"device": self.name}

    def close(self) -> None:
        """Release the backend's device memory (weights, caches, pools); no-op by default."""
        return None

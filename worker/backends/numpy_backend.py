"""The NumPy reference backend (CPU).

Weights are dequantized to float32 once at load, so decode is a BLAS matrix-vector product.
The arithmetic follows llama.cpp's CPU path where it changes results, so that logits agree
with llama.cpp to float32 round-off rather than to activation-quantization noise:
- the input of every matrix product is rounded the way ggml converts it to the weight's
  `vec_dot_type` (Q8_0 / Q8_1 / Q8_K / F16), including Q8_1's fp16-stored block sums;
- the KV cache is float16 (llama.cpp's default), Q is rounded to f16 before Q.K, and the
  softmax probabilities are rounded to f16 before P.V (ggml converts src1 to f16 for an
  f16 src0), the path llama.cpp takes with flash attention off;
- RoPE angles come from the same float32 recurrence ggml uses (theta *= theta_scale).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from worker.backends.base import Backend, KVCache, OutOfDeviceMemory
from worker.gguf_file import GGUFError, GGUFFile
from worker.model_config import ModelConfig
from worker.quants import dequantize, get_format, roundtrip_activations, roundtrip_q8_1


@dataclass
class Matrix:
    """A weight [out, in] as float32, with what linear() needs to mimic ggml's dot product."""

    w: np.ndarray  # float32 [out, in], C-contiguous
    act_type: str
    mins: np.ndarray | None = None  # [out, in/32] block minimums of Q4_1/Q5_1 (q8_1 dots)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + (self.mins.nbytes if self.mins is not None else 0)


@dataclass
class EmbeddingTable:
    """Kept quantized: rows are dequantized on lookup (a 151936-row table is 545 MB as f32)."""

    raw: np.ndarray  # bytes [rows, row_bytes]
    type_id: int
    n_embd: int

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes


class NumpyBackend(Backend):
    name = "cpu"

    def __init__(self, memory_limit: int | None = None) -> None:
        self.memory_limit = memory_limit
        self._weights_bytes = 0
        self._live_bytes = 0

    # -- memory ----------------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> None:
        in_use = self._weights_bytes + self._live_bytes
        if self.memory_limit is not None and in_use + nbytes > self.memory_limit:
            raise OutOfDeviceMemory(nbytes, in_use, self.memory_limit)
        self._live_bytes += nbytes

    def _account_weight(self, nbytes: int, what: str) -> None:
        self._weights_bytes += nbytes
        if self.memory_limit is not None and self._weights_bytes > self.memory_limit:
            raise OutOfDeviceMemory(nbytes, self._weights_bytes - nbytes, self.memory_limit)

    def memory_in_use(self) -> int:
        return self._weights_bytes + self._live_bytes

    def new_kv_cache(self, cfg: ModelConfig, capacity: int) -> KVCache:
        shape = (cfg.n_layer, capacity, cfg.n_kv_heads, cfg.head_dim)
        nbytes = 2 * int(np.prod(shape)) * 2
        self._reserve(nbytes)
        try:
            k = np.zeros(shape, dtype=np.float16)
            v = np.zeros(shape, dtype=np.float16)
        except MemoryError:
            self._live_bytes -= nbytes
            raise OutOfDeviceMemory(nbytes, self.memory_in_use(), self.memory_limit or -1) from None
        return KVCache(k=k, v=v, capacity=capacity, nbytes=nbytes)

    def free_kv_cache(self, cache: KVCache) -> None:
        if cache.nbytes:
            self._live_bytes -= cache.nbytes
            cache.nbytes = 0
        cache.k = cache.v = None

    # -- loading ---------------------------------------------------------------------------
    def matrix(self, f: GGUFFile, name: str) -> Matrix:
        info = f.tensors.get(name)
        if info is None:
            raise GGUFError(f.path, f"missing tensor {name!r}")
        if len(info.shape) != 2:
            raise GGUFError(f.path, f"tensor {name!r}: expected 2 dimensions, found shape {list(info.shape)}")
        n_in, n_out = info.shape
        fmt = get_format(info.type_id)
        w = dequantize(f.raw(name), info.type_id, (n_out, n_in))
        mins = None
        if fmt.act_type == "q8_1":
            # Block minimum m is the second fp16 of each Q4_1/Q5_1 block (after d).
            blocks = np.ascontiguousarray(f.raw(name)).reshape(-1).view(np.uint8)
            blocks = blocks.reshape(n_out, n_in // fmt.block_size, fmt.type_size)
            mins = np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float32)
        m = Matrix(w=w, act_type=fmt.act_type, mins=mins)
        _release_pages(f.raw(name))
        self._account_weight(m.nbytes, name)
        return m

    def vector(self, f: GGUFFile, name: str) -> np.ndarray:
        info = f.tensors.get(name)
        if info is None:
            raise GGUFError(f.path, f"missing tensor {name!r}")
        v = dequantize(f.raw(name), info.type_id, (info.n_elements,))
        _release_pages(f.raw(name))
        self._account_weight(v.nbytes, name)
        return v

    def embedding(self, f: GGUFFile, name: str) -> EmbeddingTable:
        info = f.tensors.get(name)
        if info is None:
            raise GGUFError(f.path, f"missing tensor {name!r}")
        n_embd, rows = info.shape
        raw = np.array(f.raw(name), copy=True).reshape(rows, -1).view(np.uint8)  # detach from the mmap
        _release_pages(f.raw(name))
        t = EmbeddingTable(raw=raw, type_id=info.type_id, n_embd=n_embd)
        self._account_weight(t.nbytes, name)
        return t

    # -- compute ---------------------------------------------------------------------------
    def embed(self, table: EmbeddingTable, ids: np.ndarray) -> np.ndarray:
        rows = table.raw[np.asarray(ids, dtype=np.int64)]
        return dequantize(rows, table.type_id, (len(ids), table.n_embd))

    def linear(self, x: np.ndarray, w: Matrix, bias: np.ndarray | None = None) -> np.ndarray:
        if w.mins is not None:
            xq, s16 = roundtrip_q8_1(x)
            y = xq @ w.w.T
            # W@xq used m*sum(xq) per block; ggml uses m*fp16(d*sum(q)). Add the difference.
            n = x.shape[0]
            exact = xq.reshape(n, -1, 32).sum(axis=-1, dtype=np.float32)
            y += (s16 - exact) @ w.mins.T
        else:
            y = roundtrip_activations(x, w.act_type) @ w.w.T
        if bias is not None:
            y += bias
        return y

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        # ggml sums squares in double, then scales in float32.
        mean = (x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True)
        scale = (1.0 / np.sqrt(mean.astype(np.float32) + np.float32(eps))).astype(np.float32)
        return (x * scale) * weight

    def rope(self, x: np.ndarray, positions: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        if cfg.rope_style == "none":
            return x
        if cfg.rope_yarn:
            cos, sin = _yarn_tables(positions, cfg)
        else:
            cos, sin = _rope_tables(positions, cfg.rope_dim, cfg.rope_base)
        n_rot = cfg.rope_dim
        out = x.copy()
        if cfg.rope_style == "neox":
            x0, x1 = x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]
            out[..., : n_rot // 2] = x0 * cos - x1 * sin
            out[..., n_rot // 2 : n_rot] = x0 * sin + x1 * cos
        else:
            x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
            out[..., 0:n_rot:2] = x0 * cos - x1 * sin
            out[..., 1:n_rot:2] = x0 * sin + x1 * cos
        return out

    def attention(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int, start: int
    ) -> np.ndarray:
        return self.attention_ext(q, k, v, cache, layer, start)

    # -- operations of gpt2 / phi3 / gpt-oss -------------------------------------------------
    def experts(self, f: GGUFFile, name: str) -> list[Matrix]:
        info = f.tensors.get(name)
        if info is None:
            raise GGUFError(f.path, f"missing tensor {name!r}")
        if len(info.shape) != 3:
            raise GGUFError(f.path, f"tensor {name!r}: expected 3 dimensions, found shape {list(info.shape)}")
        n_in, n_out, n_exp = info.shape
        fmt = get_format(info.type_id)
        if fmt.act_type == "q8_1":
            raise GGUFError(f.path, f"tensor {name!r}: {fmt.name} expert weights are not supported")
        raw = np.ascontiguousarray(f.raw(name)).reshape(-1).view(np.uint8).reshape(n_exp, -1)
        # One expert at a time: ggml's mul_mat_id dots each expert's rows like a 2-D weight.
        mats = [Matrix(w=dequantize(raw[e], info.type_id, (n_out, n_in)), act_type=fmt.act_type) for e in range(n_exp)]
        self._account_weight(sum(m.nbytes for m in mats), name)
        return mats

    def linear_expert(
        self, x: np.ndarray, w: list[Matrix], expert: int, bias: np.ndarray | None = None
    ) -> np.ndarray:
        return self.linear(x, w[expert], None if bias is None else bias.reshape(len(w), -1)[expert])

    def layer_norm(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        # ggml_norm: mean and variance summed in double, centred values and the scale in float32.
        mean = x.astype(np.float64).mean(axis=-1, keepdims=True).astype(np.float32)
        y = x - mean
        var = (y * y).astype(np.float64).mean(axis=-1, keepdims=True).astype(np.float32)
        scale = (np.float32(1) / np.sqrt(var + np.float32(eps))).astype(np.float32)
        return (y * scale) * weight + bias

    def gelu(self, x: np.ndarray) -> np.ndarray:
        # ggml's CPU GELU (GGML_GELU_FP16): a table of fp16(gelu_tanh(h)) indexed by fp16(x),
        # exact x outside (-10, 10).
        table = _gelu_f16_table()
        x = np.asarray(x, dtype=np.float32)
        y = table[x.astype(np.float16).view(np.uint16)]
        y = np.where(x <= -10, np.float32(0), y)
        return np.where(x >= 10, x, y).astype(np.float32)

    def swiglu_oai(self, gate: np.ndarray, up: np.ndarray, alpha: float, limit: float) -> np.ndarray:
        g = np.minimum(gate, np.float32(limit))
        u = np.clip(up, np.float32(-limit), np.float32(limit))
        return (g / (np.float32(1) + np.exp(np.float32(alpha) * -g))) * (u + np.float32(1))

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        return x * np.float32(s)

    def concat_rows(self, rows: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(rows, axis=0)

    def attention_ext(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int, start: int, *,
        kq_scale: float | None = None, sinks: np.ndarray | None = None, window: int = 0,
    ) -> np.ndarray:
        n, n_head, d = q.shape
        n_kv = k.shape[1]
        end = start + n
        if end > cache.capacity:
            raise ValueError(f"KV cache overflow: position {end} > capacity {cache.capacity}")
        cache.k[layer, start:end] = k
        cache.v[layer, start:end] = v
        keys = cache.k[layer, :end].astype(np.float32)
        vals = cache.v[layer, :end].astype(np.float32)
        group = n_head // n_kv
        qh = q.astype(np.float16).astype(np.float32).reshape(n, n_kv, group, d).transpose(1, 2, 0, 3)
        qh = qh.reshape(n_kv, group * n, d)
        scores = qh @ keys.transpose(1, 2, 0)  # [kv, group*n, T]
        scores *= np.float32(1.0 / np.sqrt(d) if kq_scale is None else kq_scale)
        qpos = np.tile(np.arange(start, end), group)
        kpos = np.arange(end)[None, :]
        masked = kpos > qpos[:, None]
        if window:
            masked |= qpos[:, None] - kpos >= window
        scores[:, masked] = -np.inf
        mx = scores.max(axis=-1, keepdims=True)
        if sinks is not None:
            # ggml_soft_max_add_sinks: the sink joins the max and the denominator, not the output.
            sink = np.repeat(sinks.astype(np.float32).reshape(n_kv, group), n, axis=1)[..., None]
            mx = np.maximum(mx, sink)
        p = np.exp(scores - mx)
        total = p.sum(axis=-1, keepdims=True, dtype=np.float64)
        if sinks is not None:
            total += np.exp(sink - mx).astype(np.float64)
        p *= (1.0 / total).astype(np.float32)
        p = p.astype(np.float16).astype(np.float32)
        out = p @ vals.transpose(1, 0, 2)
        out = out.reshape(n_kv, group, n, d).transpose(2, 0, 1, 3)
        return np.ascontiguousarray(out.reshape(n, n_head * d))

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return gate / (np.float32(1) + np.exp(-gate)) * up

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def last_row(self, x: np.ndarray) -> np.ndarray:
        return x[-1:]

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return x


def _release_pages(view: np.ndarray) -> None:
    """Drop the file pages under a tensor's mapped view from this process once it is copied.

    Without this every page of the GGUF file stays resident until the file is closed after load,
    which adds the whole file (491 MB for Qwen) to peak RSS on top of the float32 weights. The
    pages stay in the page cache; touching the view again faults them back in."""
    base = view
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(base, "madvise") or view.nbytes == 0:
        return
    start = view.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the view only
    hi = (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _rope_tables(positions: np.ndarray, n_rot: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [n, 1, n_rot/2], angles from ggml's float32 recurrence theta_{i+1} = theta_i * s."""
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    theta = np.asarray(positions, dtype=np.float32).copy()
    angles = np.empty((len(theta), n_rot // 2), dtype=np.float32)
    for i in range(n_rot // 2):
        angles[:, i] = theta
        theta = theta * theta_scale
    return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]


def _yarn_tables(positions: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """ggml's rope_yarn: interpolated/extrapolated angle mix per dimension, magnitude-scaled."""
    n_rot = cfg.rope_dim
    fs, ext = np.float32(cfg.rope_freq_scale), np.float32(cfg.rope_ext_factor)

    def corr_dim(n_rot_beta: float) -> float:
        return n_rot * np.log(np.float32(cfg.rope_n_ctx_orig / (n_rot_beta * 2 * np.pi))) / (
            2 * np.log(np.float32(cfg.rope_base))
        )

    low = max(0.0, float(np.floor(np.float32(corr_dim(cfg.yarn_beta_fast)))))
    high = min(n_rot - 1.0, float(np.ceil(np.float32(corr_dim(cfg.yarn_beta_slow)))))
    i = np.arange(n_rot // 2, dtype=np.float32)
    y = (i - np.float32(low)) / np.float32(max(0.001, high - low))
    ramp_mix = (np.float32(1) - np.minimum(np.float32(1), np.maximum(np.float32(0), y))) * ext
    mscale = np.float32(cfg.rope_attn_factor)
    if ext != 0:
        mscale = np.float32(mscale * (np.float32(1) + np.float32(0.1) * np.log(np.float32(1) / fs)))
    theta_scale = np.float32(cfg.rope_base) ** np.float32(-2.0 / n_rot)
    theta = np.asarray(positions, dtype=np.float32).copy()
    extrap = np.empty((len(theta), n_rot // 2), dtype=np.float32)
    for k in range(n_rot // 2):
        extrap[:, k] = theta
        theta = theta * theta_scale
    interp = fs * extrap
    ang = interp * (np.float32(1) - ramp_mix) + extrap * ramp_mix
    return (np.cos(ang) * mscale)[:, None, :], (np.sin(ang) * mscale)[:, None, :]


_GELU_TABLE: list[np.ndarray] = []


def _gelu_f16_table() -> np.ndarray:
    if not _GELU_TABLE:
        h = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            g = np.float32(0.5) * h * (np.float32(1) + np.tanh(
                np.float32(0.7978845608028654) * h * (np.float32(1) + np.float32(0.044715) * h * h)))
        _GELU_TABLE.append(g.astype(np.float16).astype(np.float32))
    return _GELU_TABLE[0]

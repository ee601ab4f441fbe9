"""Deterministic GGUF fixtures with real model shapes and random weights (for GPU checks).

Real model files are too big to carry to the GPU machine, so the CUDA checks build these
there from a seed (same seed, same bytes):

- `smollm2-shape.gguf`: arch llama, SmolLM2-135M's shapes (30 layers, 576 wide, 9 heads /
  3 KV heads, ff 1536, vocab 49152), Q4_1 weights, Q8_0 token embedding (tied output head),
  F32 norms.
- `qwen25-shape.gguf`: arch qwen2, Qwen2.5-0.5B's shapes (24 layers, 896 wide, 14 heads / 2
  KV heads, ff 4864, vocab 151936) and its Q4_K_M mix: Q5_0 for the 896-long rows, Q8_0
  attn_v and output, ffn_down (row length 4864 = 19 * 256) Q6_K on llama.cpp's
  "use_more_bits" layers and Q4_K on the others, Q5_0 token_embd, F32 norms and q/k/v biases.

Scales: layer weights N(0, 0.02) keep activations O(1) through the layers (norm weights 1).
The output head (Qwen's output.weight, SmolLM2's tied embedding) is drawn wider, N(0, 0.1),
so logits spread with std ~2-3 as a trained model's do (N(0, 0.02) would give ~0.5), and in
the tied model the current token's own embedding stands out, giving a clear top-1. Note that
the head's scale cannot change the ratio of the top-2 gap to the noise (both scale with it):
how often two correct implementations pick different greedy tokens is set by the quantized
model's noise floor, which bench/gpu_check.py measures next to the CUDA-vs-NumPy numbers.

    python tests/cuda/make_fixture.py OUTDIR [--tiny] [--seed N]

Also holds helpers the CUDA tests share: `quantize()` (float32 rows -> GGUF block bytes) and
`RawTensors` (a duck-typed GGUFFile over in-memory tensors, for loading single tensors into
a backend).
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.gguf_file import TensorInfo  # noqa: E402
from worker.quants import get_format, quantize_q4_k, quantize_q5_k, quantize_q6_k  # noqa: E402

K_WRITERS = {int(T.Q4_K): quantize_q4_k, int(T.Q5_K): quantize_q5_k, int(T.Q6_K): quantize_q6_k}


def quantize(x: np.ndarray, type_id: int) -> np.ndarray:
    """float32 [rows, k] -> uint8 [rows, row_bytes] in GGML type `type_id`'s block format."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = x.shape[0]
    if type_id == int(T.F32):
        return x.view(np.uint8).reshape(rows, -1)
    if type_id in K_WRITERS:
        return K_WRITERS[type_id](x)
    q = gguf.quants.quantize(x, T(type_id))
    return np.ascontiguousarray(q).view(np.uint8).reshape(rows, -1)


class RawTensors:
    """Enough of GGUFFile (path, tensors, raw) for Backend.matrix/vector/embedding."""

    def __init__(self) -> None:
        self.path = "<memory>"
        self.tensors: dict[str, TensorInfo] = {}
        self._raw: dict[str, np.ndarray] = {}

    def add(self, name: str, raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> None:
        """shape in NumPy order (rows, row length); raw = the tensor's bytes."""
        fmt = get_format(type_id)
        n = int(np.prod(shape))
        self.tensors[name] = TensorInfo(
            name=name,
            type_id=int(type_id),
            type_name=T(type_id).name,
            shape=tuple(int(d) for d in reversed(shape)),
            n_elements=n,
            n_bytes=n // fmt.block_size * fmt.type_size,
            offset=0,
        )
        self._raw[name] = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)

    def add_float(self, name: str, x: np.ndarray, type_id: int) -> np.ndarray:
        raw = quantize(x.reshape(-1, x.shape[-1]), type_id)
        self.add(name, raw, type_id, x.shape)
        return raw

    def raw(self, name: str) -> np.ndarray:
        return self._raw[name]


@dataclass
class Spec:
    arch: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_kv: int
    n_ff: int
    vocab: int
    ctx: int
    rope_base: float
    eps: float
    file_type: int
    types: dict[str, int] = field(default_factory=dict)  # role -> type id
    tied: bool = False
    qkv_bias: bool = False
    w_scale: float = 0.02
    out_scale: float = 0.1


def smollm2_spec(tiny: bool = False) -> Spec:
    dims = dict(n_layer=30, n_embd=576, n_head=9, n_kv=3, n_ff=1536, vocab=49152)
    if tiny:
        dims = dict(n_layer=2, n_embd=128, n_head=4, n_kv=2, n_ff=256, vocab=512)
    q41, q80 = int(T.Q4_1), int(T.Q8_0)
    return Spec(
        arch="llama",
        name="SmolLM2-135M-shape (random)" + (" tiny" if tiny else ""),
        ctx=8192,
        rope_base=100000.0,
        eps=1e-5,
        file_type=int(gguf.LlamaFileType.MOSTLY_Q4_1),
        types={"token_embd": q80, "attn": q41, "attn_v": q41, "ffn": q41, "ffn_down": q41},
        tied=True,
        **dims,
    )


def qwen_spec(tiny: bool = False) -> Spec:
    dims = dict(n_layer=24, n_embd=896, n_head=14, n_kv=2, n_ff=4864, vocab=151936)
    if tiny:
        dims = dict(n_layer=3, n_embd=128, n_head=4, n_kv=2, n_ff=512, vocab=1000)
    q50, q80 = int(T.Q5_0), int(T.Q8_0)
    return Spec(
        arch="qwen2",
        name="Qwen2.5-0.5B-shape Q4_K_M mix (random)" + (" tiny" if tiny else ""),
        ctx=32768,
        rope_base=1000000.0,
        eps=1e-6,
        file_type=int(gguf.LlamaFileType.MOSTLY_Q4_K_M),
        types={"token_embd": q50, "attn": q50, "attn_v": q80, "ffn": q50, "output": q80},
        qkv_bias=True,
        **dims,
    )


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers whose ffn_down gets Q6_K in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(seed: int, name: str, shape: tuple[int, ...], scale: float) -> np.ndarray:
    x = _rng(seed, name).standard_normal(shape, dtype=np.float32)
    x *= np.float32(scale)
    return x


def tensor_plan(spec: Spec) -> list[tuple[str, tuple[int, ...], int, float]]:
    """(name, numpy shape (rows, row length), type id, scale) for every tensor; scale 0 = ones."""
    f32 = int(T.F32)
    d, hd = spec.n_embd, spec.n_embd // spec.n_head
    kv = spec.n_kv * hd
    emb_scale = spec.out_scale if spec.tied else spec.w_scale
    plan = [("token_embd.weight", (spec.vocab, d), spec.types["token_embd"], emb_scale)]
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        down = spec.types.get("ffn_down")
        if down is None:
            down = int(T.Q6_K) if use_more_bits(i, spec.n_layer) else int(T.Q4_K)
        plan += [
            (p + "attn_norm.weight", (d,), f32, 0.0),
            (p + "attn_q.weight", (d, d), spec.types["attn"], spec.w_scale),
            (p + "attn_k.weight", (kv, d), spec.types["attn"], spec.w_scale),
            (p + "attn_v.weight", (kv, d), spec.types["attn_v"], spec.w_scale),
            (p + "attn_output.weight", (d, d), spec.types["attn"], spec.w_scale),
        ]
        if spec.qkv_bias:
            plan += [
                (p + "attn_q.bias", (d,), f32, spec.w_scale),
                (p + "attn_k.bias", (kv,), f32, spec.w_scale),
                (p + "attn_v.bias", (kv,), f32, spec.w_scale),
            ]
        plan += [
            (p + "ffn_norm.weight", (d,), f32, 0.0),
            (p + "ffn_gate.weight", (spec.n_ff, d), spec.types["ffn"], spec.w_scale),
            (p + "ffn_up.weight", (spec.n_ff, d), spec.types["ffn"], spec.w_scale),
            (p + "ffn_down.weight", (d, spec.n_ff), down, spec.w_scale),
        ]
    plan.append(("output_norm.weight", (d,), f32, 0.0))
    if not spec.tied:
        plan.append(("output.weight", (spec.vocab, d), spec.types["output"], spec.out_scale))
    return plan


def build(spec: Spec, path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), spec.arch)
    w.add_name(spec.name)
    w.add_file_type(spec.file_type)
    w.add_block_count(spec.n_layer)
    w.add_context_length(spec.ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_kv)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.eps)
    w.add_vocab_size(spec.vocab)
    for name, shape, type_id, scale in tensor_plan(spec):
        if scale == 0.0:
            w.add_tensor(name, np.ones(shape, dtype=np.float32))
        elif type_id == int(T.F32):
            w.add_tensor(name, _normal(seed, name, shape, scale))
        else:
            raw = quantize(_normal(seed, name, shape, scale), type_id)
            w.add_tensor(name, raw, raw_dtype=T(type_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


FIXTURES = {"smollm2-shape": smollm2_spec, "qwen25-shape": qwen_spec}


def build_all(out_dir: str | Path, tiny: bool = False, seed: int = 0) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {}
    for name, spec_fn in FIXTURES.items():
        fname = f"{name}{'-tiny' if tiny else ''}.gguf"
        p = out_dir / fname
        if not p.exists():
            t0 = time.perf_counter()
            build(spec_fn(tiny), p.with_suffix(".tmp"), seed).rename(p)
            print(f"built {p} ({p.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
        paths[name] = p
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tiny", action="store_true", help="small shapes (for unit tests)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build_all(args.out_dir, args.tiny, args.seed)


if __name__ == "__main__":
    main()

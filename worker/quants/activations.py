"""Emulate ggml's CPU conversion of activations to a weight's vec_dot_type.

ggml's CPU matmul quantizes the input vector to the weight's `vec_dot_type` and then does an
integer (or f16/bf16) dot product. A float reference matches llama.cpp's logits far better if
it dots dequantized weights with dequant(quant(x)) instead of x; this module computes that.

Sources (ggml/src/ggml-quants.c, ggml-cpu/arch/x86/quants.c, ggml-impl.h):
- q8_0 / q8_1: amax = max|x| per 32-block, d = amax/127, q = round(x * id), d stored as fp16.
  quantize_row_q8_0_ref uses id = 1/d and roundf (half away from zero); the AVX/AVX2 path
  that x86 builds actually run uses id = 127/amax and _mm256_round_ps(_MM_ROUND_NEAREST)
  (half to even). We follow the AVX2 path for both. The two agree except when x*id lands
  within an ulp of a .5 tie, which random data essentially never does.
- q8_1 also stores s = fp16(d * sum(q)) with the *f32* d (not the fp16-rounded one) times
  the integer sum; both quantize_row_q8_1_ref and the AVX2 path compute it that way.
- q8_K (quantize_row_q8_K_ref, which x86 also uses): signed max-|x| `max` per 256-block,
  iscale = -127/max, q = min(127, nearest_int(iscale*x)) (nearest_int is half-to-even),
  d = 1/iscale kept as f32.
- bf16: ggml_compute_fp32_to_bf16, round to nearest even, NaNs quieted.
"""

from __future__ import annotations

import numpy as np

from .base import ACT_TYPES

ACT_BLOCK_SIZE: dict[str, int] = {"f32": 1, "f16": 1, "bf16": 1, "q8_0": 32, "q8_1": 32, "q8_k": 256}


def _blocks(x: np.ndarray, act_type: str) -> np.ndarray:
    """float32 (..., k) -> (..., k // qk, qk), checking k."""
    qk = ACT_BLOCK_SIZE[act_type]
    if x.ndim == 0 or x.shape[-1] % qk:
        raise ValueError(
            f"activation row length {x.shape[-1] if x.ndim else 0} is not a multiple of "
            f"the {act_type} block size {qk}"
        )
    return x.reshape(*x.shape[:-1], x.shape[-1] // qk, qk)


def _q8_32(x: np.ndarray, act_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Shared q8_0/q8_1 step: (q float32 (..., nb, 32), f32 d (..., nb, 1)) as in the AVX2 path."""
    blocks = _blocks(x, act_type)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0))
    # np.rint is half-to-even like _mm256_round_ps; the scalar ref's roundf would round ties away.
    # + 0 turns rint's -0.0 into the +0.0 an int8 zero converts to.
    return np.rint(blocks * inv) + np.float32(0), d


def _fp16_round(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float32)


def roundtrip_q8_0(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    q, d = _q8_32(x, "q8_0")
    return (_fp16_round(d) * q).reshape(x.shape)


def roundtrip_q8_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x float32 (..., k) -> (xq, s): xq = fp16(d) * q, shape (..., k); s = fp16(d * sum(q)) as
    float32, shape (..., k // 32).

    A Q4_1/Q5_1 block dot is d_w*d_x*sum(q_w*q_x) + m_w*s_x, i.e. (W_scaled @ xq) + (M @ s) with
    the fp16-stored s, which is not exactly sum(xq) (it uses the unrounded d)."""
    x = np.asarray(x, dtype=np.float32)
    q, d = _q8_32(x, "q8_1")
    s = _fp16_round(d * q.sum(axis=-1, keepdims=True))  # q sums are small integers: exact in f32
    return (_fp16_round(d) * q).reshape(x.shape), s[..., 0]


def roundtrip_q8_k(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    blocks = _blocks(x, "q8_k")
    # argmax returns the first of equal |x|, as ggml's strict `ax > amax` scan does.
    imax = np.abs(blocks).argmax(axis=-1)[..., None]
    vmax = np.take_along_axis(blocks, imax, axis=-1)
    nonzero = vmax != 0
    with np.errstate(divide="ignore"):
        iscale = np.where(nonzero, np.float32(-127) / vmax, np.float32(0))
        d = np.where(nonzero, np.float32(1) / iscale, np.float32(0))
    q = np.minimum(np.rint(blocks * iscale), np.float32(127)) + np.float32(0)  # int8 zeros are +0.0
    return (d * q).reshape(x.shape)


def roundtrip_bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16  # uint32 wraparound only hits NaNs, masked below
    bits = np.where(is_nan, (u >> 16) | 64, rounded).astype(np.uint32) << 16
    return bits.view(np.float32)


def roundtrip_activations(x: np.ndarray, act_type: str) -> np.ndarray:
    """float32 (..., k) -> float32 (..., k): the values ggml's dot product effectively uses after
    converting x to `act_type` (a QuantFormat.act_type). k must be a multiple of the block size."""
    x = np.asarray(x, dtype=np.float32)
    if act_type == "f32":
        return x
    if act_type == "f16":
        return _fp16_round(x)
    if act_type == "bf16":
        return roundtrip_bf16(x)
    if act_type == "q8_0":
        return roundtrip_q8_0(x)
    if act_type == "q8_1":
        return roundtrip_q8_1(x)[0]
    if act_type == "q8_k":
        return roundtrip_q8_k(x)
    raise ValueError(f"unknown activation type {act_type!r}; expected one of {', '.join(ACT_TYPES)}")

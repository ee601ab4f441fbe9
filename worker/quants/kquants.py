"""K-quants: 256-element super-blocks with per-sub-block scales (Q4_K, Q5_K, Q6_K).

Block layouts (ggml-common.h), little-endian:
  Q4_K (144 B): d:f16 | dmin:f16 | scales[12] | qs[128]
  Q5_K (176 B): d:f16 | dmin:f16 | scales[12] | qh[32] | qs[128]
  Q6_K (210 B): ql[128] | qh[64] | scales:i8[16] | d:f16

Q4_K/Q5_K: 8 sub-blocks of 32, each with a 6-bit scale sc and 6-bit min m packed into
`scales` (get_scale_min_k4):  sub-block j < 4: sc = s[j] & 63, m = s[j+4] & 63;
j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4, m = (s[j+4] >> 4) | (s[j] >> 6) << 4.
x = (d * sc) * q - (dmin * m), both products in f32 as ggml does.
qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles, 2c+1 in high nibbles.
Q5_K's fifth bit of element l of sub-block j is bit j of qh[l].

Q6_K: 16 sub-blocks of 16 with int8 scales; x = (d * sc) * (q - 32), q 6-bit.
Each 128-element half h uses ql[64h:64h+64], qh[32h:32h+32]; for l < 32:
  q[l]    = ql[l] & 15      | (qh[l] >> 0 & 3) << 4
  q[l+32] = ql[l+32] & 15   | (qh[l] >> 2 & 3) << 4
  q[l+64] = ql[l] >> 4      | (qh[l] >> 4 & 3) << 4
  q[l+96] = ql[l+32] >> 4   | (qh[l] >> 6 & 3) << 4
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, check_blocks, f16_field, nibbles

QK_K = 256
Q4_K_SIZE = 144
Q5_K_SIZE = 176
Q6_K_SIZE = 210

_QH_BITS = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
_Q6_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


# ---------------------------------------------------------------- dequantizers


def unpack_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> 6-bit (sc, m), each uint8 (n, 8)."""
    s = scales.reshape(-1, 3, 4)
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)], axis=1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, m


def pack_scale_min(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Inverse of unpack_scale_min: 6-bit (sc, m) uint8 (n, 8) -> (n, 12)."""
    lo_sc, hi_sc = sc[:, :4], sc[:, 4:]
    lo_m, hi_m = m[:, :4], m[:, 4:]
    a = lo_sc | ((hi_sc >> 4) << 6)
    b = lo_m | ((hi_m >> 4) << 6)
    c = (hi_sc & 15) | ((hi_m & 15) << 4)
    return np.concatenate([a, b, c], axis=1).astype(np.uint8)


def _scales_mins(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sub-block float32 (d*sc, dmin*m), shape (n, 8, 1)."""
    d, dmin = f16_field(blocks, 0), f16_field(blocks, 2)
    sc, m = unpack_scale_min(blocks[:, 4:16])
    return (d * sc.astype(np.float32))[:, :, None], (dmin * m.astype(np.float32))[:, :, None]


def _low_nibbles_k(qs: np.ndarray) -> np.ndarray:
    """(n, 128) -> (n, 8, 32): 4 chunks of 32 bytes, low then high nibbles per chunk."""
    return nibbles(qs.reshape(-1, 4, 32)).reshape(-1, 8, 32)


def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, Q4_K_SIZE)
    dl, ml = _scales_mins(blocks)
    q = _low_nibbles_k(blocks[:, 16:144]).astype(np.float32)
    return (dl * q - ml).reshape(-1, QK_K)


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, Q5_K_SIZE)
    dl, ml = _scales_mins(blocks)
    qh = blocks[:, 16:48]
    high = ((qh[:, None, :] >> _QH_BITS) & 1) << 4  # (n, 8, 32)
    q = (_low_nibbles_k(blocks[:, 48:176]) | high).astype(np.float32)
    return (dl * q - ml).reshape(-1, QK_K)


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, Q6_K_SIZE)
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # (half, l-range [0,32) / [32,64), l)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    low = np.concatenate([ql & 15, ql >> 4], axis=2)  # (n, 2, 4, 32) in element order
    high = ((qh >> _Q6_SHIFTS) & 3) << 4
    q = ((low | high).astype(np.int8) - np.int8(32)).astype(np.float32).reshape(-1, 16, 16)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = f16_field(blocks, 208)
    return ((d * sc)[:, :, None] * q).reshape(-1, QK_K)


# ggml-cpu.c: all K-quants dot against q8_K activations.
Q4_K = QuantFormat("Q4_K", int(T.Q4_K), QK_K, Q4_K_SIZE, dequantize_q4_k, "q8_k")
Q5_K = QuantFormat("Q5_K", int(T.Q5_K), QK_K, Q5_K_SIZE, dequantize_q5_k, "q8_k")
Q6_K = QuantFormat("Q6_K", int(T.Q6_K), QK_K, Q6_K_SIZE, dequantize_q6_k, "q8_k")

FORMATS = (Q4_K, Q5_K, Q6_K)


# ---------------------------------------------------------------- writers
# For fixture files: deterministic, valid blocks, error close to ggml's reference
# quantizers but without their iterative scale search (make_qkx2_quants / make_qx_quants).

_WRITER_CHUNK_ELEMS = 1 << 20  # bound the temporaries to a few MiB per chunk


def _as_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % QK_K:
        raise ValueError(f"expected float32 (n_rows, k) with k a multiple of {QK_K}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite values")
    return x


def _rint_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """round(num / den) (half-even, as ggml's nearest_int), 0 where den == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, np.rint(num / den), 0).astype(np.float32)


def _super_scale(values: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize non-negative per-sub-block values (nb, ns) to `qmax`-level codes under one fp16
    super-scale: returns (codes uint8 (nb, ns), fp16 scale (nb, 1))."""
    vmax = values.max(axis=1, keepdims=True)
    codes = np.clip(_rint_div(values * np.float32(qmax), vmax), 0, qmax).astype(np.uint8)
    return codes, (vmax / np.float32(qmax)).astype(np.float16)


def _quantize_offset_k(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared Q4_K/Q5_K math on x (nb, 256): returns (header bytes (nb, 16), q uint8 (nb, 8, 32))."""
    sub = x.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0)  # ggml keeps the min <= 0 so m stays unsigned
    hi = sub.max(axis=2)
    sc, d16 = _super_scale((hi - lo) / np.float32(nmax), 63)
    m, dmin16 = _super_scale(-lo, 63)
    # Re-derive q from the scales as stored (ggml does the same), so rounding of d/sc is absorbed.
    dl = (d16.astype(np.float32) * sc.astype(np.float32))[:, :, None]
    ml = (dmin16.astype(np.float32) * m.astype(np.float32))[:, :, None]
    q = np.clip(_rint_div(sub + ml, dl), 0, nmax).astype(np.uint8)
    header = np.concatenate([d16.view(np.uint8), dmin16.view(np.uint8), pack_scale_min(sc, m)], axis=1)
    return header, q


def _pack_low_nibbles_k(q: np.ndarray) -> np.ndarray:
    """q (nb, 8, 32) -> qs (nb, 128): inverse of _low_nibbles_k."""
    q = (q & 15).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _q4_k_blocks(x: np.ndarray) -> np.ndarray:
    header, q = _quantize_offset_k(x, 15)
    return np.concatenate([header, _pack_low_nibbles_k(q)], axis=1)


def _q5_k_blocks(x: np.ndarray) -> np.ndarray:
    header, q = _quantize_offset_k(x, 31)
    qh = ((q >> 4) << _QH_BITS).sum(axis=1, dtype=np.uint8)  # bit j of qh[l] <- sub-block j
    return np.concatenate([header, qh, _pack_low_nibbles_k(q)], axis=1)


def _q6_k_blocks(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    # Signed max-|x| per sub-block mapped to -32 (make_qx_quants' starting point), so the
    # largest value uses the wider negative side of [-32, 31].
    imax = np.abs(sub).argmax(axis=2)[:, :, None]
    smax = np.take_along_axis(sub, imax, axis=2)[:, :, 0]
    scale = smax / np.float32(-32)  # (nb, 16), signed
    # Super-scale: the signed largest-|scale| maps to -128, codes clipped to int8 (ggml: MIN(127, l)).
    jmax = np.abs(scale).argmax(axis=1)[:, None]
    big = np.take_along_axis(scale, jmax, axis=1)
    sc = np.clip(_rint_div(scale * np.float32(-128), big), -128, 127).astype(np.int8)
    d16 = (big / np.float32(-128)).astype(np.float16)
    dl = (d16.astype(np.float32) * sc.astype(np.float32))[:, :, None]
    q = (np.clip(_rint_div(sub, dl), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    ql = (q[:, :, 0:2] & 15) | ((q[:, :, 2:4] & 15) << 4)  # (nb, 2, 2, 32)
    qh = ((q >> 4) << _Q6_SHIFTS).sum(axis=2, dtype=np.uint8)  # (nb, 2, 32)
    return np.concatenate(
        [ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8), d16.view(np.uint8)], axis=1
    )


def _quantize_rows(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], type_size: int) -> np.ndarray:
    x = _as_rows(x)
    n_rows, k = x.shape
    blocks = x.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    step = max(1, _WRITER_CHUNK_ELEMS // QK_K)
    for start in range(0, blocks.shape[0], step):
        out[start : start + step] = fn(blocks[start : start + step])
    return out.reshape(n_rows, k // QK_K * type_size)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 (n_rows, k) -> Q4_K bytes uint8 (n_rows, k // 256 * 144)."""
    return _quantize_rows(x, _q4_k_blocks, Q4_K_SIZE)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 (n_rows, k) -> Q5_K bytes uint8 (n_rows, k // 256 * 176)."""
    return _quantize_rows(x, _q5_k_blocks, Q5_K_SIZE)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 (n_rows, k) -> Q6_K bytes uint8 (n_rows, k // 256 * 210)."""
    return _quantize_rows(x, _q6_k_blocks, Q6_K_SIZE)

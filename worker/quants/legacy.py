"""ggml's original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Block layouts (ggml-common.h), all little-endian, fp16 = IEEE half:
  Q4_0 (18 B): d:f16 | qs[16]               x = d * (q - 8)
  Q4_1 (20 B): d:f16 | m:f16 | qs[16]       x = d * q + m
  Q5_0 (22 B): d:f16 | qh:u32 | qs[16]      x = d * (q - 16)
  Q5_1 (24 B): d:f16 | m:f16 | qh:u32 | qs[16]   x = d * q + m
  Q8_0 (34 B): d:f16 | qs:i8[32]            x = d * q
qs byte j holds element j in its low nibble and element j + 16 in its high nibble;
bit j of qh is the fifth bit of element j.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, check_blocks, f16_field, nibbles

QK = 32
_BIT_SHIFTS = np.arange(QK, dtype=np.uint32)


def _high_bits(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The u32 qh at `offset`, expanded to each element's fifth bit (value 0 or 16), uint8 (n, 32)."""
    qh = blocks[:, offset : offset + 4].view("<u4")  # (n, 1)
    return (((qh >> _BIT_SHIFTS) & 1) << 4).astype(np.uint8)


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 18)
    d = f16_field(blocks, 0)
    q = nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 20)
    d, m = f16_field(blocks, 0), f16_field(blocks, 2)
    return d * nibbles(blocks[:, 4:20]).astype(np.float32) + m


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 22)
    d = f16_field(blocks, 0)
    q = (nibbles(blocks[:, 6:22]) | _high_bits(blocks, 2)).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 24)
    d, m = f16_field(blocks, 0), f16_field(blocks, 2)
    q = nibbles(blocks[:, 8:24]) | _high_bits(blocks, 4)
    return d * q.astype(np.float32) + m


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 34)
    d = f16_field(blocks, 0)
    return d * blocks[:, 2:34].view(np.int8).astype(np.float32)


# vec_dot_type per ggml-cpu.c's type_traits_cpu: symmetric formats pair with q8_0,
# the offset (min) formats with q8_1, whose per-block sum s carries the m term.
Q4_0 = QuantFormat("Q4_0", int(T.Q4_0), QK, 18, dequantize_q4_0, "q8_0")
Q4_1 = QuantFormat("Q4_1", int(T.Q4_1), QK, 20, dequantize_q4_1, "q8_1")
Q5_0 = QuantFormat("Q5_0", int(T.Q5_0), QK, 22, dequantize_q5_0, "q8_0")
Q5_1 = QuantFormat("Q5_1", int(T.Q5_1), QK, 24, dequantize_q5_1, "q8_1")
Q8_0 = QuantFormat("Q8_0", int(T.Q8_0), QK, 34, dequantize_q8_0, "q8_0")

FORMATS = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)

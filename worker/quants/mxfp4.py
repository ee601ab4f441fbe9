"""MXFP4 (OCP microscaling FP4): 32 E2M1 values sharing one E8M0 exponent.

Block layout (17 B): e:u8 | qs[16]; qs byte j holds element j (low nibble) and j + 16 (high).
ggml stores the E2M1 values doubled as integers (kvalues_mxfp4) and halves the scale to
compensate: x = kvalues_mxfp4[q] * 2^(e - 128)  (GGML_E8M0_TO_FP32_HALF).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, check_blocks, nibbles

QK = 32
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)
# 2^(e - 128) for every e; e < 2 lands on f32 subnormals, which ldexp represents exactly.
E8M0_HALF = np.ldexp(np.float32(1.0), np.arange(256) - 128).astype(np.float32)


def dequantize_mxfp4(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 17)
    d = E8M0_HALF[blocks[:, 0:1]]
    return d * KVALUES[nibbles(blocks[:, 1:17])]


# ggml-cpu.c: MXFP4's vec_dot is ggml_vec_dot_mxfp4_q8_0, vec_dot_type GGML_TYPE_Q8_0.
MXFP4 = QuantFormat("MXFP4", int(T.MXFP4), QK, 17, dequantize_mxfp4, "q8_0")

FORMATS = (MXFP4,)

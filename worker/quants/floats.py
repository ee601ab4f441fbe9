"""Unquantized element types: F32, F16, BF16 (one element per "block")."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, check_blocks


def dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 4)
    return blocks.view("<f4").astype(np.float32)


def dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    blocks = check_blocks(blocks, 2)
    return blocks.view("<f2").astype(np.float32)


def dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    # bf16 is the high half of an f32: shifting the bits back is exact, NaN payloads included.
    blocks = check_blocks(blocks, 2)
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)


F32 = QuantFormat("F32", int(T.F32), 1, 4, dequantize_f32, "f32")
F16 = QuantFormat("F16", int(T.F16), 1, 2, dequantize_f16, "f16")
BF16 = QuantFormat("BF16", int(T.BF16), 1, 2, dequantize_bf16, "bf16")

FORMATS = (F32, F16, BF16)

"""GGML tensor formats: block layouts, NumPy dequantizers and activation round trips.

FORMATS maps a GGML type id (gguf.GGMLQuantizationType value) to its QuantFormat.
"""

from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType

from . import floats, kquants, legacy, mxfp4
from .activations import ACT_BLOCK_SIZE, roundtrip_activations, roundtrip_q8_1
from .base import QuantFormat, UnsupportedQuantType
from .kquants import quantize_q4_k, quantize_q5_k, quantize_q6_k

__all__ = [
    "ACT_BLOCK_SIZE",
    "FORMATS",
    "QuantFormat",
    "UnsupportedQuantType",
    "dequantize",
    "get_format",
    "quantize_q4_k",
    "quantize_q5_k",
    "quantize_q6_k",
    "roundtrip_activations",
    "roundtrip_q8_1",
]

FORMATS: dict[int, QuantFormat] = {
    f.type_id: f for f in (*floats.FORMATS, *legacy.FORMATS, *kquants.FORMATS, *mxfp4.FORMATS)
}

# Output produced per dequantize step: bounds the temporaries on ~500 MB models.
_CHUNK_BYTES = 16 << 20


def get_format(type_id: int) -> QuantFormat:
    fmt = FORMATS.get(int(type_id))
    if fmt is None:
        try:
            name = f" ({GGMLQuantizationType(int(type_id)).name})"
        except ValueError:
            name = ""
        supported = ", ".join(f.name for f in FORMATS.values())
        raise UnsupportedQuantType(f"unsupported GGML type id {int(type_id)}{name}; supported: {supported}")
    return fmt


def dequantize(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantize a tensor's data to float32 of `shape` (numpy order, last dim = row length).

    `raw` is the tensor's bytes (any shape, uint8) or, for F32/F16, the typed array
    gguf.GGUFReader returns; only its bytes are used."""
    fmt = get_format(type_id)
    shape = tuple(int(n) for n in shape)
    if not shape:
        raise ValueError("shape must have at least one dimension")
    if shape[-1] % fmt.block_size:
        raise ValueError(
            f"row length {shape[-1]} is not a multiple of the {fmt.name} block size {fmt.block_size}"
        )
    n_blocks = math.prod(shape) // fmt.block_size
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if data.size != n_blocks * fmt.type_size:
        raise ValueError(
            f"{fmt.name} tensor of shape {shape} needs {n_blocks * fmt.type_size} bytes, got {data.size}"
        )
    blocks = data.reshape(n_blocks, fmt.type_size)
    out = np.empty((n_blocks, fmt.block_size), dtype=np.float32)
    step = max(1, _CHUNK_BYTES // (4 * fmt.block_size))
    for start in range(0, n_blocks, step):
        out[start : start + step] = fmt.dequantize_blocks(blocks[start : start + step])
    return out.reshape(shape)

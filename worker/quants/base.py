"""Shared pieces of the quant formats: the format record and byte-field readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Activation formats ggml's CPU backend converts the input vector to (its `vec_dot_type`).
ACT_TYPES = ("f32", "f16", "bf16", "q8_0", "q8_1", "q8_k")


class UnsupportedQuantType(ValueError):
    """A GGML tensor type this package cannot dequantize."""


@dataclass(frozen=True)
class QuantFormat:
    name: str
    type_id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block
    # uint8 (n_blocks, type_size) -> float32 (n_blocks, block_size)
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]
    # ggml's vec_dot_type for a weight of this type; one of ACT_TYPES
    act_type: str

    def __post_init__(self) -> None:
        if self.act_type not in ACT_TYPES:
            raise ValueError(f"{self.name}: unknown act_type {self.act_type!r}")


def check_blocks(blocks: np.ndarray, type_size: int) -> np.ndarray:
    """Return `blocks` as a C-contiguous uint8 (n_blocks, type_size) array."""
    blocks = np.ascontiguousarray(blocks).view(np.uint8)
    if blocks.ndim != 2 or blocks.shape[1] != type_size:
        raise ValueError(f"expected uint8 blocks of shape (n, {type_size}), got {blocks.shape}")
    return blocks


def f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian fp16 at byte `offset` of every block, as float32 (n_blocks, 1)."""
    return blocks[:, offset : offset + 2].view("<f2").astype(np.float32)


def nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., m) packed bytes -> (..., 2m): all low nibbles, then all high nibbles (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)

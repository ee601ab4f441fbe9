"""MXFP4 numerics of the reference implementation, against ggml's own gguf.quants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import gguf.quants as gq
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from pytest_bdd import given, parsers, then, when

from worker.gguf_file import GGUFFile
from worker.quants import dequantize

BLOCK_BYTES = 17  # E8M0 scale + 16 bytes of E2M1 pairs


@given(parsers.parse("{n:d} random MXFP4 blocks made with seed {seed:d}"), target_fixture="blocks")
def random_blocks(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, size=(n, BLOCK_BYTES), dtype=np.uint8)
    raw[:, 0] %= 250  # keep 12 * 2^(e - 128) finite in float32
    return raw


@when("I dequantize them with the reference implementation and with gguf.quants", target_fixture="pair")
def dequantize_both(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = blocks.shape[0]
    ours = dequantize(blocks, int(T.MXFP4), (n, 32))
    theirs = gq.dequantize(blocks, T.MXFP4).reshape(n, 32)
    return ours, theirs


@then("both give bit-identical values")
def bit_identical(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ours, theirs = pair
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    diff = np.flatnonzero(ours.view(np.uint32) != theirs.astype(np.float32).view(np.uint32))
    first = diff[0] if diff.size else 0
    assert diff.size == 0, f"{diff.size} values differ, first at {first}: {ours.flat[first]} vs {theirs.flat[first]}"


@given(parsers.parse("a random {rows:d} x {cols:d} MXFP4 weight matrix in a GGUF file, seed {seed:d}"),
       target_fixture="mxfp4_file")
def mxfp4_file(tmp_path: Path, rows: int, cols: int, seed: int) -> dict[str, Any]:
    w = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    raw = gq.quantize(w, T.MXFP4)
    path = tmp_path / "mxfp4.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt-oss")
    writer.add_tensor("w.weight", raw, raw_shape=raw.shape, raw_dtype=T.MXFP4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": path, "raw": raw, "rows": rows, "cols": cols, "seed": seed}


def _backend(name: str) -> Any:
    if name == "reference":
        from worker.backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    try:
        from worker.backends.cupy_backend import CupyBackend, cuda_available
    except ImportError:
        pytest.skip("needs the CUDA backend (worker/backends/cupy_backend.py), not in this tree")
    if not cuda_available():
        pytest.skip("needs a CUDA GPU")
    return CupyBackend(0)


@when(parsers.parse("the {backend} backend multiplies it by a random vector"), target_fixture="product")
def multiply(mxfp4_file: dict[str, Any], backend: str) -> dict[str, Any]:
    b = _backend(backend)
    f = GGUFFile(mxfp4_file["path"])
    m = b.matrix(f, "w.weight")
    x = np.random.default_rng(mxfp4_file["seed"] + 1).standard_normal((1, mxfp4_file["cols"]), dtype=np.float32)
    y = np.asarray(b.to_host(b.linear(x, m)), dtype=np.float64).reshape(-1)
    return {"x": x, "y": y}


@then(parsers.parse("the product equals float64 arithmetic on the dequantized weights within {tol:g} relative"))
def matches_float64(mxfp4_file: dict[str, Any], product: dict[str, Any], tol: float) -> None:
    # ggml multiplies MXFP4 weights with activations converted to Q8_0 (its vec_dot_type), and
    # so does the reference; gguf.quants' Q8_0 round trip gives those activations independently.
    w = gq.dequantize(mxfp4_file["raw"], T.MXFP4).astype(np.float64)
    x = gq.dequantize(gq.quantize(product["x"], T.Q8_0), T.Q8_0).astype(np.float64).reshape(-1)
    ref = w @ x
    err = float(np.max(np.abs(product["y"] - ref)) / np.max(np.abs(ref)))
    assert err <= tol, f"max |y - y64| / max |y64| = {err:.3g} > {tol:g}"

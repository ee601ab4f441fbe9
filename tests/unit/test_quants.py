"""worker.quants: dequantizers vs gguf.quants, activation round trips, K-quant writer."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

import worker.quants as wq
from worker.quants import (
    FORMATS,
    UnsupportedQuantType,
    dequantize,
    get_format,
    quantize_q4_k,
    quantize_q5_k,
    quantize_q6_k,
    roundtrip_activations,
    roundtrip_q8_1,
)

T = GGMLQuantizationType

EXPECTED_ACT_TYPES = {
    T.F32: "f32",
    T.F16: "f16",
    T.BF16: "bf16",
    T.Q4_0: "q8_0",
    T.Q4_1: "q8_1",
    T.Q5_0: "q8_0",
    T.Q5_1: "q8_1",
    T.Q8_0: "q8_0",
    T.Q4_K: "q8_k",
    T.Q5_K: "q8_k",
    T.Q6_K: "q8_k",
    T.MXFP4: "q8_0",
}
# Types gguf.quants can write; the K-quants have no gguf writer.
GGUF_QUANTIZABLE = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]
# Byte offsets of fp16 scale fields per block, forced finite in the random-bytes test.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def assert_bitwise_equal(ours: np.ndarray, ref: np.ndarray) -> None:
    """Stricter than array_equal: same bits, so NaN payloads and signed zeros must match too."""
    assert ours.dtype == np.float32 and ref.dtype == np.float32
    assert ours.shape == ref.shape
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def shapes_for(block_size: int) -> list[tuple[int, ...]]:
    if block_size == 256:
        return [(1, 256), (3, 1024), (2, 2, 512)]
    # Qwen2.5-0.5B row lengths: hidden 896, FFN 4864.
    return [(1, 32), (5, 896), (2, 4864), (2, 3, 64)]


def gaussian(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- format table


def test_format_table_matches_ggml() -> None:
    assert set(FORMATS) == {int(t) for t in EXPECTED_ACT_TYPES}
    for t, act in EXPECTED_ACT_TYPES.items():
        fmt = get_format(int(t))
        assert fmt.type_id == int(t)
        assert fmt.name == t.name
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[t]
        assert fmt.act_type == act


# ---------------------------------------------------------------- dequantize vs gguf
# Every dequantizer does ggml's float ops in ggml's order (fp16 -> f32 first, then the same
# f32 products/sums), so all comparisons below are bitwise, not ulp-tolerant.

GGUF_CASES = [(t, shape) for t in GGUF_QUANTIZABLE for shape in shapes_for(GGML_QUANT_SIZES[t][0])]


@pytest.mark.parametrize(("qtype", "shape"), GGUF_CASES, ids=[f"{t.name}-{s}" for t, s in GGUF_CASES])
def test_dequantize_gguf_quantized_bitwise(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    x = gaussian(shape, seed=int(qtype)) * np.float32(3)
    raw = gq.quantize(x, qtype)  # F16 comes back as a typed float16 array, the rest as uint8 bytes
    assert_bitwise_equal(dequantize(raw, int(qtype), shape), gq.dequantize(raw, qtype))


def random_blocks(qtype: GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes; for block formats every byte pattern is a valid block once fp16 scales are finite."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        h = raw[:, off : off + 2].view("<u2")
        h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # inf/NaN exponent -> a finite one
    if qtype == T.MXFP4:
        raw[:, 0] %= 250  # keep 2^(e-128) * 12 inside f32 range
    return raw


RANDOM_CASES = [
    (t, shape) for t in EXPECTED_ACT_TYPES if t != T.F32 for shape in shapes_for(GGML_QUANT_SIZES[t][0])
]


@pytest.mark.parametrize(("qtype", "shape"), RANDOM_CASES, ids=[f"{t.name}-{s}" for t, s in RANDOM_CASES])
def test_dequantize_random_bytes_bitwise(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = math.prod(shape) // block_size
    raw = random_blocks(qtype, n_blocks, seed=1000 + int(qtype))  # F16/BF16: includes NaN/inf bits
    ref = gq.dequantize(raw.reshape(*shape[:-1], shape[-1] // block_size * type_size), qtype)
    assert_bitwise_equal(dequantize(raw, int(qtype), shape), ref)


def test_dequantize_f32_typed_array() -> None:
    x = gaussian((4, 896), seed=7)
    out = dequantize(x, int(T.F32), x.shape)
    assert_bitwise_equal(out, x)
    assert out is not x


@pytest.mark.parametrize("qtype", [T.F16, T.Q4_0, T.Q5_1, T.Q4_K, T.Q6_K, T.MXFP4])
def test_dequantize_chunking_is_invisible(
    qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch
) -> None:
    block_size = GGML_QUANT_SIZES[qtype][0]
    shape = (7, 4 * 256)
    raw = random_blocks(qtype, math.prod(shape) // block_size, seed=5)
    whole = dequantize(raw, int(qtype), shape)
    monkeypatch.setattr(wq, "_CHUNK_BYTES", 3 * 4 * 256)  # a few blocks per step, ragged last chunk
    assert_bitwise_equal(dequantize(raw, int(qtype), shape), whole)


# ---------------------------------------------------------------- error paths


@pytest.mark.parametrize("type_id", [int(T.Q2_K), int(T.IQ4_NL), 999])
def test_unknown_type_raises(type_id: int) -> None:
    with pytest.raises(UnsupportedQuantType, match=rf"\b{type_id}\b") as info:
        get_format(type_id)
    assert isinstance(info.value, ValueError)
    assert "Q4_K" in str(info.value)  # lists what is supported
    with pytest.raises(UnsupportedQuantType, match=rf"\b{type_id}\b"):
        dequantize(np.zeros(64, np.uint8), type_id, (1, 32))


@pytest.mark.parametrize(("qtype", "row"), [(T.Q4_0, 48), (T.Q4_K, 896), (T.MXFP4, 100)])
def test_row_not_multiple_of_block_raises(qtype: GGMLQuantizationType, row: int) -> None:
    block_size = GGML_QUANT_SIZES[qtype][0]
    with pytest.raises(ValueError, match=rf"\b{row}\b.*\b{block_size}\b"):
        dequantize(np.zeros(4096, np.uint8), int(qtype), (2, row))


def test_wrong_byte_count_raises() -> None:
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(18 * 3, np.uint8), int(T.Q4_0), (2, 64))


# ---------------------------------------------------------------- activations
# Independent scalar re-statements of ggml's rules. ggml does these steps in f32, so the loops
# use np.float32 scalars (not float64, which would round differently near ties) and Python's
# round(), which is half-to-even like the AVX2 path's _mm256_round_ps.


def expected_q8_0_block(block: np.ndarray) -> tuple[list[np.float32], np.float32, int]:
    """-> (effective values, f32 d, sum of q) for one 32-block."""
    amax = np.float32(0)
    for v in block:
        amax = max(amax, abs(np.float32(v)))
    d = amax / np.float32(127)
    inv = np.float32(127) / amax if amax != 0 else np.float32(0)
    qs = [round(float(np.float32(v) * inv)) for v in block]
    d16 = np.float32(np.float16(d))
    return [np.float32(d16 * np.float32(q)) for q in qs], d, sum(qs)


def expected_q8_k_block(block: np.ndarray) -> list[np.float32]:
    amax, vmax = np.float32(0), np.float32(0)
    for v in block:
        if abs(np.float32(v)) > amax:
            amax, vmax = abs(np.float32(v)), np.float32(v)
    if amax == 0:
        return [np.float32(0)] * len(block)
    iscale = np.float32(-127) / vmax
    d = np.float32(1) / iscale
    return [np.float32(d * np.float32(min(127, round(float(iscale * np.float32(v)))))) for v in block]


def q8_0_sample() -> np.ndarray:
    x = gaussian((2, 96), seed=11)
    x[0, 32:64] = 0.0  # a zero block between non-zero ones
    x[0, 1] = -1e-6  # quantizes to 0: ggml's int8 zero dequantizes to +0.0, not -0.0
    # amax 127 -> d = 1, id = 1: exact .5 ties, where half-even (2, -4, 0) and roundf (3, -4, 1) differ
    x[1, 0:32] = np.linspace(-20, 20, 32, dtype=np.float32)
    x[1, 0:5] = [127.0, 2.5, -3.5, 0.5, -1.5]
    return x


def test_q8_0_matches_scalar_rule() -> None:
    x = q8_0_sample()
    got = roundtrip_activations(x, "q8_0")
    expected = np.array(
        [[v for b in range(3) for v in expected_q8_0_block(row[32 * b : 32 * b + 32])[0]] for row in x],
        dtype=np.float32,
    )
    assert_bitwise_equal(got, expected)
    assert got[1, 1:5].tolist() == [2.0, -4.0, 0.0, -2.0]
    assert not got[0, 32:64].any()


def test_q8_1_values_and_sums() -> None:
    x = q8_0_sample()
    xq, s = roundtrip_q8_1(x)
    assert_bitwise_equal(xq, roundtrip_activations(x, "q8_0"))
    assert_bitwise_equal(roundtrip_activations(x, "q8_1"), xq)
    assert s.shape == (2, 3) and s.dtype == np.float32
    for r in range(2):
        for b in range(3):
            _, d, qsum = expected_q8_0_block(x[r, 32 * b : 32 * b + 32])
            # quantize_row_q8_1_ref: y.s = GGML_FP32_TO_FP16(sum*d), f32 d times the int sum
            assert s[r, b] == np.float32(np.float16(np.float32(qsum) * d))


def test_q8_k_matches_scalar_rule() -> None:
    x = gaussian((2, 512), seed=12)
    x[0, 256:] = 0.0  # zero block
    x[1, 10] = -9.0  # negative max: iscale > 0
    x[1, 300], x[1, 301] = 7.0, -7.0  # equal |max|: the first one wins, sign kept
    got = roundtrip_activations(x, "q8_k")
    expected = np.array(
        [[v for b in range(2) for v in expected_q8_k_block(row[256 * b : 256 * b + 256])] for row in x],
        dtype=np.float32,
    )
    assert_bitwise_equal(got, expected)
    assert not got[0, 256:].any()
    assert got[1, 10] == np.float32(np.float32(1) / (np.float32(-127) / np.float32(-9.0))) * -127


def test_q8_0_idempotent() -> None:
    x = gaussian((16, 896), seed=13) * np.float32(5)
    once = roundtrip_activations(x, "q8_0")
    assert_bitwise_equal(roundtrip_activations(once, "q8_0"), once)


@pytest.mark.parametrize("act_type", ["f32", "f16", "bf16", "q8_0", "q8_1", "q8_k"])
def test_zero_activations(act_type: str) -> None:
    x = np.zeros((3, 512), np.float32)
    out = roundtrip_activations(x, act_type)
    assert out.shape == x.shape and out.dtype == np.float32
    assert not out.any() and np.isfinite(out).all()


def test_float_roundtrips() -> None:
    x = gaussian((4, 96), seed=14) * np.float32(1000)
    assert_bitwise_equal(roundtrip_activations(x, "f32"), x)
    assert_bitwise_equal(roundtrip_activations(x, "f16"), x.astype(np.float16).astype(np.float32))
    ref_bf16 = gq.dequantize(gq.quantize(x, T.BF16), T.BF16)  # gguf mirrors ggml_compute_fp32_to_bf16
    assert_bitwise_equal(roundtrip_activations(x, "bf16"), ref_bf16)
    # bf16 ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1.0); 1 + 3*2^-8 -> up
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8], np.float32)
    assert roundtrip_activations(ties, "bf16").tolist() == [1.0, 1 + 2**-6]
    assert np.isnan(roundtrip_activations(np.array([np.nan], np.float32), "bf16")).all()


@pytest.mark.parametrize(
    ("act_type", "k", "block"), [("q8_0", 48, 32), ("q8_1", 100, 32), ("q8_k", 896, 256)]
)
def test_activation_length_errors(act_type: str, k: int, block: int) -> None:
    with pytest.raises(ValueError, match=rf"\b{k}\b.*\b{block}\b"):
        roundtrip_activations(np.zeros((2, k), np.float32), act_type)


def test_unknown_activation_type() -> None:
    with pytest.raises(ValueError, match="q8_2"):
        roundtrip_activations(np.zeros(32, np.float32), "q8_2")


# ---------------------------------------------------------------- K-quant writer

# Relative RMS reconstruction error on N(0, 1) data. For scale, a 16/32/64-level quantizer over
# each sub-block's min..max range gives ~0.078 / 0.038 / 0.019 here.
Writer = Callable[[np.ndarray], np.ndarray]
WRITERS = [
    (quantize_q4_k, T.Q4_K, 0.085),
    (quantize_q5_k, T.Q5_K, 0.042),
    (quantize_q6_k, T.Q6_K, 0.021),
]


@pytest.mark.parametrize(("writer", "qtype", "bound"), WRITERS, ids=[t.name for _, t, _ in WRITERS])
def test_kquant_writer(writer: Writer, qtype: GGMLQuantizationType, bound: float) -> None:
    x = gaussian((24, 1024), seed=20 + int(qtype))
    x[0] *= np.float32(1e-3)  # small-magnitude row
    x[1, :256] = 0.0  # zero super-block
    x[2] = np.abs(x[2]) + np.float32(1)  # all-positive row (min clamps to 0)
    raw = writer(x)
    type_size = GGML_QUANT_SIZES[qtype][1]
    assert raw.dtype == np.uint8 and raw.shape == (24, 4 * type_size)
    ours = dequantize(raw, int(qtype), x.shape)
    assert_bitwise_equal(ours, gq.dequantize(raw, qtype))
    assert not ours[1, :256].any()
    rel_rms = np.sqrt(np.mean((ours[3:] - x[3:]) ** 2) / np.mean(x[3:] ** 2))
    assert rel_rms < bound
    row0 = np.sqrt(np.mean((ours[0] - x[0]) ** 2) / np.mean(x[0] ** 2))
    assert row0 < bound  # scales adapt to magnitude
    # deterministic: same seed -> same bytes
    again = gaussian((24, 1024), seed=20 + int(qtype))
    again[0] *= np.float32(1e-3)
    again[1, :256] = 0.0
    again[2] = np.abs(again[2]) + np.float32(1)
    assert np.array_equal(writer(again), raw)


@pytest.mark.parametrize("writer", [quantize_q4_k, quantize_q5_k, quantize_q6_k])
def test_kquant_writer_rejects_bad_input(writer: Writer) -> None:
    with pytest.raises(ValueError, match="256"):
        writer(np.zeros((2, 896), np.float32))
    bad = np.zeros((1, 256), np.float32)
    bad[0, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        writer(bad)

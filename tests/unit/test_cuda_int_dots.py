"""The CUDA decode kernels' integer dot products (kernels.cu's unit_dot_i8), on the CPU.

kernels.cu's element code compiles as plain C++ (its host shim, with a dp4a that sums signed
bytes); this builds it with g++ and checks unit_dot_i8 on blocks made by gguf.quants against a
float64 dot product of gguf.quants' own dequantization: the golden values come from gguf, not
from the kernel file. The GPU runs the same source (tests/cuda checks it there against the
NumPy reference).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

KERNELS = Path(__file__).resolve().parents[2] / "worker" / "backends" / "cuda" / "kernels.cu"
TYPES = {T.Q4_0: 18, T.Q4_1: 20, T.Q5_0: 22, T.Q5_1: 24, T.Q8_0: 34, T.MXFP4: 17}
K_TYPES = {T.Q4_K: 144, T.Q6_K: 210}  # super-blocks of 8 units of 32; q8_K input
Q8_1_FORM = {T.Q4_1, T.Q5_1}  # d * sum(q * qx) * dx + m * s, s the float16 sum of the input

HARNESS = r"""
#include KERNELS
#include <stdio.h>
// stdin: type, count, block size; per case: block bytes, unit, 32 int8 qx, float dx, float s8
// -> one float each
int main() {
    int t, n, size;
    if (scanf("%d %d %d", &t, &n, &size) != 3) return 2;
    for (int i = 0; i < n; ++i) {
        unsigned b, q[32];
        int u;
        float dx, s8;
        u8 row[216] = {0};
        for (int k = 0; k < size; ++k) scanf("%u", &b), row[2 + k] = (u8)b;  // a 2-byte aligned block
        scanf("%d", &u);
        signed char qx[32];
        int xsum = 0;
        for (int k = 0; k < 32; ++k) scanf("%u", &q[k]), qx[k] = (signed char)q[k], xsum += qx[k];
        scanf("%a %a", &dx, &s8);
        u32 xw[8];
        memcpy(xw, qx, 32);
        float r = 0.f;
        if (t == T_Q4_0) r = unit_dot_i8<T_Q4_0>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q4_1) r = unit_dot_i8<T_Q4_1>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q5_0) r = unit_dot_i8<T_Q5_0>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q5_1) r = unit_dot_i8<T_Q5_1>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q8_0) r = unit_dot_i8<T_Q8_0>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q4_K) r = unit_dot_i8<T_Q4_K>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_Q6_K) r = unit_dot_i8<T_Q6_K>(row + 2, u, xw, dx, xsum, s8);
        if (t == T_MXFP4) r = unit_dot_i8<T_MXFP4>(row + 2, u, xw, dx, xsum, s8);
        printf("%a\n", r);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed: the host build of kernels.cu needs a C++ compiler")
    d = tmp_path_factory.mktemp("int_dots")
    (d / "h.cpp").write_text(HARNESS.replace("KERNELS", f'"{KERNELS}"'))
    subprocess.run([cxx, "-O1", "-ffp-contract=off", "-std=c++17", "-o", str(d / "h"), str(d / "h.cpp")],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return d / "h"


@pytest.mark.parametrize("qtype", list(TYPES), ids=lambda t: t.name)
def test_unit_dot_i8_matches_gguf(harness, qtype):
    rng = np.random.default_rng(int(qtype))
    n = 400
    w = rng.standard_normal((n, 32)).astype(np.float32) * rng.uniform(0.001, 2.0, (n, 1)).astype(np.float32)
    w[:40] += 0.5  # blocks with a large minimum (Q4_1 / Q5_1)
    blocks = quants.quantize(w, qtype)
    assert blocks.shape == (n, TYPES[qtype])
    wd = quants.dequantize(blocks, qtype).astype(np.float64)  # golden weights: gguf's decoder
    qx = rng.integers(-127, 128, (n, 32))
    qx[:10] = 127  # extremes of the int8 range
    dx = np.float16(rng.uniform(1e-4, 0.1, n)).astype(np.float32)  # q8 scales are float16
    s8 = np.float16(dx * qx.sum(axis=1)).astype(np.float32)  # q8_1's float16 block sum
    x = dx[:, None].astype(np.float64) * qx
    if qtype in Q8_1_FORM:
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)[:, 0]  # the block minimum
        golden = ((wd - m[:, None]) * x).sum(axis=1) + m * s8
        scale = (np.abs(wd - m[:, None]) * np.abs(x)).sum(axis=1) + np.abs(m * s8)
    else:
        golden = (wd * x).sum(axis=1)
        scale = (np.abs(wd) * np.abs(x)).sum(axis=1)
    got = _run(harness, qtype, TYPES[qtype], blocks, np.zeros(n, dtype=int), qx, dx, s8)
    err = np.abs(got - golden) / np.maximum(scale, 1e-30)
    # one float32 rounding of the exact integer sum times two scale products
    assert err.max() < 1e-6, (int(err.argmax()), got[err.argmax()], golden[err.argmax()])


@pytest.mark.parametrize("qtype", list(K_TYPES), ids=lambda t: t.name)
def test_unit_dot_i8_k_quants_match_gguf(harness, qtype):
    """Q4_K / Q6_K super-blocks of random bytes (every byte pattern is a valid block) with sane
    float16 scales; each case is one 32-element unit of one super-block."""
    rng = np.random.default_rng(int(qtype))
    n, size = 400, K_TYPES[qtype]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    scales = np.float16(rng.uniform(-0.05, 0.05, (n, 2))).view(np.uint8).reshape(n, 4)
    if qtype == T.Q4_K:
        blocks[:, 0:4] = scales  # d, dmin
    else:
        blocks[:, 208:210] = scales[:, 0:2]  # d
    wd = quants.dequantize(blocks, qtype).astype(np.float64).reshape(n, 256)  # golden weights
    unit = rng.integers(0, 8, n)
    qx = rng.integers(-127, 128, (n, 32))
    qx[:10] = -127
    dx = rng.uniform(1e-4, 0.1, n).astype(np.float32)  # q8_K's scale is a float32
    w = wd[np.arange(n)[:, None], unit[:, None] * 32 + np.arange(32)]
    x = dx[:, None].astype(np.float64) * qx
    golden = (w * x).sum(axis=1)
    scale = (np.abs(w) * np.abs(x)).sum(axis=1)
    got = _run(harness, qtype, size, blocks, unit, qx, dx, np.zeros(n, dtype=np.float32))
    err = np.abs(got - golden) / np.maximum(scale, 1e-30)
    # a few float32 roundings of exact integer sums (two per half for Q6_K, two for Q4_K)
    assert err.max() < 2e-6, (int(err.argmax()), got[err.argmax()], golden[err.argmax()])


def _run(harness: Path, qtype: T, size: int, blocks: np.ndarray, unit: np.ndarray, qx: np.ndarray,
         dx: np.ndarray, s8: np.ndarray) -> np.ndarray:  # fmt: skip
    lines = [f"{int(qtype)} {len(blocks)} {size}"]
    for i in range(len(blocks)):
        lines.append(" ".join(map(str, blocks[i])) + f" {unit[i]} " + " ".join(str(v & 0xFF) for v in qx[i]))
        lines.append(f"{float(dx[i]).hex()} {float(s8[i]).hex()}")
    out = subprocess.run([str(harness)], input="\n".join(lines), capture_output=True, text=True, check=True)
    got = np.array([float.fromhex(v) for v in out.stdout.split()])
    assert got.shape == (len(blocks),)
    return got

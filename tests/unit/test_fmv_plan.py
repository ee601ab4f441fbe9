"""The split of a fused decode product (cupy_backend.fmv_plan), checked on the CPU.

decode.cu's fmv_impl gives block b, round it, warp w the rows (b * iters + it) * (8 / wpr) *
rpw + (w / wpr) * rpw .. + rpw - 1 and, of those rows, the units (w % wpr) * per .. + per
(mode 3: whole rows of the gate or the up matrix); it stages those units' blocks, a warp's
rows as one run, with 16-byte copies from the granule holding their first byte. This
re-derives that assignment from the plan and checks, for the shapes of the models the worker
serves, that every (row, unit) is computed exactly once and that a copy never overruns its
slot (worst case: the run starts at byte 15 of a granule).
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.backends.cupy_backend import FMV_NST_MAX, FMV_RED_ROUNDS, FMV_WARPS, fmv_plan, fmv_smem
from worker.quants import get_format

Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, F16, MXFP4 = 2, 3, 6, 8, 12, 13, 14, 1, 39
SMEM = 160 * 1024

# (k, mode, rows, weight types): the products of the Qwen2.5-0.5B, SmolLM2-135M, phi3-mini,
# gpt-oss-20b and Llama-3-8B shapes, the 151,936-row head, and small fixtures
CASES = [
    (896, 0, (896, 128, 128), [Q5_0, Q5_0, Q8_0]),
    (896, 1, (896,), [Q5_0]),
    (896, 2, (4864, 4864), [Q5_0, Q5_0]),
    (4864, 1, (896,), [Q6_K]),
    (4864, 1, (896,), [Q4_K]),
    (896, 0, (151936,), [Q8_0]),
    (576, 0, (49152,), [Q4_1]),
    (576, 2, (1536, 1536), [Q4_1, Q4_1]),
    (1536, 1, (576,), [Q4_1]),
    (3072, 0, (9216,), [Q4_K]),
    (3072, 2, (8192, 8192), [Q5_K, Q5_K]),
    (8192, 1, (3072,), [Q6_K]),
    (2880, 0, (4096, 512, 512), [Q8_0, Q8_0, Q8_0]),
    (2880, 1, (2880,), [MXFP4]),
    (2880, 0, (201088,), [Q8_0]),
    (2880, 2, (2880, 2880), [MXFP4, MXFP4]),
    (4096, 2, (14336, 14336), [Q4_K, Q4_K]),
    (14336, 1, (4096,), [Q6_K]),
    (64, 0, (64, 32, 32), [F16, F16, F16]),
    (256, 2, (96, 96), [Q4_K, Q4_K]),
    (256, 2, (2050, 2050), [Q4_K, Q4_K]),
]


@pytest.mark.parametrize("blocks_per_sm", [1, 2, 4])
@pytest.mark.parametrize(("k", "mode", "seg_rows", "types"), CASES)
def test_every_row_and_unit_once_and_slots_hold_their_copies(k, mode, seg_rows, types, blocks_per_sm):
    total = sum(seg_rows) if mode == 0 else seg_rows[0]
    plan = fmv_plan(k, mode, total, tuple(types), 132, SMEM, blocks_per_sm, 0, seg_rows)
    assert plan is not None
    units = k // 32
    wpr, rpw = plan.wpr, plan.rpw
    rpi = FMV_WARPS // wpr * rpw
    npass = 2 if plan.mode == 2 else 1
    assert 1 <= plan.nst <= min(plan.iters, FMV_NST_MAX)
    assert wpr == 1 or plan.iters * rpw <= FMV_RED_ROUNDS
    assert plan.smem == fmv_smem(k) + plan.nst * FMV_WARPS * npass * plan.pass_bytes <= SMEM
    assert plan.pass_bytes % 16 == 0
    if rpw > 1:  # a warp's rows of a round lie in one weight, of a format with integer dots
        assert all(n % rpw == 0 for n in seg_rows) and F16 not in types and Q5_K not in types
    matrices = 2 if plan.mode >= 2 else 1
    seen = np.zeros((matrices, total, units), dtype=np.int32)
    for w in range(FMV_WARPS):
        part = w % wpr
        if plan.mode == 3:
            u0, nu, mats = 0, units, [part]
        else:
            u0 = part * plan.per
            nu, mats = max(0, min(plan.per, units - u0)), list(range(matrices))
        for t in types:
            fmt = get_format(t)
            if nu and t != F16:
                upb = fmt.block_size // 32
                assert u0 % upb == 0 and nu % upb == 0  # whole blocks (K-quants: super-blocks)
                chunks = (15 + rpw * (nu // upb) * fmt.type_size + 15) // 16
                assert chunks * 16 <= plan.pass_bytes
        first = (np.arange(plan.grid)[:, None] * plan.iters + np.arange(plan.iters)[None, :]) * rpi + (w // wpr) * rpw
        rows = (first.ravel()[:, None] + np.arange(rpw)[None, :]).ravel()
        rows = rows[rows < total]
        for m in mats:
            seen[m][np.ix_(rows, np.arange(u0, u0 + nu))] += 1
    assert (seen == 1).all()
    assert (plan.grid - 1) * plan.iters * rpi < total  # no block without a row


def test_several_rows_per_warp_where_they_fit():
    # Qwen2.5-0.5B's gate/up (mode 3) and its 151,936-row head take 4 rows a warp; its QKV
    # (1,152 rows: too few blocks then) and an F16 head one
    assert fmv_plan(896, 2, 4864, (Q5_0, Q5_0), 132, SMEM, 4, 0, (4864, 4864)).rpw == 4
    assert fmv_plan(896, 0, 151936, (Q8_0,), 132, SMEM, 4, 0, (151936,)).rpw == 4
    assert fmv_plan(896, 0, 1152, (Q5_0, Q5_0, Q8_0), 132, SMEM, 4, 0, (896, 128, 128)).rpw == 1
    assert fmv_plan(896, 0, 151936, (F16,), 132, SMEM, 4, 0, (151936,)).rpw == 1
    assert fmv_plan(896, 0, 151936, (Q8_0,), 132, SMEM, 4, 0, ()).rpw == 1  # rows not contiguous


def test_rows_split_over_warps_only_when_rows_are_few():
    # Qwen2.5-0.5B's down projection (896 rows of 4,864) splits its rows over 4 warps;
    # gpt-oss-20b's head (201,088 rows of 2,880), its output projection (2,880 rows) and its
    # experts' products (4 chosen x 2,880 rows, planned together) take whole rows
    assert fmv_plan(4864, 1, 896, (Q6_K,), 132, SMEM, 4, 0, (896,)).wpr == 4
    assert fmv_plan(2880, 0, 201088, (Q8_0,), 132, SMEM, 4, 0, (201088,)).wpr == 1
    assert fmv_plan(4096, 1, 2880, (F16,), 132, SMEM, 4, 0, (2880,)).wpr == 1
    assert fmv_plan(2880, 0, 4 * 2880, (MXFP4,), 132, SMEM, 4, 0, (4 * 2880,)).wpr == 1
    gate_up = fmv_plan(2880, 2, 4 * 2880, (MXFP4, MXFP4), 132, SMEM, 4, 0, (2880, 2880))
    assert (gate_up.mode, gate_up.wpr) == (3, 2)  # a warp for the gate row, one for the up row


def test_a_row_too_wide_for_shared_memory_has_no_plan():
    assert fmv_plan(1 << 17, 1, 8, (Q8_0,), 132, SMEM) is None

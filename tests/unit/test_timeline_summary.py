"""bench/gpu_timeline.py's arithmetic (bench/timeline_summary.py) on a made-up timeline.

The stamps are generated here from chosen per-kernel times (work, handoff, stagger, ...), the
way decode.cu's FMV_TIMELINE build writes them; the summary must give those times back per
kernel kind, count each kind per step, tell the down projection from O and the head from QKV,
and refuse rows that are not whole steps. The GPU run itself is bench/gpu_timeline.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from timeline_summary import summarize

N_EMBD, N_FF = 896, 4864
LAYERS, STEPS = 2, 3
HANDOFF, GAP = 1.2, 9.0  # µs: between kernels; before a step's first kernel (embedding, launch)


def meta(kind: int, k: int = 0) -> int:
    return kind | (k << 4)


# (meta, work, stagger, ahead, p0 or None, late) per kernel of a step, in launch order
LAYER = [
    (meta(1, N_EMBD), 5.0, 0.3, 6.0, 2.7, 0),  # norm + QKV (fmv mode 0)
    (meta(10), 4.0, 0.1, 5.0, 1.9, 0),  # attention
    (meta(2, N_EMBD), 3.0, 0.0, 11.0, 1.3, 0),  # O + residual (mode 1, K = n_embd)
    (meta(4, N_EMBD), 10.0, 1.7, 13.0, 5.7, 3),  # norm + gate/up (mode 3)
    (meta(2, N_FF), 5.5, 0.2, 9.0, 2.0, 0),  # down + residual (mode 1, K = n_ff)
]
TAIL = [
    (meta(1, N_EMBD), 60.0, 4.3, 6.0, 10.0, 0),  # head (mode 0, after the last layer)
    (meta(13), 4.5, 0.0, 20.0, None, 0),  # argmax over blocks
    (meta(14), 3.0, 0.0, 19.0, None, 0),  # argmax's final pick
]


def timeline(kernels: list[tuple], steps: int) -> tuple[np.ndarray, ...]:
    """Stamps in ns as the instrumented step writes them, kernel after kernel."""
    rows, ph, late, up, metas = [], [], [], [], []
    clock = 1_000_000
    for _ in range(steps):
        for i, (m, work, stagger, ahead, p0, nlate) in enumerate(kernels):
            clock += round(1e3 * (GAP if i == 0 else HANDOFF))
            waited = clock
            end = waited + round(1e3 * work)
            rows.append((waited - round(1e3 * ahead), waited, waited + round(1e3 * stagger), end))
            ph.append((0 if p0 is None else waited + round(1e3 * p0), 0, 0, 0))
            late.append(nlate)
            up.append(waited - 1_000)  # the last block started 1 µs before the first passed
            metas.append(m)
            clock = end
    return (np.array(rows, dtype=np.uint64), np.array(ph, dtype=np.uint64), np.array(late), np.array(up),
            np.array(metas, dtype=np.uint32))  # fmt: skip


def test_times_come_back_per_kernel_kind():
    kernels = LAYER * LAYERS + TAIL
    out = summarize(*timeline(kernels, STEPS), STEPS, N_FF)
    kinds = out["kinds"]
    assert out["kernels per step"] == len(kernels)
    assert set(kinds) == {
        "norm+qkv, layer 0", "norm+qkv (K=896)", "rope+attention", "o+residual (K=896)",
        "norm+gate/up (K=896)", "down+residual (K=4864)", "head", "argmax (blocks)", "argmax (final)",
    }  # fmt: skip
    by_label = dict(zip(
        ["norm+qkv, layer 0", "rope+attention", "o+residual (K=896)", "norm+gate/up (K=896)", "down+residual (K=4864)"],
        LAYER, strict=True,
    ))  # fmt: skip
    by_label |= {"head": TAIL[0], "argmax (blocks)": TAIL[1], "argmax (final)": TAIL[2]}
    for lab, (_, work, stagger, ahead, p0, nlate) in by_label.items():
        k = kinds[lab]
        assert k["work"] == pytest.approx(work)
        assert k["stagger"] == pytest.approx(stagger)
        assert k["ahead"] == pytest.approx(ahead)
        assert k["late"] == nlate
        assert k["last up"] == pytest.approx(-1.0)
        if p0 is None:
            assert np.isnan(k["p0"])
        else:
            assert k["p0"] == pytest.approx(p0)
        assert np.isnan(k["p1"]) and np.isnan(k["p2"])
        # a step's first kernel follows the gap between steps (none before the first step)
        assert k["handoff"] == pytest.approx(GAP if lab == "norm+qkv, layer 0" else HANDOFF)
    # the later layers' QKV, and how many of each a step runs
    assert kinds["norm+qkv (K=896)"]["work"] == pytest.approx(5.0)
    counts = {lab: k["per step"] for lab, k in kinds.items()}
    assert counts["o+residual (K=896)"] == counts["down+residual (K=4864)"] == LAYERS
    assert counts["norm+qkv, layer 0"] == counts["norm+qkv (K=896)"] == counts["head"] == 1
    assert kinds["norm+gate/up (K=896)"]["work per step"] == pytest.approx(LAYERS * 10.0)
    # a step end to end: every kernel's work and the hand-offs before them
    step = sum(k[1] for k in kernels) + GAP + HANDOFF * (len(kernels) - 1)
    assert out["step (µs)"] == pytest.approx(step)
    assert sum(k["work per step"] for k in kinds.values()) == pytest.approx(sum(k[1] for k in kernels))


def test_head_is_last_without_argmax_kernels():
    """With the argmax elsewhere the head is the step's last kernel, still not a QKV."""
    kernels = LAYER * LAYERS + TAIL[:1]
    kinds = summarize(*timeline(kernels, STEPS), STEPS, N_FF)["kinds"]
    assert kinds["head"]["work"] == pytest.approx(60.0)
    assert kinds["norm+qkv (K=896)"]["per step"] == LAYERS - 1


def test_rows_that_are_not_whole_steps_are_refused():
    stamps = timeline(LAYER * LAYERS + TAIL, STEPS)
    cut = tuple(a[:-1] for a in stamps)
    with pytest.raises(ValueError, match="unexpected kernel count"):
        summarize(*cut, STEPS, N_FF)


def test_attention_with_o_is_its_own_kind():
    # decode.cu's attn_out_* (attention and O in one kernel, kind 11): a layer of four kernels
    layer = [LAYER[0], (meta(11, N_EMBD), 6.0, 0.1, 11.0, 2.5, 0), *LAYER[3:]]
    out = summarize(*timeline(layer * LAYERS + TAIL, STEPS), STEPS, N_FF)
    kinds = out["kinds"]
    assert out["kernels per step"] == 4 * LAYERS + len(TAIL)
    assert "rope+attention" not in kinds and "o+residual (K=896)" not in kinds
    fused = kinds["rope+attention+o+residual (K=896)"]
    assert fused["per step"] == LAYERS and fused["work"] == pytest.approx(6.0)

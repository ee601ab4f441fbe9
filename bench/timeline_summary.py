"""The arithmetic of bench/gpu_timeline.py, apart from the GPU: which kernel a stamp row is,
and the per-kind table of a run's stamps (tests/unit/test_timeline_summary.py checks it on a
made-up timeline). Stamps are nanoseconds of %globaltimer; the table is in µs.

Per stamped kernel k (rows in launch order, `per_step` a step): t[k] = (first block's start,
first block past pdl_wait, last block past it, last block's end), ph[k] = the latest block at
points 0..2 (0: none), late[k] = blocks that found the wait released, up[k] = the latest
block's start, meta[k] = what the kernel wrote (decode.cu's TL_WAITED: kind + K << 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ATTN, ATTN_O, ARGMAX_PARTIAL, ARGMAX_STEP = 10, 11, 13, 14
FIELDS = ("work", "handoff", "stagger", "ahead", "p0", "p1", "p2", "late", "last up")


def label(meta: int, idx_in_step: int, n_in_step: int, n_ff: int) -> str:
    """The kernel kind of a stamp row: decode.cu's kinds (1 + fmv mode, 10 attention, 11 attention
    with O, 13 / 14 argmax), the down projection told from O by its K (n_ff), the head from QKV
    by its place."""
    kind, k = meta & 15, meta >> 4
    if kind == ATTN:
        return "rope+attention"
    if kind == ATTN_O:
        return f"rope+attention+o+residual (K={k})"
    if kind == ARGMAX_PARTIAL:
        return "argmax (blocks)"
    if kind == ARGMAX_STEP:
        return "argmax (final)"
    mode = kind - 1
    if mode == 0 and idx_in_step == 0:
        return "norm+qkv, layer 0"  # its handoff: the embedding and the gap between steps
    if mode == 0:
        # the head is the product after the last layer: the step's last kernel, or the third
        # from its end when two argmax kernels follow it
        return "head" if idx_in_step >= n_in_step - 3 else f"norm+qkv (K={k})"
    if mode == 1:
        return f"down+residual (K={k})" if k == n_ff else f"o+residual (K={k})"
    return f"norm+gate/up (K={k})"


def summarize(
    t: np.ndarray, ph: np.ndarray, late: np.ndarray, up: np.ndarray, meta: np.ndarray, steps: int, n_ff: int
) -> dict[str, Any]:
    """{"kernels per step", "step (µs)": median end-to-end of steps 2.., "kinds": {label: the
    median of each FIELDS entry, "per step" (count), "work per step", "handoff per step"}}.
    Raises ValueError when the rows are not whole steps."""
    n = len(t)
    per_step = n // steps if steps else 0
    if steps <= 0 or per_step * steps != n or per_step < 4:
        raise ValueError(f"unexpected kernel count {n} for {steps} steps")
    t = np.asarray(t, dtype=np.int64)
    ph = np.asarray(ph, dtype=np.int64)
    rows: dict[str, dict[str, list[float]]] = {}
    step_us = []
    for s in range(steps):
        base = s * per_step
        if s > 0:
            step_us.append((t[base + per_step - 1, 3] - t[base - 1, 3]) / 1e3)
        for i in range(per_step):
            k = base + i
            r = rows.setdefault(label(int(meta[k]), i, per_step, n_ff), {f: [] for f in FIELDS})
            for j in range(3):
                if ph[k, j] > 0:
                    r[f"p{j}"].append((ph[k, j] - t[k, 1]) / 1e3)
            r["work"].append((t[k, 3] - t[k, 1]) / 1e3)
            if k > 0:
                r["handoff"].append((t[k, 1] - t[k - 1, 3]) / 1e3)
            r["stagger"].append((t[k, 2] - t[k, 1]) / 1e3)
            r["ahead"].append((t[k, 1] - t[k, 0]) / 1e3)
            r["late"].append(float(late[k]))
            r["last up"].append((int(up[k]) - t[k, 1]) / 1e3)
    kinds = {}
    for lab, r in rows.items():
        cnt = len(r["work"]) // steps
        kinds[lab] = {
            "per step": cnt,
            **{f: float(np.median(v)) if v else float("nan") for f, v in r.items()},
            "work per step": float(np.mean(r["work"]) * cnt),
            "handoff per step": float(np.mean(r["handoff"]) * cnt),
        }
    return {
        "kernels per step": per_step,
        "step (µs)": float(np.median(step_us)) if step_us else float("nan"),
        "kinds": kinds,
    }

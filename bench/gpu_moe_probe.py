#!/usr/bin/env python3
"""Where a gpt-oss decode step's time goes, kernel by kernel, and how the fused products'
split (fmv_plan's caps on warps per row and rows per warp) moves it.

    python bench/gpu_moe_probe.py PATH [--caps 4,4 2,4 1,4 1,2 1,1]

Times (device µs per call, bench/gpu_speed.py's graph_time_us) the pieces of norm_moe (the
router's product, moe_route, gate/up of the chosen experts, their down products,
moe_combine), the attention products and the head, under each cap, then the whole recorded
step. A table last.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cupy as cp  # noqa: E402
from gpu_speed import graph_time_us, time_step_graph  # noqa: E402

from worker.backends.cupy_backend import CupyBackend, ExpertSlots  # noqa: E402
from worker.model import load_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--caps", nargs="+", default=["4,4", "2,4", "1,4", "1,2", "1,1"])
    args = ap.parse_args()
    be = CupyBackend(0)
    m = load_model(Path(args.path), be, ctx_size=4096)
    ad, cfg = m.adapter, m.cfg
    L = ad.layers[0]
    moe = L.moe
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.standard_normal((1, cfg.n_embd), dtype=np.float32))
    attn = cp.asarray(rng.standard_normal((1, cfg.n_head * cfg.head_dim), dtype=np.float32))
    g0, u0, d0 = moe.gate[0], moe.up[0], moe.down[0]
    kk, ff, e = moe.n_used, g0.n_out, d0.n_out
    ids = cp.asarray(np.array([3, 17, 5, 30][:kk], dtype=np.int32))
    wts = cp.asarray(np.full(kk, 1.0 / kk, dtype=np.float32))
    act = cp.asarray(rng.standard_normal((kk, ff), dtype=np.float32))
    y = cp.empty((kk, e), dtype=cp.float32)
    (logits,) = be.norm_linears(x, L.post_norm, cfg.norm_eps, [moe.router], [moe.router_b])
    ids_o, wts_o = cp.empty(kk, dtype=cp.int32), cp.empty(kk, dtype=cp.float32)

    def gate_up() -> None:
        segs = [(g0.raw, g0.row_bytes, g0.type_id, ff), (u0.raw, u0.row_bytes, u0.type_id, ff)]
        be._fmv_launch(x, L.post_norm, cfg.norm_eps, 2, segs, [moe.gate_b, moe.up_b], [act], g0.act_type,
                       experts=ExpertSlots(ids, kk, g0.n_out * g0.row_bytes, ff, 0, ff), oai=(moe.alpha, moe.limit))

    def down() -> None:
        be._fmv_launch(act, None, 0.0, 0, [(d0.raw, d0.row_bytes, d0.type_id, e)], [moe.down_b], [y], d0.act_type,
                       experts=ExpertSlots(ids, kk, d0.n_out * d0.row_bytes, e, ff, e))

    ops = {
        "router": lambda: be.norm_linears(x, L.post_norm, cfg.norm_eps, [moe.router], [moe.router_b]),
        "moe_route": lambda: be._launch_dep("moe_route", 1, 32, (logits, np.int32(len(moe.gate)), np.int32(kk),
                                                                 ids_o, wts_o)),
        "gate/up x4": gate_up,
        "down x4": down,
        "combine": lambda: be._launch_dep("moe_combine", -(-e // 256), 256, (y, wts, x, x.copy(), np.int32(e),
                                                                         np.int32(kk))),
        "norm_moe": lambda: be.norm_moe(x, L.post_norm, cfg.norm_eps, moe),
        "norm+qkv": lambda: be.norm_linears(x, L.attn_norm, cfg.norm_eps, [L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv]),
        "o+bias+residual": lambda: be.linear_add(attn, L.wo, x, L.bo),
        "head": lambda: be.norm_linears(x, ad.out_norm, cfg.norm_eps, [ad.output], [None]),
    }
    table: dict[str, dict[str, float]] = {}
    for cap in args.caps:
        be._fmv_caps = tuple(int(v) for v in cap.split(","))
        table[cap] = {name: graph_time_us(fn) for name, fn in ops.items()}
        print(cap, {k: round(v, 1) for k, v in table[cap].items()}, flush=True)
    be._fmv_caps = (4, 4)
    cache = ad.new_cache(512)
    tok = int(np.argmax(ad.forward(np.arange(8), 0, cache)))
    dec = ad.decoder(cache)
    tok = dec.greedy(tok, 8)
    dec.greedy(tok, 9)
    step = time_step_graph(dec)
    dec.close()
    print("\n==== gpt-oss step pieces, device us per call (caps: warps per row, rows per warp) ====")
    print(f"{'piece':18s}" + "".join(f"{c:>9s}" for c in args.caps))
    for name in ops:
        print(f"{name:18s}" + "".join(f"{table[c][name]:9.1f}" for c in args.caps))
    print(f"recorded step (caps 4,4): {step.get('graph_step_us', float('nan')):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

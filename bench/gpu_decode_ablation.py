#!/usr/bin/env python3
"""Where a decode step's product kernels spend their time: ablation on the GPU.

    python bench/gpu_decode_ablation.py --model FILE.gguf [--variants A,B,...] [--rounds N] [--out DIR]

The CUDA module is compiled once per FMV_ABLATE variant (decode.cu): 0 as the worker runs
it, 1 without the dot products' arithmetic, 2 without the input's norm and rounding, 4
without weight loads. "plain launches" is variant 0 without programmatic dependent launch
(pdl.py); "N blocks/SM" sizes the product grids for N resident blocks per multiprocessor
instead of cupy_backend.FMV_BLOCKS_PER_SM; "wpr<=2", "rpw<=2", "rpw=1" cap fmv_plan's warps
per row and rows per warp; "no rope table" has attention compute RoPE's cos and sin at each
step; "no K/V or cos/sin ahead" (6) has attention load the cached rows and RoPE's table row
after pdl_wait; "norm weights staged in sync" (5) loads the products' norm weights with
plain loads, not cp.async; "down rounds its input" has every down block round gate/up's
output itself (no round_output); "apart" runs attention and the output projection as two
kernels (attn_decode, fmv_*) at every position, "O by clusters" as one (attn_out_*, clusters
of a block a head per chunk of O's rows) up to 1,024 positions (cupy_backend.ATT_O_MAX, as
shipped), ": N chunks" with N clusters instead of ATT_O_CHUNKS, ": early trigger" (14) letting
the next kernel start at its start rather than after its attention, ": no K/V ahead" (6)
without the cached rows ahead of the wait (the rows attention+o@64 and @250 time attention
and O per layer at those contexts); "down stages after the wait" (8) has the down
projection copy its rows only once its input exists;
"<product> N blocks/SM" sizes that one product's grid (qkv, o, gate/up, down, head) for N;
"as shipped again" repeats the first to show the run's noise.
--variants picks some (default: all). Each fused step kind is captured in a graph over
every layer in turn (weights come from HBM, as in a real step, not from an L2 warmed by
repeating one layer) and timed with events; their sum over a step (argmax and embedding
left out) and the whole decode graph are timed too. The difference to the first variant is
what that part costs. Variants with FMV_ABLATE 1, 2 and 4 compute wrong values: only their
times mean anything (5, 6 and 8 compute the same values). Prints a table; writes
DIR/gpu_decode_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cupy as cp  # noqa: E402

from worker.backends import cupy_backend as cb  # noqa: E402
from worker.model import load_model  # noqa: E402

# label -> (FMV_ABLATE, programmatic dependent launch, product blocks per multiprocessor,
# fmv_plan's caps on warps per row and rows per warp, backend switches set otherwise than
# shipped: RoPE from the model's table, gate/up rounding down's input once)
B = cb.FMV_BLOCKS_PER_SM
SWITCHES: dict[str, object] = {
    "_rope_tables": True,
    "_round_once": True,
    "_att_o_max": cb.ATT_O_MAX,
    "_att_o_chunks": 0,
}
VARIANTS: dict[str, tuple[int, bool, int, tuple[int, int], dict[str, object]]] = {
    "as shipped": (0, True, B, (4, 4), {}),
    "as shipped again": (0, True, B, (4, 4), {}),
    "plain launches": (0, False, B, (4, 4), {}),
    "3 blocks/SM": (0, True, 3, (4, 4), {}),
    "2 blocks/SM": (0, True, 2, (4, 4), {}),
    "1 block/SM": (0, True, 1, (4, 4), {}),
    "wpr<=2": (0, True, B, (2, 4), {}),
    "rpw<=2": (0, True, B, (4, 2), {}),
    "rpw=1": (0, True, B, (4, 1), {}),
    "no dot arithmetic": (1, True, B, (4, 4), {}),
    "no norm/rounding": (2, True, B, (4, 4), {}),
    "no weight loads": (4, True, B, (4, 4), {}),
    "norm weights staged in sync": (5, True, B, (4, 4), {}),
    "no K/V or cos/sin ahead": (6, True, B, (4, 4), {}),
    "down stages after the wait": (8, True, B, (4, 4), {}),
    "no rope table": (0, True, B, (4, 4), {"_rope_tables": False}),
    "down rounds its input": (0, True, B, (4, 4), {"_round_once": False}),
    "apart": (0, True, B, (4, 4), {"_att_o_max": 0}),
    "O by clusters": (0, True, B, (4, 4), {"_att_o_max": 1024}),
    "O by clusters: 4 chunks": (0, True, B, (4, 4), {"_att_o_max": 1024, "_att_o_chunks": 4}),
    "O by clusters: 2 chunks": (0, True, B, (4, 4), {"_att_o_max": 1024, "_att_o_chunks": 2}),
    "O by clusters: no K/V ahead": (6, True, B, (4, 4), {"_att_o_max": 1024}),
    "O by clusters: early trigger": (14, True, B, (4, 4), {"_att_o_max": 1024}),
}
# label -> {product: blocks per multiprocessor} for single products (the rest as shipped)
PER_PRODUCT = {
    f"{what} {n} blocks/SM": {what: n} for what in ("qkv", "o", "gate/up", "down", "head") for n in (1, 2, 3)
}
for _label in PER_PRODUCT:
    VARIANTS[_label] = (0, True, B, (4, 4), {})


def product_keys(ad: Any) -> dict[str, tuple[int, int, int]]:
    """Each product of a Llama-family step as CupyBackend._fmv_launch keys _fmv_bps_for:
    (mode, columns, rows)."""
    cfg, ly = ad.cfg, ad.layers[0]
    return {
        "qkv": (0, cfg.n_embd, ly.wq.n_out + ly.wk.n_out + ly.wv.n_out),
        "o": (1, ly.wo.n_in, cfg.n_embd),
        "gate/up": (2, cfg.n_embd, cfg.n_ff),
        "down": (1, cfg.n_ff, cfg.n_embd),
        "head": (0, cfg.n_embd, ad.output.n_out),
    }


def replay_us(dec: Any, n: int) -> float:
    """µs per replay of a decoder's recorded step, n replays back to back between two events
    (no host round trip between tokens; each replay advances the position)."""
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(dec.stream)
    dec.replay(n)
    end.record(dec.stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e3 / n


_MODULES: dict[int, Any] = {}


def module(variant: int) -> Any:
    """The module compiled with FMV_ABLATE variant (once: "as shipped again" reuses it)."""
    if variant not in _MODULES:
        src = cb.KERNELS_PATH.read_text() + cb.DECODE_KERNELS_PATH.read_text() + cb.PREFILL_KERNELS_PATH.read_text()
        _MODULES[variant] = cp.RawModule(code=f"#define FMV_ABLATE {variant}\n" + src)
    return _MODULES[variant]


def time_graph(fn: Any, reps: int = 5) -> float:
    """µs per call of fn() (which makes one or more launches), captured once and replayed."""
    stream = cp.cuda.Stream(non_blocking=True)
    pool = cp.cuda.MemoryPool()
    with stream, cp.cuda.using_allocator(pool.malloc):
        fn()
        stream.synchronize()
        stream.begin_capture()
        fn()
        g = stream.end_capture()
        g.launch(stream)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(reps):
            g.launch(stream)
        end.record(stream)
        end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e3 / reps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--variants", help="comma-separated labels of VARIANTS (default: all)")
    ap.add_argument("--rounds", type=int, default=1, help="times to run the list, interleaved (medians)")
    args = ap.parse_args()
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    be = cb.CupyBackend(0)
    pdl = be._pdl
    model = load_model(Path(args.model), be)
    ad, cfg = model.adapter, model.cfg
    # each variant records its own decode step (the one load recorded used the shipped module)
    for shared in be._shared_decoders.values():
        shared.shared = False
        shared.close()
    be._shared_decoders.clear()
    L = ad.layers
    n = cfg.n_layer
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.standard_normal((1, cfg.n_embd), dtype=np.float32))
    act = cp.asarray(rng.standard_normal((1, cfg.n_ff), dtype=np.float32))
    q = cp.asarray(rng.standard_normal((1, cfg.n_head, cfg.head_dim), dtype=np.float32))
    kv = cp.asarray(rng.standard_normal((1, cfg.n_kv_heads, cfg.head_dim), dtype=np.float32))
    att_cache = ad.new_cache(256)
    steps: dict[str, Any] = {
        "rope+attention@64": lambda: [be.rope_attention(q, kv, kv, att_cache, i, 64, cfg) for i in range(n)],
        # (one launch a layer while att_o_max allows, else attention and O+residual apart)
        "attention+o@64": lambda: [
            be.attention_output(q, kv, kv, att_cache, i, 64, cfg, ly.wo, x) for i, ly in enumerate(L)
        ],
        "attention+o@250": lambda: [
            be.attention_output(q, kv, kv, att_cache, i, 249, cfg, ly.wo, x) for i, ly in enumerate(L)
        ],
        "norm+qkv": lambda: [
            be.norm_linears(x, ly.attn_norm, cfg.norm_eps, [ly.wq, ly.wk, ly.wv], [ly.bq, ly.bk, ly.bv]) for ly in L
        ],
        "o+residual": lambda: [be.linear_add(x, ly.wo, x) for ly in L],
        "norm+gate/up+swiglu": lambda: [be.norm_swiglu(x, ly.ffn_norm, cfg.norm_eps, ly.w_gate, ly.w_up) for ly in L],
        "down+residual": lambda: [be.linear_add(act, ly.w_down, x) for ly in L],
        "head": lambda: be.norm_linears(x, ad.out_norm, cfg.norm_eps, [ad.output], [None]),
    }
    prompt = rng.integers(0, cfg.vocab_size, 16)
    products = product_keys(ad)
    runs: dict[str, list[dict[str, float]]] = {}
    for label in [lab for _ in range(args.rounds) for lab in chosen]:
        v, use_pdl, bps, caps, switches = VARIANTS[label]
        be._module = module(v)
        be._functions.clear()
        be._pdl = pdl if use_pdl else None
        be._fmv_blocks_per_sm = bps
        be._fmv_caps = caps
        for name, on in {**SWITCHES, **switches}.items():
            setattr(be, name, on)
        be._fmv_bps_for = {products[what]: n for what, n in PER_PRODUCT.get(label, {}).items()}
        row = {k: time_graph(fn) / (1 if k == "head" else n) for k, fn in steps.items()}
        # a step as the sum of its parts: each layer step once per layer, the head once
        # (attention+o is the other two where they fuse: not counted again)
        row["sum of the parts"] = sum(
            t * (1 if k == "head" else n) for k, t in row.items() if not k.startswith("attention+o")
        )
        cache = ad.new_cache(16 + 64)
        ad.forward(prompt, 0, cache)
        dec = ad.decoder(cache)
        tok = dec.greedy(1, 16)
        tok = dec.greedy(tok, 17)
        if getattr(dec, "graph", None) is not None:
            row["whole step graph"] = replay_us(dec, 50)
        dec.close()
        be.free_kv_cache(cache)
        runs.setdefault(label, []).append(row)
        print(label, {k: round(t, 1) for k, t in row.items()}, flush=True)
    # medians over the rounds (variants interleaved, so that a drift of the card's speed
    # during the run falls on all of them alike)
    res = {lab: {k: float(np.median([r.get(k, np.nan) for r in rows])) for k in rows[0]} for lab, rows in runs.items()}
    base = res[chosen[0]]
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\n=== decode ablation, µs per call (per layer for layer steps), median of {args.rounds}, {dev}")
    print(f"{'step':22s}" + "".join(f"{lab[:18]:>20s}" for lab in res))
    for k in base:
        print(f"{k:22s}" + "".join(f"{res[lab].get(k, float('nan')):20.1f}" for lab in res))
    if args.rounds > 1:
        each = [" / ".join(f"{r.get('whole step graph', np.nan):.0f}" for r in rows) for rows in runs.values()]
        print(f"{'graph, each round':22s}" + "".join(f"{e:>20s}" for e in each))
    be.free_kv_cache(att_cache)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_decode_ablation.json").write_text(json.dumps({"medians": res, "runs": runs}, indent=1))
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where a decode step's product kernels spend their time: ablation on the GPU.

    python bench/gpu_decode_ablation.py --model FILE.gguf [--out DIR]

The CUDA module is compiled once per FMV_ABLATE variant (decode.cu): 0 as the worker runs
it, 1 without the dot products' arithmetic, 2 without the input's norm and rounding, 3
without any L2 prefetch (attention's and the products'), 4 without weight loads. "plain launches" is
variant 0 without programmatic dependent launch (pdl.py); "N blocks/SM" sizes the product
grids for N resident blocks per multiprocessor instead of cupy_backend.FMV_BLOCKS_PER_SM;
"wpr<=2", "rpw<=2", "rpw=1" cap fmv_plan's warps per row and rows per warp; "no attention
hints" is variant 0 without attention's prefetch of the weights the layer reads next; "as
shipped again" repeats the first to show the run's noise.
--variants picks some (default: all). Each fused step kind is captured in a graph over
every layer in turn (weights come from HBM, as in a real step, not from an L2 warmed by
repeating one layer) and timed with events; their sum over a step (argmax and embedding
left out) and the whole decode graph are timed too. The difference to the first variant is
what that part costs. Variants with FMV_ABLATE other than 0 compute wrong values: only their
times mean anything. Prints a table; writes DIR/gpu_decode_ablation.json.
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
# fmv_plan's caps on warps per row and rows per warp, attention's prefetch hints)
B = cb.FMV_BLOCKS_PER_SM
VARIANTS = {
    "as shipped": (0, True, B, (4, 4), True),
    "as shipped again": (0, True, B, (4, 4), True),
    "plain launches": (0, False, B, (4, 4), True),
    "3 blocks/SM": (0, True, 3, (4, 4), True),
    "2 blocks/SM": (0, True, 2, (4, 4), True),
    "1 block/SM": (0, True, 1, (4, 4), True),
    "wpr<=2": (0, True, B, (2, 4), True),
    "rpw<=2": (0, True, B, (4, 2), True),
    "rpw=1": (0, True, B, (4, 1), True),
    "no dot arithmetic": (1, True, B, (4, 4), True),
    "no norm/rounding": (2, True, B, (4, 4), True),
    "no L2 prefetch": (3, True, B, (4, 4), True),
    "no weight loads": (4, True, B, (4, 4), True),
    "no attention hints": (0, True, B, (4, 4), False),
}


def module(variant: int) -> Any:
    src = cb.KERNELS_PATH.read_text() + cb.DECODE_KERNELS_PATH.read_text() + cb.PREFILL_KERNELS_PATH.read_text()
    return cp.RawModule(code=f"#define FMV_ABLATE {variant}\n" + src)


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
    att_cache = ad.new_cache(128)
    steps: dict[str, Any] = {
        "rope+attention@64": lambda: [be.rope_attention(q, kv, kv, att_cache, i, 64, cfg) for i in range(n)],
        "norm+qkv": lambda: [
            be.norm_linears(x, ly.attn_norm, cfg.norm_eps, [ly.wq, ly.wk, ly.wv], [ly.bq, ly.bk, ly.bv]) for ly in L
        ],
        "o+residual": lambda: [be.linear_add(x, ly.wo, x) for ly in L],
        "norm+gate/up+swiglu": lambda: [be.norm_swiglu(x, ly.ffn_norm, cfg.norm_eps, ly.w_gate, ly.w_up) for ly in L],
        "down+residual": lambda: [be.linear_add(act, ly.w_down, x) for ly in L],
        "head": lambda: be.norm_linears(x, ad.out_norm, cfg.norm_eps, [ad.output], [None]),
    }
    prompt = rng.integers(0, cfg.vocab_size, 16)
    res: dict[str, dict[str, float]] = {}
    for label in chosen:
        v, use_pdl, bps, caps, hints = VARIANTS[label]
        be._module = module(v)
        be._functions.clear()
        be._pdl = pdl if use_pdl else None
        be._fmv_blocks_per_sm = bps
        be._fmv_caps = caps
        be._prefetch_hints = hints
        row = {k: time_graph(fn) / (1 if k == "head" else n) for k, fn in steps.items()}
        # a step as the sum of its parts: each layer step once per layer, the head once
        row["sum of the parts"] = sum(t * (1 if k == "head" else n) for k, t in row.items())
        cache = ad.new_cache(16 + 64)
        ad.forward(prompt, 0, cache)
        dec = ad.decoder(cache)
        tok = dec.greedy(1, 16)
        tok = dec.greedy(tok, 17)
        if getattr(dec, "graph", None) is not None:
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(dec.stream)
            for _ in range(20):
                dec.graph.launch(dec.stream)
            end.record(dec.stream)
            end.synchronize()
            row["whole step graph"] = cp.cuda.get_elapsed_time(start, end) * 1e3 / 20
        dec.close()
        be.free_kv_cache(cache)
        res[label] = row
        print(label, {k: round(t, 1) for k, t in row.items()}, flush=True)
    base = res[chosen[0]]
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\n=== decode ablation, µs per call (per layer for layer steps), {dev}")
    print(f"{'step':22s}" + "".join(f"{lab[:18]:>20s}" for lab in res))
    for k in base:
        print(f"{k:22s}" + "".join(f"{res[lab].get(k, float('nan')):20.1f}" for lab in res))
    be.free_kv_cache(att_cache)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_decode_ablation.json").write_text(json.dumps(res, indent=1))
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

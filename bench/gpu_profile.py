#!/usr/bin/env python3
"""Where a prefill and a decode step spend their time on the GPU.

    python bench/gpu_profile.py --model FILE.gguf [--prefill 128 --prefill 2048] [--out DIR]

Two views of the same runs:
- per backend method (embed, norm_linears, rope_attention, linear, ...): wall time with a
  device synchronisation after every call, so launch overhead from Python is included;
- per kernel: CUPTI's record of every kernel the process ran (PyTorch's profiler sees CuPy's
  and cuBLAS's kernels too), summed by name.
Tables are printed; DIR/gpu_profile.json holds the same numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cupy as cp  # noqa: E402

from worker.backends.cupy_backend import CupyBackend  # noqa: E402
from worker.model import load_model  # noqa: E402

METHODS = ("embed", "norm_linears", "rope_attention", "linear_add", "norm_swiglu", "linear", "rms_norm",
           "attention_ext", "rope", "last_row", "to_host", "argmax_into")  # fmt: skip


def per_method(be: CupyBackend, run: Any) -> dict[str, tuple[int, float]]:
    """{method: (calls, ms)} of run(), each call followed by a synchronisation."""
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    saved = {}
    depth = [0]
    for name in METHODS:
        fn = getattr(be, name, None)
        if fn is None:
            continue
        saved[name] = fn

        def wrap(*a: Any, _fn: Any = fn, _name: str = name, **k: Any) -> Any:
            if depth[0]:
                return _fn(*a, **k)
            depth[0] += 1
            cp.cuda.runtime.deviceSynchronize()
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                cp.cuda.runtime.deviceSynchronize()
                s = stats[_name]
                s[0] += 1
                s[1] += (time.perf_counter() - t0) * 1e3
                depth[0] -= 1

        setattr(be, name, functools.wraps(fn)(wrap))
    try:
        t0 = time.perf_counter()
        run()
        cp.cuda.runtime.deviceSynchronize()
        total = (time.perf_counter() - t0) * 1e3
    finally:
        for name, fn in saved.items():
            setattr(be, name, fn)
    out = {k: (int(v[0]), float(v[1])) for k, v in stats.items()}
    out["(total)"] = (1, total)
    return out


def per_kernel(run: Any) -> dict[str, tuple[int, float]] | str:
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except Exception as exc:
        return f"torch profiler unavailable: {exc}"
    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        cp.cuda.runtime.deviceSynchronize()
    agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type.name != "CUDA":
            continue
        a = agg[ev.name[:60]]
        a[0] += 1
        a[1] += ev.device_time / 1e3 if hasattr(ev, "device_time") else ev.cuda_time / 1e3
    return {k: (int(v[0]), float(v[1])) for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])}


def show(title: str, table: dict[str, tuple[int, float]] | str, limit: int = 18) -> None:
    print(f"--- {title}")
    if isinstance(table, str):
        print("  ", table)
        return
    for name, (n, ms) in list(table.items())[:limit]:
        print(f"  {name[:60]:60s} {n:7d} {ms:10.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prefill", type=int, action="append")
    ap.add_argument("--decode", type=int, default=32, help="graph replays profiled")
    ap.add_argument("--out")
    ap.add_argument("--cprofile", action="store_true", help="also: the host's time by Python function")
    args = ap.parse_args()
    be = CupyBackend(0)
    model = load_model(Path(args.model), be)
    ad, cfg = model.adapter, model.cfg
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"model": args.model}
    for n in args.prefill or [128, 2048]:
        ids = rng.integers(0, cfg.vocab_size, n)

        def run(ids: np.ndarray = ids) -> None:
            cache = ad.new_cache(len(ids) + 1)
            ad.logits(ids, 0, cache)
            cp.cuda.runtime.deviceSynchronize()
            be.free_kv_cache(cache)

        run()  # warm-up: kernels compiled, cuBLAS handles made
        m = per_method(be, run)
        k = per_kernel(run)
        t0 = time.perf_counter()
        run()
        plain = (time.perf_counter() - t0) * 1e3
        if args.cprofile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(run)
            print(f"--- prefill {n}: host functions by own time (cProfile)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(14)
        show(f"prefill {n}: per backend method (sync after each), plain run {plain:.1f} ms", m)
        show(f"prefill {n}: per kernel (device time)", k)
        res[f"prefill{n}"] = {"plain_ms": plain, "methods": m, "kernels": k}
    prompt = rng.integers(0, cfg.vocab_size, 16)
    cache = ad.new_cache(16 + args.decode + 8)
    tok = int(np.argmax(ad.forward(prompt, 0, cache)))
    dec = ad.decoder(cache)
    tok = dec.greedy(tok, 16)
    tok = dec.greedy(tok, 17)
    if getattr(dec, "graph", None) is not None:

        def replay() -> None:
            dec.replay(args.decode)
            dec.stream.synchronize()

        k = per_kernel(replay)
        if not isinstance(k, str):
            k = {name: (n, ms * 1e3 / args.decode) for name, (n, ms) in k.items()}  # µs per step
        show(f"decode graph: per kernel, µs per step over {args.decode} replays", k, 24)
        res["decode_us_per_step"] = k
    dec.close()
    be.free_kv_cache(cache)
    be.close()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_profile.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

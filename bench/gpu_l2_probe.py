#!/usr/bin/env python3
"""Does bringing weights into L2 ahead of a product make it faster, and which way of asking
for it works? A probe on the GPU.

    python bench/gpu_l2_probe.py --model FILE.gguf [--mb 8,32] [--out DIR]

For the model's output head and the first layer's gate/up product, each timed alone (CUDA
events around one replay of the product's recorded graph; medians of 7): L2 is first flushed
by writing a 256 MiB buffer, then the weights' first N MiB are asked for by one of
    none      nothing (cold: every byte from HBM)
    bulk N    cp.async.bulk.prefetch.L2 of N bytes (1 MiB, 256, 64, 16 KiB), one a thread
              (attn_decode's hints, dropped on 2026-12-06, took 1 MiB)
    lines     prefetch.global.L2 of every 128-byte line, one a thread
    read      every 16 bytes loaded (ld.global.cg: into L2, not L1) and summed
then a kernel spins for 1 ms (asynchronous prefetches land meanwhile, and the GPU stays busy
while the host queues the rest) before the product runs. A way that works makes the product
faster by about N MiB over HBM's bandwidth, as long as L2 holds them. Prints a table; writes
DIR/gpu_l2_probe.json.
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

SRC = r"""
extern "C" __global__ void bulk(unsigned long long p, unsigned long long n, unsigned chunk) {
    const unsigned long long a = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * chunk;
    if (a < n) {
        const unsigned m = (unsigned)min(n - a, (unsigned long long)chunk);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + a), "r"(m) : "memory");
    }
}
extern "C" __global__ void lines(unsigned long long p, unsigned long long n) {
    const unsigned long long a = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 128ull;
    if (a < n) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + a));
}
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 >= ns) break;
        __nanosleep(1000);
    }
}
extern "C" __global__ void readcg(unsigned long long p, unsigned long long n, unsigned* sink) {
    const unsigned long long a = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 16ull;
    if (a < n) {
        const uint4 v = __ldcg((const uint4*)(p + a));
        if ((v.x ^ v.y ^ v.z ^ v.w) == 0x9e3779b9u) atomicAdd(sink, 1u);
    }
}
"""

BULK = {"bulk 1M": 1 << 20, "bulk 256K": 1 << 18, "bulk 64K": 1 << 16, "bulk 16K": 1 << 14}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mb", default="8,32")
    ap.add_argument("--out")
    args = ap.parse_args()
    be = cb.CupyBackend(0)
    model = load_model(Path(args.model), be)
    ad, cfg = model.adapter, model.cfg
    mod = cp.RawModule(code=SRC)
    k_bulk, k_lines, k_read = mod.get_function("bulk"), mod.get_function("lines"), mod.get_function("readcg")
    k_spin = mod.get_function("spin")
    sink = cp.zeros(1, dtype=cp.uint32)
    flush_buf = cp.empty(256 << 20, dtype=cp.uint8)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((1, cfg.n_embd), dtype=np.float32))
    ly = ad.layers[0]
    products: dict[str, tuple[list[Any], Any]] = {
        "head": ([ad.output], lambda: be.norm_linears(x, ad.out_norm, cfg.norm_eps, [ad.output], [None])),
        "gate/up (layer 0)": (
            [ly.w_gate, ly.w_up],
            lambda: be.norm_swiglu(x, ly.ffn_norm, cfg.norm_eps, ly.w_gate, ly.w_up),
        ),
    }

    def ask(way: str, ptr: int, n: int) -> None:
        p, nn = np.uint64(ptr), np.uint64(n)
        if way.startswith("bulk"):
            chunk = BULK[way]
            k_bulk((-(-n // (chunk * 64)),), (64,), (p, nn, np.uint32(chunk)))
        elif way == "lines":
            k_lines((-(-n // (128 * 256)),), (256,), (p, nn))
        elif way == "read":
            k_read((-(-n // (16 * 256)),), (256,), (p, nn, sink))

    stream = cp.cuda.Stream(non_blocking=True)
    graphs: dict[str, Any] = {}
    with stream:
        for name, (_, fn) in products.items():
            fn()  # compile and warm
            stream.synchronize()
            stream.begin_capture()
            fn()
            graphs[name] = stream.end_capture()

    def timed(name: str, way: str, ws: list[Any], n: int) -> float:
        """n bytes of the weights ws (of each, its first n / len(ws)) asked for in the way given."""
        out = []
        with stream:
            for _ in range(7):
                flush_buf.fill(1)
                for w in ws if way != "none" else []:
                    ask(way, w.raw.data.ptr, min(n // len(ws), w.nbytes))
                k_spin((1,), (1,), (np.uint64(1_000_000),))
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record(stream)
                graphs[name].launch(stream)
                end.record(stream)
                end.synchronize()
                out.append(cp.cuda.get_elapsed_time(start, end) * 1e3)
        return float(np.median(out))

    ways = ["none", *BULK, "lines", "read"]
    sizes = [int(v) for v in args.mb.split(",")]
    res: dict[str, dict[str, float]] = {}
    for name, (ws, _) in products.items():
        total = sum(w.nbytes for w in ws) / 2**20
        for mb in sizes:
            row = {way: timed(name, way, ws, mb << 20) for way in ways}
            res[f"{name}, first {mb} MiB asked ({total:.1f} in all)"] = row  # (all, past its size)
            print(name, mb, {k: round(v, 1) for k, v in row.items()}, flush=True)
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\n=== L2 probe, µs per product call, {dev}")
    print(f"{'product':48s}" + "".join(f"{w:>10s}" for w in ways))
    for lab, row in res.items():
        print(f"{lab:48s}" + "".join(f"{row[w]:10.1f}" for w in ways))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_l2_probe.json").write_text(json.dumps(res, indent=1))
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

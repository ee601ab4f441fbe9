#!/usr/bin/env python3
"""What one kernel handing its output to the next costs in a recorded chain, by the way the
next one waits. A probe on the GPU, for the decode step's ~120 dependent kernels.

    python bench/gpu_handoff_probe.py [--kernels 120] [--out DIR]

A chain of K kernels is recorded into a CUDA graph, every launch with programmatic
dependent launch (worker/backends/pdl.py) so that each kernel's blocks start while the one
before runs; each block reads one value the kernel before wrote and writes its own. The
ways of waiting for that input:
    pdl        griddepcontrol.wait, as the decode kernels do (returns once the kernel before
               has completed and its writes are visible)
    flag       each block of the kernel before, its value written, fences and adds 1 to that
               kernel's counter (release); a waiting block's thread 0 loads the counter
               (ld.acquire.gpu) until every block has counted, sleeping N ns between loads
    plain      launches without the attribute (each kernel starts once the last has drained)
Grids of 132 and 448 blocks of 256 threads (the decode step's products have 112 to 528).
Prints µs per kernel (graph replays timed with events, medians of 5); writes
DIR/gpu_handoff_probe.json. A way that beats pdl by some fraction of a µs a kernel would
save that x ~120 a decode step.
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

from worker.backends.pdl import PdlLauncher  # noqa: E402

SRC = r"""
extern "C" __global__ void link(const float* __restrict__ prev, float* __restrict__ cur, int nprev,
                                unsigned long long* flags, int idx, int mode, int sleep_ns) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (mode == 0) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else if (idx > 0) {
        if (threadIdx.x == 0) {
            const unsigned long long* f = flags + idx - 1;
            for (;;) {
                unsigned long long c;
                asm volatile("ld.acquire.gpu.u64 %0, [%1];" : "=l"(c) : "l"(f) : "memory");
                if (c >= (unsigned long long)nprev) break;
                if (sleep_ns > 0) __nanosleep(sleep_ns);
            }
        }
        __syncthreads();
    }
    float v = 0.f;
    if (threadIdx.x < 32) v = prev[(blockIdx.x + threadIdx.x) % nprev];
    v = v + 1.f;
    if (threadIdx.x == 0) cur[blockIdx.x] = v;
    if (mode != 0) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(flags + idx, 1ull);
        }
    }
}
"""

WAYS = {"pdl": (0, 0, True), "flag, no sleep": (1, 0, True), "flag, sleep 32 ns": (1, 32, True),
        "flag, sleep 200 ns": (1, 200, True), "plain": (0, 0, False)}  # fmt: skip


def chain(
    fn: Any, pdl: PdlLauncher | None, stream: Any, bufs: Any, flags: Any, grid: int, mode: int, sleep_ns: int
) -> None:
    """The K launches (K = len(flags)), after memsets that start each replay from zeros."""
    flags.fill(0)
    bufs.fill(0)
    for i in range(len(flags)):
        a = (bufs[i], bufs[i + 1], np.int32(grid), flags, np.int32(i), np.int32(mode), np.int32(sleep_ns))
        if pdl is not None:
            pdl(fn.kernel.ptr, grid, 256, a, 0, stream.ptr)
        else:
            fn((grid,), (256,), a)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", type=int, default=120)
    ap.add_argument("--out")
    args = ap.parse_args()
    k = args.kernels
    fn = cp.RawModule(code=SRC).get_function("link")
    launcher = PdlLauncher()
    res: dict[str, dict[str, float]] = {}
    stream = cp.cuda.Stream(non_blocking=True)
    for grid in (132, 448):
        bufs = cp.zeros((k + 1, 512), dtype=cp.float32)
        flags = cp.zeros(k, dtype=cp.uint64)
        row = {}
        for way, (mode, sleep_ns, use_pdl) in WAYS.items():
            pdl = launcher if use_pdl else None
            with stream:
                chain(fn, pdl, stream, bufs, flags, grid, mode, sleep_ns)
                stream.synchronize()
                stream.begin_capture()
                chain(fn, pdl, stream, bufs, flags, grid, mode, sleep_ns)
                g = stream.end_capture()
                g.launch(stream)
                stream.synchronize()
                times = []
                for _ in range(5):
                    start, end = cp.cuda.Event(), cp.cuda.Event()
                    start.record(stream)
                    for _ in range(10):
                        g.launch(stream)
                    end.record(stream)
                    end.synchronize()
                    times.append(cp.cuda.get_elapsed_time(start, end) * 1e3 / 10 / k)
            ok = float(bufs[k, 0].get()) == float(k)  # every link saw the one before's value
            row[way] = float(np.median(times)) if ok else float("nan")
            print(grid, way, round(row[way], 3), "ok" if ok else "WRONG VALUE", flush=True)
        res[f"{grid} blocks"] = row
    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"\n=== handoff probe, µs per kernel of a {k}-kernel chain, {dev}")
    print(f"{'grid':12s}" + "".join(f"{w:>20s}" for w in WAYS))
    for lab, row in res.items():
        print(f"{lab:12s}" + "".join(f"{row[w]:20.3f}" for w in WAYS))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_handoff_probe.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where a recorded decode step's time goes, kernel by kernel, as the GPU ran it.

    python bench/gpu_timeline.py --model FILE.gguf [--steps N] [--bps gate/up=2,...] [--ablate N] [--out DIR]

Compiles the CUDA module with FMV_TIMELINE (decode.cu): every decode kernel stamps
%globaltimer when its first block starts, when its first and last blocks pass pdl_wait
(griddepcontrol.wait: the previous kernel has finished and its writes are visible), and when
its last block ends. The step recorded from that module is replayed N times back to back, as
greedy decoding replays it. Per kernel kind (medians over layers and steps, µs):

    work     its first block past the wait -> its last block's end: the kernel's own time on
             the critical path, once its input exists
    handoff  the previous kernel's last block's end -> this one's first block past the wait:
             what a kernel boundary costs with programmatic dependent launch
    stagger  its first -> last block past the wait (blocks that were not resident yet)
    ahead    its first block's start -> its first block past the wait (how early it launched)
    p0 p1 p2 its first block past the wait -> the last block past a point: products, the input
             loaded and rounded / the dot products done / the rows written (round_output and
             the end follow); attention, RoPE and the cache rows written / the softmax done
    late     blocks that started less than 1.5 µs before they passed the wait: no slot for
             them while the kernel before ran, so their weights were not staged ahead
    last up  its first block past the wait -> its last block's start

work + handoff summed over a step's kernels is the step, less its first kernel (the
embedding, not stamped) and the gap between replays. Stamps cost a few atomics per block,
so the instrumented step runs a little slower than the shipped one; both are timed.
Writes DIR/gpu_timeline.json.
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

sys.path.insert(0, str(ROOT / "bench"))
from gpu_decode_ablation import product_keys, replay_us  # noqa: E402
from timeline_summary import summarize  # noqa: E402

TL_MAX = 2048


def module(timeline: bool, ablate: int = 0) -> Any:
    src = cb.KERNELS_PATH.read_text() + cb.DECODE_KERNELS_PATH.read_text() + cb.PREFILL_KERNELS_PATH.read_text()
    return cp.RawModule(code=f"#define FMV_TIMELINE {int(timeline)}\n#define FMV_ABLATE {ablate}\n" + src)


def global_array(mod: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    return cp.ndarray(shape, dtype=dtype, memptr=mod.get_global(name))


def record(be: Any, ad: Any, prompt: np.ndarray, steps: int) -> tuple[Any, Any]:
    cache = ad.new_cache(len(prompt) + steps + 8)
    ad.forward(prompt, 0, cache)
    dec = ad.decoder(cache)
    tok = dec.greedy(1, len(prompt))
    dec.greedy(tok, len(prompt) + 1)
    return dec, cache


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--ablate", type=int, default=0, help="decode.cu's FMV_ABLATE variant (5 to 8 compute the same)")
    ap.add_argument("--bps", default="", help="products' grids for N blocks/SM, e.g. gate/up=2,down=3")
    args = ap.parse_args()
    be = cb.CupyBackend(0)
    model = load_model(Path(args.model), be)
    ad, cfg = model.adapter, model.cfg
    # the step recorded at load used the shipped module: each module here records its own
    for shared in be._shared_decoders.values():
        shared.shared = False
        shared.close()
    be._shared_decoders.clear()
    keys = product_keys(ad)
    be._fmv_bps_for = {keys[w]: int(n) for w, n in (kv.split("=") for kv in args.bps.split(",") if kv)}
    prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, 16)
    res: dict[str, Any] = {
        "model": Path(args.model).name,
        "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
    }

    if args.ablate:
        be._module = module(False, args.ablate)
        be._functions.clear()
    dec, cache = record(be, ad, prompt, 2 * args.steps + 8)
    res["shipped step (µs)"] = replay_us(dec, args.steps)
    dec.close()
    be.free_kv_cache(cache)

    mod = module(True, args.ablate)
    be._module = mod
    be._functions.clear()
    dec, cache = record(be, ad, prompt, 2 * args.steps + 8)
    res["instrumented step (µs)"] = replay_us(dec, args.steps)
    t = global_array(mod, "tl_t", (TL_MAX, 4), cp.uint64)
    ph = global_array(mod, "tl_ph", (TL_MAX, 4), cp.uint64)
    late = global_array(mod, "tl_late", (TL_MAX,), cp.uint32)
    lastup = global_array(mod, "tl_lastup", (TL_MAX,), cp.uint64)
    meta = global_array(mod, "tl_meta", (TL_MAX,), cp.uint32)
    seq = global_array(mod, "tl_seq", (1,), cp.uint32)
    done = global_array(mod, "tl_done", (TL_MAX,), cp.uint32)
    dec.stream.synchronize()
    t[:, :2] = cp.asarray(np.full((TL_MAX, 2), np.iinfo(np.uint64).max, dtype=np.uint64))
    t[:, 2:] = 0
    ph[:] = 0
    late[:] = 0
    lastup[:] = 0
    meta[:] = 0
    seq[:] = 0
    done[:] = 0
    cp.cuda.Device().synchronize()
    dec.replay(args.steps)
    dec.stream.synchronize()
    n = int(seq.get()[0])
    tt = t.get()[:n].astype(np.int64)
    pp = ph.get()[:n].astype(np.int64)
    ll = late.get()[:n].astype(np.int64)
    lu = lastup.get()[:n].astype(np.int64)
    mm = meta.get()[:n]
    dec.close()
    be.free_kv_cache(cache)
    try:
        summary = summarize(tt, pp, ll, lu, mm, args.steps, cfg.n_ff)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    per_step, table = summary["kernels per step"], summary["kinds"]
    res["kernels per step"] = per_step
    res["step, stamped (µs, median)"] = summary["step (µs)"]
    res["kinds"] = table
    print(f"=== decode step timeline, {res['model']}, {res['device']}")
    print(
        f"step without stamps {res['shipped step (µs)']:.1f} µs; instrumented {res['instrumented step (µs)']:.1f}; "
        f"stamped end to end {res['step, stamped (µs, median)']:.1f}; {per_step} stamped kernels a step"
    )
    print(
        f"{'kernel':26s}{'n':>4s}{'work':>8s}{'handoff':>9s}{'stagger':>9s}{'ahead':>8s}{'p0':>7s}{'p1':>7s}{'p2':>7s}"
        f"{'late':>6s}{'last up':>8s}{'work/step':>11s}{'handoff/step':>14s}"
    )
    tot_w = tot_h = 0.0
    for lab, r in table.items():
        tot_w += r["work per step"]
        tot_h += r["handoff per step"]
        print(
            f"{lab:26s}{r['per step']:4d}{r['work']:8.2f}{r['handoff']:9.2f}{r['stagger']:9.2f}{r['ahead']:8.2f}"
            f"{r['p0']:7.2f}{r['p1']:7.2f}{r['p2']:7.2f}{r['late']:6.0f}{r['last up']:8.2f}"
            f"{r['work per step']:11.1f}{r['handoff per step']:14.1f}"
        )
    print(f"{'sum':26s}{'':4s}{'':8s}{'':9s}{'':9s}{'':8s}{'':35s}{tot_w:11.1f}{tot_h:14.1f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_timeline.json").write_text(json.dumps(res, indent=1))
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

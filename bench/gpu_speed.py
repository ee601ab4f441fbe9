#!/usr/bin/env python3
"""Speed of the CUDA backend beside llama.cpp (llama-bench), on the same GGUF files, one run.

    python bench/gpu_speed.py --model NAME=PATH [--model ...] --out DIR
        [--llama-bench BIN] [--http] [--reps 3]

For each file:
  ours   prefill tokens/s at 128, 512 and 2048 tokens (one forward pass as a job runs it:
         the prompt graph of its bucket up to 512 tokens; CUDA synchronised wall clock,
         median of --reps); time to first token for a 128-token prompt (prefill plus the
         first greedy id on the host), and the eager prefill's beside it; batch-1 greedy
         decode of 128 tokens through the decoder generate() uses (the CUDA graph recorded
         at load): tokens/s over the whole job and in steady state (tokens 3..128); weight
         bytes read per token, the GB/s that implies and its share of the copy bandwidth
         measured here. A model whose prompts run eagerly (gpt-oss) gets decode and TTFT only.
  llama  llama-bench -ngl 99 -fa 1 -p 128,512,2048 -n 128 -r REPS on the same file (CUDA
         build of the llama.cpp vendored by llama-cpp-python; bench/gpu.sh --speed builds it).
  http   (--http) the same 128-token greedy job through a `worker serve --device cuda`
         subprocess: client-observed tokens/s against the engine alone.
Prints one table last; writes DIR/gpu_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cupy as cp  # noqa: E402

from worker.backends.base import MoE  # noqa: E402
from worker.backends.cupy_backend import CupyBackend, DeviceMatrix  # noqa: E402
from worker.model import load_model  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from gpu_decode_ablation import replay_us  # noqa: E402

PREFILL = (128, 512, 2048)
DECODE = 128


def sync() -> None:
    cp.cuda.runtime.deviceSynchronize()


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the floor's bandwidth)."""
    n = 1 << 30
    a = cp.empty(n, dtype=cp.uint8)
    b = cp.empty(n, dtype=cp.uint8)
    b[...] = a
    sync()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        b[...] = a
        sync()
        ts.append(time.perf_counter() - t0)
    del a, b
    return 2 * n / min(ts)


def decode_bytes(adapter: Any) -> int:
    """Weight bytes one decode step reads: every matrix (the embedding table only through a
    tied output head), plus the vectors."""
    seen: set[int] = set()
    total = 0

    def add(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, DeviceMatrix) and id(obj.raw) not in seen:
            seen.add(id(obj.raw))
            total += obj.nbytes
        elif isinstance(obj, cp.ndarray) and id(obj) not in seen:
            seen.add(id(obj))
            total += int(obj.nbytes)
        elif isinstance(obj, list) and obj and isinstance(obj[0], DeviceMatrix):
            # a mixture of experts: a token reads n_expert_used of them
            total += obj[0].nbytes * adapter.cfg.n_expert_used
        elif isinstance(obj, MoE):
            for v in vars(obj).values():
                add(v)

    for layer in adapter.layers:
        for v in vars(layer).values():
            add(v)
    add(adapter.out_norm)
    add(adapter.output)
    return total


def time_greedy(be: Any, ad: Any, prompt: np.ndarray, reps: int) -> dict[str, Any]:
    """DECODE greedy steps through the job's decoder after `prompt`, reps + 1 runs (the first
    warms up): tokens/s over the whole job and in steady state (steps 3..DECODE), the first
    two steps' times (a decoder recorded per job: its eager step, then its capture; one
    recorded at load: replays), whether the ids agree across runs, the decoder's kind."""
    n = len(prompt)
    job, steady, ids_runs, first = [], [], [], []
    kind = ""
    for r in range(reps + 1):
        cache = ad.new_cache(n + DECODE + 1)
        tok = int(np.argmax(ad.forward(prompt, 0, cache)))
        dec = ad.decoder(cache)
        sync()
        stamps = [time.perf_counter()]
        ids_out = [tok]
        for i in range(DECODE):
            tok = dec.greedy(tok, n + i)
            ids_out.append(tok)
            stamps.append(time.perf_counter())
        kind = type(dec).__name__ + (" (eager)" if getattr(dec, "eager", False) else "")
        if hasattr(dec, "shared"):
            kind += " (recorded at load)" if dec.shared else " (recorded per job)"
        dec.close()
        be.free_kv_cache(cache)
        if r:
            job.append(DECODE / (stamps[-1] - stamps[0]))
            steady.append((DECODE - 2) / (stamps[-1] - stamps[2]))
            first.append((stamps[1] - stamps[0], stamps[2] - stamps[1]))
            ids_runs.append(ids_out)
    return {
        "decoder": kind,
        "tg128_job": statistics.median(job),
        "tg128_steady": statistics.median(steady),
        "first_steps_ms": [statistics.median(f[i] for f in first) * 1e3 for i in (0, 1)],
        "decode_ids_identical_across_runs": all(x == ids_runs[0] for x in ids_runs),
    }


def time_step_graph(dec: Any) -> dict[str, float]:
    """The step graph alone: device time per replay (no host round trip between tokens) and
    the host's time to launch one."""
    if getattr(dec, "graph", None) is None:
        return {}
    out = {"graph_step_us": replay_us(dec, 200)}
    t0 = time.perf_counter()
    dec.replay(200)
    t1 = time.perf_counter()
    dec.stream.synchronize()
    out["graph_launch_host_us"] = (t1 - t0) * 1e6 / 200
    return out


def step_graph(be: CupyBackend, ad: Any, prompt: np.ndarray) -> dict[str, float]:
    """time_step_graph of the job's decoder after `prompt` and two greedy steps."""
    n = len(prompt)
    cache = ad.new_cache(n + 2 + 400 + 8)  # every replay advances the position: 400 of them
    tok = int(np.argmax(ad.forward(prompt, 0, cache)))
    dec = ad.decoder(cache)
    tok = dec.greedy(tok, n)
    dec.greedy(tok, n + 1)  # (a decoder recorded per job has captured its step now)
    out = time_step_graph(dec)
    dec.close()
    be.free_kv_cache(cache)
    return out


def ttft_ms(be: CupyBackend, ad: Any, run: Any, reps: int) -> float:
    """Median ms of run(cache) (a 128-token prompt's logits, into a fresh cache of the
    adapter's) and its argmax on the host."""
    ttft = []
    for r in range(reps + 1):  # the first run warms up
        cache = ad.new_cache(129)
        sync()
        t0 = time.perf_counter()
        int(np.argmax(run(cache)))
        if r:
            ttft.append(time.perf_counter() - t0)
        be.free_kv_cache(cache)
    return statistics.median(ttft) * 1e3


def measure_decode_only(be: CupyBackend, model: Any, reps: int) -> dict[str, Any]:
    """A model whose prompts run eagerly (gpt-oss: the prefill's GEMMs of float weights go
    through CuPy, which a capture refuses): greedy decode through the job's decoder after a
    16-token prompt, and the time to first token of a 128-token prompt."""
    ad, cfg = model.adapter, model.cfg
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, 16)
    out: dict[str, Any] = {"weights_bytes": be._weights_bytes, "decode_bytes": decode_bytes(ad)}
    out["reserved_bytes"] = be._reserved_bytes()
    ids = rng.integers(0, cfg.vocab_size, 128)
    out["ttft128_ms"] = ttft_ms(be, ad, lambda c: ad.forward(ids, 0, c), reps)
    out.update(time_greedy(be, ad, prompt, reps))
    out.update(step_graph(be, ad, prompt))
    out["decode_only"] = True
    out["profile_us"] = profile_ops(be, ad)
    be.close()
    return out


def measure_ours(path: Path, reps: int) -> dict[str, Any]:
    be = CupyBackend(0)
    model = load_model(path, be)
    ad, cfg = model.adapter, model.cfg
    if not getattr(ad, "prompt_capturable", False):
        return measure_decode_only(be, model, reps)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"weights_bytes": be._weights_bytes, "decode_bytes": decode_bytes(ad)}
    for n in PREFILL:
        ids = rng.integers(0, cfg.vocab_size, n)
        times = []
        for r in range(reps + 1):  # the first run warms up (cuBLAS handles, kernels)
            cache = ad.new_cache(n + 1)
            sync()
            t0 = time.perf_counter()
            ad.forward(ids, 0, cache)  # as a job runs it: a prompt graph up to 512 tokens
            sync()
            if r:
                times.append(time.perf_counter() - t0)
            be.free_kv_cache(cache)
        out[f"pp{n}"] = n / statistics.median(times)
    ids = rng.integers(0, cfg.vocab_size, 128)
    # TTFT as a job sees it (forward: the prompt graph of its bucket, where load_model captured
    # one), and the eager prefill beside it (the same kernels launched one by one from Python)
    out["prompt_buckets"] = list(be.prompt_buckets(ad))
    out["reserved_bytes"] = be._reserved_bytes()
    # down products that took their input rounded by gate/up (load recorded the decode step)
    out["down_inputs_rounded_once_at_load"] = be.rounded_taken
    out["ttft128_ms"] = ttft_ms(be, ad, lambda c: ad.forward(ids, 0, c), reps)
    out["ttft128_eager_ms"] = ttft_ms(be, ad, lambda c: be.to_host(ad.logits(ids, 0, c))[0], reps)
    # decode: a 16-token prompt, then DECODE greedy steps through the job's decoder
    prompt = rng.integers(0, cfg.vocab_size, 16)
    out.update(time_greedy(be, ad, prompt, reps))
    out.update(step_graph(be, ad, prompt))
    out["ctx"] = model.context_length
    out["profile_us"] = profile_ops(be, ad)
    be.close()
    return out


def graph_time_us(fn: Any, reps: int = 50) -> float:
    """Device time of one call of fn, µs: `reps` calls captured in one CUDA graph (launch gaps
    as in the decode graph), replayed 5 times, timed with events."""
    stream = cp.cuda.Stream(non_blocking=True)
    pool = cp.cuda.MemoryPool()
    with stream, cp.cuda.using_allocator(pool.malloc):
        fn()  # warm-up: kernels loaded, pool filled
        stream.synchronize()
        stream.begin_capture()
        for _ in range(reps):
            fn()
        g = stream.end_capture()
        g.launch(stream)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(5):
            g.launch(stream)
        end.record(stream)
        end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e3 / (5 * reps)


def profile_ops(be: CupyBackend, ad: Any, reps: int = 50) -> dict[str, float]:
    """Device time of each fused step of a decode, µs per call: `reps` calls captured in one
    CUDA graph, replayed, timed with events (launch gaps as in the decode graph)."""
    cfg = ad.cfg
    L0 = ad.layers[0]
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.standard_normal((1, cfg.n_embd), dtype=np.float32))
    cache = ad.new_cache(4096)
    ops: dict[str, Any] = {
        "norm+qkv": lambda: be.norm_linears(
            x, L0.attn_norm, cfg.norm_eps, [L0.wq, L0.wk, L0.wv], [L0.bq, L0.bk, L0.bv]
        ),
        **(moe_ops(be, ad, x, cache) if hasattr(L0, "moe") else llama_ops(be, ad, x, cache)),
        "head": lambda: be.norm_linears(x, ad.out_norm, cfg.norm_eps, [ad.output], [None]),
    }
    logits = cp.asarray(rng.standard_normal((1, cfg.vocab_size), dtype=np.float32))
    nxt = cp.zeros(1, dtype=cp.int32)
    ops["argmax"] = lambda: be.argmax_into(logits, nxt)
    out = {name: graph_time_us(fn, reps) for name, fn in ops.items()}
    be.free_kv_cache(cache)
    # a layer: every step but the head, the argmax and the long-context attention; one down
    # projection (the mean over the layers' formats)
    layer = [v for k, v in out.items() if k not in ("head", "argmax", "attention@1024") and not k.startswith("down(")]
    downs = [v for k, v in out.items() if k.startswith("down(")]
    per_layer = sum(layer) + (statistics.mean(downs) if downs else 0.0)
    out["step_estimate_us"] = cfg.n_layer * per_layer + out["head"] + out["argmax"]
    return out


def moe_ops(be: CupyBackend, ad: Any, x: Any, cache: Any) -> dict[str, Any]:
    """gpt-oss's fused steps between the QKV products and the head (attention with sinks)."""
    cfg, L0 = ad.cfg, ad.layers[0]
    rng = np.random.default_rng(2)
    q = cp.asarray(rng.standard_normal((1, cfg.n_head, cfg.head_dim), dtype=np.float32))
    kv = cp.asarray(rng.standard_normal((1, cfg.n_kv_heads, cfg.head_dim), dtype=np.float32))
    attn = cp.asarray(rng.standard_normal((1, cfg.n_head * cfg.head_dim), dtype=np.float32))
    opts = {"kq_scale": 1.0 / np.sqrt(cfg.rope_dim), "sinks": L0.sinks}
    return {
        "attention@64": lambda: be.rope_attention(q, kv, kv, cache, 0, 64, cfg, **opts),
        "attention@1024": lambda: be.rope_attention(q, kv, kv, cache, 0, 1024, cfg, **opts),
        "o+bias+residual": lambda: be.linear_add(attn, L0.wo, x, L0.bo),
        "norm+moe": lambda: be.norm_moe(x, L0.post_norm, cfg.norm_eps, L0.moe),
    }


def llama_ops(be: CupyBackend, ad: Any, x: Any, cache: Any) -> dict[str, Any]:
    """The Llama family's fused steps between the QKV products and the head, and the down
    projection of each format the layers use."""
    cfg, L0 = ad.cfg, ad.layers[0]
    rng = np.random.default_rng(2)
    act = cp.asarray(rng.standard_normal((1, cfg.n_ff), dtype=np.float32))
    q = cp.asarray(rng.standard_normal((1, cfg.n_head, cfg.head_dim), dtype=np.float32))
    kv = cp.asarray(rng.standard_normal((1, cfg.n_kv_heads, cfg.head_dim), dtype=np.float32))
    ops: dict[str, Any] = {
        "attention@64": lambda: be.rope_attention(q, kv, kv, cache, 0, 64, cfg),
        "attention@1024": lambda: be.rope_attention(q, kv, kv, cache, 0, 1024, cfg),
        "o+residual": lambda: be.linear_add(x, L0.wo, x),
        "norm+gate/up+swiglu": lambda: be.norm_swiglu(x, L0.ffn_norm, cfg.norm_eps, L0.w_gate, L0.w_up),
    }
    for layer in ad.layers:
        w = layer.w_down
        ops.setdefault(f"down({w.type_id})+residual", lambda w=w: be.linear_add(act, w, x))
    return ops


def measure_llama(bin_path: str, path: Path, reps: int, prefill: tuple[int, ...] = PREFILL) -> dict[str, Any]:
    cmd = [bin_path, "-m", str(path), "-ngl", "99", "-fa", "1", "-p", ",".join(map(str, prefill or (0,))),
           "-n", str(DECODE), "-r", str(reps), "-o", "json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    out: dict[str, Any] = {}
    for row in json.loads(res.stdout):
        if row.get("n_gen", 0) == 0:
            out[f"pp{row['n_prompt']}"] = row["avg_ts"]
        elif row.get("n_prompt", 0) == 0:
            out[f"tg{row['n_gen']}"] = row["avg_ts"]
        out.setdefault("build", f"{row.get('build_commit', '?')} ({row.get('build_number', '?')})")
    if "pp128" in out:
        out["ttft128_ms"] = 128 / out["pp128"] * 1e3  # prefill of the prompt; llama-bench has no sampling
    return out


def measure_http(path: Path, tokens: int = DECODE) -> dict[str, Any]:
    """Greedy jobs of `tokens` tokens through a worker subprocess. A made model's tokens are
    mostly unused ids with no text (no `token` events), so the client's decode time is the
    time from `started` to `end` less the prefill the `end` event reports."""
    from tests.service.conftest import start_worker
    from tests.service.sse import iter_events

    w = start_worker("--device", "cuda", "--ctx-size", "4096", model=str(path))
    try:
        client, server = [], []
        with w.client(timeout=300) as c:
            for run in range(4):
                body = {"job_id": f"speed-{run}", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": tokens, "temperature": 0}
                t_start = end = None
                with c.stream("POST", "/execute", json=body) as r:
                    for ev in iter_events(r):
                        if ev.event == "started":
                            t_start = time.perf_counter()
                        elif ev.event in ("end", "error"):
                            end = ev.data
                            t_end = time.perf_counter()
                            break
                if run and end and t_start and end.get("tokens_out", 0) > 1:
                    n = end["tokens_out"]
                    client.append(n / (t_end - t_start - end["prefill_time_ms"] / 1e3))
                    server.append(n / (end["decode_time_ms"] / 1e3))
        return {"client_tok_s": statistics.median(client) if client else None,
                "server_tok_s": statistics.median(server) if server else None, "tokens": tokens}  # fmt: skip
    finally:
        w.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--llama-bench")
    ap.add_argument("--http", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    props = cp.cuda.runtime.getDeviceProperties(0)
    results: dict[str, Any] = {"device": props["name"].decode(), "copy_bw": copy_bandwidth(), "models": {}}
    print(f"device {results['device']}: copy bandwidth {results['copy_bw'] / 1e12:.2f} TB/s", flush=True)
    for spec in args.model:
        name, _, p = spec.partition("=")
        path = Path(p)
        entry: dict[str, Any] = {"file": path.name, "file_bytes": path.stat().st_size}
        entry["ours"] = measure_ours(path, args.reps)
        print(name, "ours", json.dumps(entry["ours"]), flush=True)
        if args.llama_bench:
            decode_only = entry["ours"].get("decode_only", False)
            entry["llama"] = measure_llama(args.llama_bench, path, args.reps, (128,) if decode_only else PREFILL)
            print(name, "llama.cpp", json.dumps(entry["llama"]), flush=True)
        if args.http and not entry["ours"].get("decode_only"):
            entry["http"] = measure_http(path)
            print(name, "http", json.dumps(entry["http"]), flush=True)
        results["models"][name] = entry
    (out_dir / "gpu_speed.json").write_text(json.dumps(results, indent=2))

    bw = results["copy_bw"]
    print("\n" + "=" * 30 + f" speed, {results['device']} " + "=" * 30)
    hdr = f"{'model':10s} {'metric':22s} {'ours':>10s} {'llama.cpp':>10s} {'ratio':>7s}"
    print(hdr)
    for name, e in results["models"].items():
        o, lc = e["ours"], e.get("llama", {})
        for key, label in [("tg128_job", "decode tok/s (job)"), ("tg128_steady", "decode tok/s (steady)"),
                           ("pp128", "prefill tok/s @128"), ("pp512", "prefill tok/s @512"),
                           ("pp2048", "prefill tok/s @2048"), ("ttft128_ms", "TTFT ms @128")]:  # fmt: skip
            if key not in o:  # decode-only (a model whose prompts run eagerly)
                continue
            ref = lc.get("tg128" if key.startswith("tg") else key)
            ratio = f"{o[key] / ref:.2f}x" if isinstance(ref, float) and ref else "-"
            if key == "ttft128_ms" and isinstance(ref, float):
                ratio = f"{ref / o[key]:.2f}x"  # > 1: ours is faster
            print(f"{name:10s} {label:22s} {o[key]:10.1f} {ref if ref is None else round(ref, 1)!s:>10s} {ratio:>7s}")
        gbs = o["decode_bytes"] * o["tg128_steady"]
        floor = bw / o["decode_bytes"]
        print(f"{name:10s} {'weights/token MB':22s} {o['decode_bytes'] / 1e6:10.1f}")
        print(f"{name:10s} {'achieved GB/s':22s} {gbs / 1e9:10.1f}   {100 * gbs / bw:.1f}% of the copy bandwidth; "
              f"floor {floor:.0f} tok/s")
        if "http" in e and e["http"].get("client_tok_s"):
            h = e["http"]
            print(f"{name:10s} {'HTTP tok/s (client)':22s} {h['client_tok_s']:10.1f}   engine alone (server) "
                  f"{h['server_tok_s']:.1f}; in-process decoder {o['tg128_job']:.1f}: "
                  f"{100 * (h['client_tok_s'] / o['tg128_job'] - 1):+.1f}%")
        print(f"{name:10s} decoder {o['decoder']}, ids identical across runs: {o['decode_ids_identical_across_runs']}")
        if o.get("decode_only"):
            print(f"{name:10s} decode only (prompts run eagerly); reserved at load with the decode step "
                  f"{o['reserved_bytes'] / 2**20:.0f} MiB")
        else:
            print(f"{name:10s} TTFT @128 eager prefill {o['ttft128_eager_ms']:.1f} ms; prompt graphs for "
                  f"{o['prompt_buckets'] or 'no'} tokens; reserved at load with the decode step "
                  f"{o['reserved_bytes'] / 2**20:.0f} MiB; down inputs rounded by gate/up while recording: "
                  f"{o['down_inputs_rounded_once_at_load']}")
        prof = o.get("profile_us", {})
        print(f"{name:10s} per call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()))
        if prof:
            print(f"{name:10s} step from the parts {prof['step_estimate_us']:.0f} us; measured "
                  f"{1e6 / o['tg128_steady']:.0f} us per token; graph replay alone "
                  f"{o.get('graph_step_us', float('nan')):.0f} us "
                  f"(host launch {o.get('graph_launch_host_us', 0):.0f} us); a job's first two steps "
                  f"{' and '.join(f'{t:.1f}' for t in o.get('first_steps_ms', []))} ms")
        if "error" in lc:
            print(f"{name:10s} llama-bench failed: {lc['error'][-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

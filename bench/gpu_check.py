#!/usr/bin/env python3
"""GPU check of the CUDA backend against the NumPy reference, on a CUDA machine.

    python bench/gpu_check.py --fixtures DIR --out OUTDIR [--budget-s 420] [--tiny]
        [--oom-jobs 50] [--sections kernels,oom,arch,models]

Sections (each one runs even if an earlier one failed; the table at the end says which):
  kernels   per-kernel relative error vs the NumPy backend on fresh random inputs, several
            shapes including the real models' (bound 1e-5 for f32-accumulated products on
            identically rounded inputs; activation rounding and embedding lookups bitwise)
  oom       --oom-jobs (50) jobs under a --vram-limit, alternating normal / over the limit
            (KV cache, then prefill activations, in turn); every over-limit job must raise
            OutOfDeviceMemory (VRAM_OOM), every normal one give the same logits bits, and pool
            memory must return to its baseline after each job (series printed compactly)
  arch      the tiny phi3 / gpt2 / gpt-oss fixtures (fixtures/build.py, seed 0), CUDA vs
            NumPy teacher-forced, against the 1-ulp-nudged reference's noise floor; F32 twins
  model:*   whole model, CUDA vs NumPy: last-position logits after prefill, greedy ids for
            N tokens on 4 random-id prompts (independent runs), teacher-forced argmax
            agreement and logits error along the reference's tokens, 3 runs bit-identical,
            residency
  speed     prefill tokens/s (512 tokens) and decode tokens/s (batch 1), CUDA events
Writes OUTDIR/gpu_check.json; prints the table last.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "cuda")]

import cupy as cp  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from make_fixture import RawTensors, build_all  # noqa: E402

from worker.adapters import adapter_for  # noqa: E402
from worker.backends.base import OutOfDeviceMemory  # noqa: E402
from worker.backends.cupy_backend import CupyBackend  # noqa: E402
from worker.backends.numpy_backend import NumpyBackend  # noqa: E402
from worker.gguf_file import GGUFFile  # noqa: E402
from worker.model_config import ModelConfig  # noqa: E402
from worker.quants import roundtrip_activations, roundtrip_q8_1  # noqa: E402

ROWS: list[tuple[str, str, str, str, str]] = []  # section, item, value, bound, verdict
RESULTS: dict[str, Any] = {}
T0 = time.perf_counter()


def row(section: str, item: str, value: str, bound: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("ok" if ok else "FAIL")
    ROWS.append((section, item, value, bound, verdict))
    print(f"[{time.perf_counter() - T0:6.1f}s] {section:9s} {item:44s} {value:>24s} {bound:>9s} {verdict}", flush=True)


def rel(a: Any, b: Any) -> float:
    a = np.asarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def same_bits(a: Any, b: Any) -> bool:
    a = np.ascontiguousarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def load(path: Path, be: Any) -> tuple[ModelConfig, Any]:
    """As load_model loads (prepare: the CUDA backend records the decode step and the prompt
    graphs, so the checks below run what a job runs)."""
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    ad = adapter_for(f, cfg, be)
    ad.load(f)
    be.prepare(ad, min(4096, cfg.context_length))
    return cfg, ad


# ------------------------------------------------------------------------------------ kernels
LINEAR_CASES = [
    # (label, type, n_out, n_in): every format, then the real models' products
    ("generic", T.F32, 256, 333),
    ("generic", T.F16, 256, 333),
    ("generic", T.BF16, 256, 333),
    ("generic", T.Q4_0, 256, 512),
    ("generic", T.Q4_1, 256, 512),
    ("generic", T.Q5_0, 256, 512),
    ("generic", T.Q5_1, 256, 512),
    ("generic", T.Q8_0, 256, 512),
    ("generic", T.Q4_K, 256, 1024),
    ("generic", T.Q5_K, 256, 1024),
    ("generic", T.Q6_K, 256, 1024),
    ("generic", T.MXFP4, 256, 512),
    ("smol q/o", T.Q4_1, 576, 576),
    ("smol k/v", T.Q4_1, 192, 576),
    ("smol gate/up", T.Q4_1, 1536, 576),
    ("smol down", T.Q4_1, 576, 1536),
    ("smol head", T.Q8_0, 49152, 576),
    ("qwen q/o", T.Q5_0, 896, 896),
    ("qwen k", T.Q5_0, 128, 896),
    ("qwen v", T.Q8_0, 128, 896),
    ("qwen gate/up", T.Q5_0, 4864, 896),
    ("qwen down", T.Q6_K, 896, 4864),
    ("qwen down", T.Q4_K, 896, 4864),
    ("qwen head", T.Q8_0, 151936, 896),
]
LINEAR_BOUND = 1e-5


def check_kernels(gpu: CupyBackend, tiny: bool) -> None:
    rng = np.random.default_rng(int(time.time()))  # fresh inputs every run
    ref = NumpyBackend()
    out: list[dict[str, Any]] = []
    cases = [c for c in LINEAR_CASES if not tiny or c[0] == "generic"]
    for label, qt, n_out, n_in in cases:
        src = RawTensors()
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.1))
        src.add_float("w", w, int(qt))
        wn, wc = ref.matrix(src, "w"), gpu.matrix(src, "w")
        errs = {}
        for n in (1, 16):
            x = rng.standard_normal((n, n_in), dtype=np.float32) * np.float32(rng.uniform(0.1, 10))
            y_ref = ref.linear(x, wn)
            y = gpu.linear(cp.asarray(x), wc)
            # float64 truth on the same rounded inputs, for scale
            if wn.mins is not None:
                xq, s16 = roundtrip_q8_1(x)
                exact = xq.reshape(n, -1, 32).sum(-1, dtype=np.float64)
                y64 = xq.astype(np.float64) @ wn.w.T.astype(np.float64) + (s16 - exact) @ wn.mins.T.astype(np.float64)
            else:
                y64 = roundtrip_activations(x, wn.act_type).astype(np.float64) @ wn.w.T.astype(np.float64)
            errs[n] = (rel(y, y_ref), rel(y, y64), rel(y_ref, y64))
        del wn, wc, src
        worst = max(e[0] for e in errs.values())
        out.append(
            {
                "label": label,
                "type": qt.name,
                "n_out": n_out,
                "n_in": n_in,
                "rel_vs_numpy": {n: e[0] for n, e in errs.items()},
                "rel_cuda_vs_f64": {n: e[1] for n, e in errs.items()},
                "rel_numpy_vs_f64": {n: e[2] for n, e in errs.items()},
            }
        )
        row(
            "kernel",
            f"linear {label} {qt.name} {n_out}x{n_in} n=1|16",
            f"{errs[1][0]:.1e}|{errs[16][0]:.1e}",
            f"<{LINEAR_BOUND:.0e}",
            worst < LINEAR_BOUND,
        )
    RESULTS["linear"] = out

    # activation rounding: bitwise
    for act, k in (("q8_0", 896), ("q8_1", 576), ("q8_k", 4864), ("f16", 896), ("bf16", 896)):
        x = (rng.standard_normal((64, k)) * rng.uniform(0.01, 30, (64, 1))).astype(np.float32)
        xq, s = gpu._round_activations(cp.asarray(x), act)
        ok = same_bits(xq, roundtrip_activations(x, act))
        if act == "q8_1":
            ok = ok and same_bits(s, roundtrip_q8_1(x)[1])
        mism = int((cp.asnumpy(xq) != roundtrip_activations(x, act)).sum())
        row("kernel", f"activation round trip {act} 64x{k}", f"{mism} mismatches", "bitwise", ok)

    # embedding lookups: bitwise
    for qt, n_embd in (
        (T.Q8_0, 576),
        (T.Q5_0, 896),
        (T.Q4_1, 576),
        (T.Q4_K, 512),
        (T.Q6_K, 512),
        (T.F16, 300),
        (T.MXFP4, 512),
    ):
        src = RawTensors()
        src.add_float("e", rng.standard_normal((1000, n_embd), dtype=np.float32), int(qt))
        ids = rng.integers(0, 1000, 64)
        a = gpu.embed(gpu.embedding(src, "e"), ids)
        b = ref.embed(ref.embedding(src, "e"), ids)
        row("kernel", f"embedding {qt.name} 64 rows of {n_embd}", f"rel {rel(a, b):.1e}", "bitwise", same_bits(a, b))

    # norm, rope, attention, swiglu
    x = rng.standard_normal((33, 896), dtype=np.float32) * 5
    wv = rng.standard_normal(896, dtype=np.float32)
    e = rel(gpu.rms_norm(cp.asarray(x), cp.asarray(wv), 1e-6), ref.rms_norm(x, wv, 1e-6))
    row("kernel", "rms_norm 33x896", f"{e:.1e}", "<1e-06", e < 1e-6)
    g = rng.standard_normal((17, 4864), dtype=np.float32) * 4
    u = rng.standard_normal((17, 4864), dtype=np.float32)
    e = rel(gpu.swiglu(cp.asarray(g), cp.asarray(u)), ref.swiglu(g, u))
    row("kernel", "swiglu 17x4864", f"{e:.1e}", "<1e-06", e < 1e-6)
    for arch, n_head, n_kv, d, base in (("llama", 9, 3, 64, 1e5), ("qwen2", 14, 2, 64, 1e6)):
        cfg = ModelConfig(
            architecture=arch,
            name="x",
            n_layer=2,
            n_embd=n_head * d,
            n_ff=4 * n_head * d,
            n_head=n_head,
            n_kv_heads=n_kv,
            head_dim=d,
            rope_dim=d,
            rope_base=base,
            rope_style="normal" if arch == "llama" else "neox",
            norm_eps=1e-6,
            context_length=32768,
            vocab_size=1000,
            tied_embeddings=False,
        )
        xr = rng.standard_normal((40, n_head, d), dtype=np.float32)
        pos = np.arange(1000, 1040)
        e = rel(gpu.rope(cp.asarray(xr), pos, cfg), ref.rope(xr, pos, cfg))
        row("kernel", f"rope {cfg.rope_style} 40x{n_head}x{d} pos 1000+", f"{e:.1e}", "<1e-06", e < 1e-6)
        cn, cc = ref.new_kv_cache(cfg, 700), gpu.new_kv_cache(cfg, 700)
        start, worst = 0, {}
        for n in (512, 1, 1, 100, 1):
            q = rng.standard_normal((n, n_head, d), dtype=np.float32) * 2
            k = rng.standard_normal((n, n_kv, d), dtype=np.float32) * 2
            v = rng.standard_normal((n, n_kv, d), dtype=np.float32)
            o_ref = ref.attention(q, k, v, cn, 1, start)
            o = gpu.attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), cc, 1, start)
            key = "prefill" if n > 1 else "decode"
            worst[key] = max(worst.get(key, 0.0), rel(o, o_ref))
            start += n
        gpu.free_kv_cache(cc)
        for key, e in worst.items():
            row("kernel", f"attention {key} {n_head}/{n_kv} heads d={d} T<={start}", f"{e:.1e}", "<1e-04", e < 1e-4)


def check_ext_ops(gpu: CupyBackend) -> None:
    """Operations of gpt2 / phi3 / gpt-oss (beyond llama and qwen2)."""
    rng = np.random.default_rng(int(time.time()) + 1)
    ref = NumpyBackend()
    x = rng.standard_normal((33, 768), dtype=np.float32) * 3 + 1
    w, b = rng.standard_normal(768, dtype=np.float32), rng.standard_normal(768, dtype=np.float32)
    e = rel(gpu.layer_norm(cp.asarray(x), cp.asarray(w), cp.asarray(b), 1e-5), ref.layer_norm(x, w, b, 1e-5))
    row("kernel", "layer_norm 33x768 (gpt2)", f"{e:.1e}", "<1e-06", e < 1e-6)
    g = rng.standard_normal((17, 3072), dtype=np.float32) * 5
    ok = same_bits(gpu.gelu(cp.asarray(g)), ref.gelu(g))
    row("kernel", "gelu (f16 table) 17x3072", "bitwise" if ok else "differs", "bitwise", ok)
    u = rng.standard_normal((17, 2880), dtype=np.float32) * 8
    g = g[:, :2880].copy()
    e = rel(gpu.swiglu_oai(cp.asarray(g), cp.asarray(u), 1.702, 7.0), ref.swiglu_oai(g, u, 1.702, 7.0))
    row("kernel", "swiglu_oai 17x2880 (gpt-oss)", f"{e:.1e}", "<1e-06", e < 1e-6)
    cfg = ModelConfig(
        architecture="gpt-oss",
        name="x",
        n_layer=2,
        n_embd=2880,
        n_ff=2880,
        n_head=64,
        n_kv_heads=8,
        head_dim=64,
        rope_dim=64,
        rope_base=150000.0,
        rope_style="neox",
        norm_eps=1e-5,
        context_length=131072,
        vocab_size=1000,
        tied_embeddings=False,
        rope_freq_scale=1 / 32,
        rope_ext_factor=1.0,
        rope_n_ctx_orig=4096,
    )
    xr = rng.standard_normal((20, 64, 64), dtype=np.float32)
    pos = np.arange(3000, 3020)
    ok = same_bits(gpu.rope(cp.asarray(xr), pos, cfg), ref.rope(xr, pos, cfg))
    row("kernel", "rope YaRN 20x64x64 (gpt-oss)", "bitwise" if ok else "differs", "bitwise", ok)
    sinks = rng.standard_normal(64, dtype=np.float32) * 2
    for label, opts in (
        ("sinks+window 128", {"sinks": sinks, "window": 128}),
        ("sinks", {"sinks": sinks}),
        ("kq_scale 1 (phi3)", {"kq_scale": 1.0}),
    ):
        cn, cc = ref.new_kv_cache(cfg, 400), gpu.new_kv_cache(cfg, 400)
        start, worst = 0, 0.0
        for n in (300, 1, 1, 40):
            q = rng.standard_normal((n, 64, 64), dtype=np.float32) * 0.5
            k = rng.standard_normal((n, 8, 64), dtype=np.float32) * 2
            v = rng.standard_normal((n, 8, 64), dtype=np.float32)
            o_ref = ref.attention_ext(q, k, v, cn, 0, start, **opts)
            gopts = {**opts, "sinks": cp.asarray(sinks)} if "sinks" in opts else opts
            o = gpu.attention_ext(cp.asarray(q), cp.asarray(k), cp.asarray(v), cc, 0, start, **gopts)
            worst = max(worst, rel(o, o_ref))
            start += n
        gpu.free_kv_cache(cc)
        row("kernel", f"attention_ext {label}, 64/8 heads", f"{worst:.1e}", "<1e-04", worst < 1e-4)


# ------------------------------------------------------------------------------------ models
def greedy(
    ad: Any, prompt: np.ndarray, n_new: int, capacity: int, deadline: float
) -> tuple[list[int], list[np.ndarray]]:
    cache = ad.new_cache(capacity)
    try:
        logits = ad.forward(prompt, 0, cache)
        ids, all_logits = [], [logits]
        pos = len(prompt)
        for _ in range(n_new):
            tok = int(np.argmax(logits))
            ids.append(tok)
            if len(ids) == n_new or time.perf_counter() > deadline:
                break
            logits = ad.forward(np.array([tok]), pos, cache)
            all_logits.append(logits)
            pos += 1
        return ids, all_logits
    finally:
        ad.backend.free_kv_cache(cache)


def decoder_greedy(ad: Any, prompt: np.ndarray, n: int, capacity: int) -> list[int]:
    """n greedy ids as a job takes them: the prompt, then the decoder's device argmax steps
    (CUDA: the step recorded at load, replayed)."""
    cache = ad.new_cache(capacity)
    try:
        ids = [int(np.argmax(ad.forward(prompt, 0, cache)))]
        dec = ad.decoder(cache)
        try:
            for i in range(n - 1):
                ids.append(dec.greedy(ids[-1], len(prompt) + i))
        finally:
            dec.close()
        return ids
    finally:
        ad.backend.free_kv_cache(cache)


def forced(ad: Any, prompt: np.ndarray, ids: list[int], capacity: int) -> list[np.ndarray]:
    """Logits along a given continuation: after the prompt, then after each of ids[:-1]."""
    cache = ad.new_cache(capacity)
    try:
        out = [ad.forward(prompt, 0, cache)]
        for i, tok in enumerate(ids[:-1]):
            out.append(ad.forward(np.array([tok]), len(prompt) + i, cache))
        return out
    finally:
        ad.backend.free_kv_cache(cache)


class NudgedNumpy(NumpyBackend):
    """The reference with every product's output moved by -1, 0 or +1 ulp at random: what a
    different (equally correct) float32 summation order does. Its distance from the plain
    reference is the noise floor any second implementation of the quantized model sits on."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = np.random.default_rng(seed)

    def linear(self, x: np.ndarray, w: Any, bias: np.ndarray | None = None) -> np.ndarray:
        y = super().linear(x, w, bias)
        step = self._rng.integers(-1, 2, y.shape)
        y = np.where(step > 0, np.nextafter(y, np.float32(np.inf)), y)
        return np.where(step < 0, np.nextafter(y, np.float32(-np.inf)), y).astype(np.float32)


def f32_twin(path: Path) -> Path:
    """The same model with every weight dequantized to F32 (fixtures/convert.py): products then
    use unrounded activations, so CUDA vs NumPy shows the forward pass's own agreement."""
    from fixtures.convert import dequantize_gguf

    twin = path.with_name(path.stem + "-f32twin.gguf")
    if not twin.exists():
        dequantize_gguf(path, twin.with_suffix(".tmp"), "F32").rename(twin)
    return twin


def check_twin(name: str, path: Path, prompts: list[np.ndarray], n_forced: int) -> None:
    sec = f"model:{name[:5]}"
    t = time.perf_counter()
    twin = f32_twin(path)
    _, ref_ad = load(twin, NumpyBackend())
    gpu = CupyBackend(0)
    try:
        _, gpu_ad = load(twin, gpu)
        worst, agree, total = 0.0, 0, 0
        cap = max(len(p) for p in prompts) + n_forced + 2
        for prompt in prompts:
            ids, logits_ref = greedy(ref_ad, prompt, n_forced, cap, float("inf"))
            logits = forced(gpu_ad, prompt, ids, cap)
            worst = max(worst, max(rel(a, b) for a, b in zip(logits, logits_ref, strict=True)))
            agree += sum(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(logits, logits_ref, strict=True))
            total += len(logits)
    finally:
        gpu.close()
    RESULTS[f"f32twin_{name}"] = {
        "max_logits_rel": worst,
        "argmax_agree": agree,
        "steps": total,
        "seconds": time.perf_counter() - t,
    }
    row(sec, f"F32 twin: logits rel err, 4 prompts x {n_forced} steps", f"{worst:.1e}", "<1e-03", worst < 1e-3)
    row(sec, "F32 twin: teacher-forced argmax agreement", f"{agree}/{total}", "all", agree == total)


def check_model(name: str, path: Path, gpu_ad: Any, n_new: int, deadline: float) -> None:
    sec = f"model:{name[:5]}"
    res: dict[str, Any] = {}
    t = time.perf_counter()
    cfg, ref_ad = load(path, NumpyBackend())
    res["numpy_load_s"] = time.perf_counter() - t
    rng = np.random.default_rng(1234)
    prompts = [rng.integers(0, cfg.vocab_size, n) for n in (5, 17, 40, 64)]
    cap = 64 + n_new + 8
    # determinism: 3 CUDA runs, prompt 0 + 16 forced steps
    seq = [int(i) for i in rng.integers(0, cfg.vocab_size, 17)]
    runs = [np.stack(forced(gpu_ad, prompts[1], seq, cap)) for _ in range(3)]
    det = same_bits(runs[1], runs[0]) and same_bits(runs[2], runs[0])
    res["deterministic_3_runs"] = det
    row(sec, "3 runs (prefill 17 + 16 decode) bit-identical", str(det), "True", det)
    # noise floor of the quantized model: NumPy vs NumPy with each product nudged by <= 1 ulp
    nudged_ad = copy.copy(ref_ad)  # same weights, nudged products
    nudged_ad.backend = NudgedNumpy(99)
    floor = []
    for prompt in prompts:
        c1, c2 = ref_ad.new_cache(len(prompt)), nudged_ad.new_cache(len(prompt))
        floor.append(rel(nudged_ad.forward(prompt, 0, c2), ref_ad.forward(prompt, 0, c1)))
    del nudged_ad
    res["noise_floor_prefill_rel"] = floor
    row(sec, "noise floor: NumPy vs NumPy+-1ulp/product, prefill", f"{min(floor):.1e}..{max(floor):.1e}", "report")
    per_prompt = []
    tot_eq = tot_n = tot_agree = tot_forced = tot_dec = 0
    worst_last = worst_forced = 0.0
    budget_each = max(10.0, (deadline - time.perf_counter()) / len(prompts))
    for pi, prompt in enumerate(prompts):
        t = time.perf_counter()
        ids_ref, logits_ref = greedy(ref_ad, prompt, n_new, cap, min(deadline, t + budget_each))
        t_ref = time.perf_counter() - t
        ids_gpu, _ = greedy(gpu_ad, prompt, len(ids_ref), cap, float("inf"))
        tot_dec += sum(a == b for a, b in zip(decoder_greedy(gpu_ad, prompt, len(ids_gpu), cap), ids_gpu, strict=True))
        f_logits = forced(gpu_ad, prompt, ids_ref, cap)
        eq = sum(a == b for a, b in zip(ids_gpu, ids_ref, strict=True))
        prefix = next((i for i, (a, b) in enumerate(zip(ids_gpu, ids_ref, strict=True)) if a != b), len(ids_ref))
        agree = sum(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(f_logits, logits_ref, strict=True))
        errs = [rel(a, b) for a, b in zip(f_logits, logits_ref, strict=True)]
        top2 = np.sort(logits_ref[0])[-2:]
        per_prompt.append(
            {
                "prompt_len": len(prompt),
                "tokens": len(ids_ref),
                "ids_equal": eq,
                "common_prefix": prefix,
                "forced_argmax_agree": agree,
                "last_pos_logits_rel": errs[0],
                "max_forced_logits_rel": max(errs),
                "ref_top2_gap_after_prefill": float(top2[1] - top2[0]),
                "numpy_s": t_ref,
                "distinct_ids_ref": len(set(ids_ref)),
                "ids_ref": ids_ref,
                "ids_gpu": ids_gpu,
            }
        )
        tot_eq += eq
        tot_n += len(ids_ref)
        tot_agree += agree
        tot_forced += len(f_logits)
        worst_last = max(worst_last, errs[0])
        worst_forced = max(worst_forced, max(errs))
        print(
            f"  prompt {pi} len {len(prompt)}: {len(ids_ref)} tokens, ids equal {eq} (prefix {prefix}), "
            f"forced agree {agree}/{len(f_logits)}, logits rel prefill {errs[0]:.1e} max {max(errs):.1e}, "
            f"numpy {t_ref:.1f}s",
            flush=True,
        )
    res["prompts"] = per_prompt
    row(sec, f"greedy ids CUDA==NumPy, 4 prompts ({tot_n} tokens)", f"{tot_eq}/{tot_n}", "report")
    row(sec, "CUDA decoder's greedy ids == CUDA forward()'s", f"{tot_dec}/{tot_n}", "all", tot_dec == tot_n)
    row(sec, "teacher-forced argmax agreement", f"{tot_agree}/{tot_forced}", "report", None)
    distinct = [len(set(p["ids_ref"])) for p in per_prompt]
    row(sec, "distinct ids in the reference's greedy runs", "/".join(map(str, distinct)), "report")
    # Quantized model: a sanity bound (a wrong kernel gives O(1)); the noise floor above says
    # how close a second correct implementation can be expected to land.
    row(sec, "last-position logits rel err after prefill", f"{worst_last:.1e}", "<1e-01", worst_last < 1e-1)
    row(sec, "max logits rel err along forced steps", f"{worst_forced:.1e}", "<1e-01", worst_forced < 1e-1)
    RESULTS[f"model_{name}"] = res
    section(sec, check_twin, name, path, prompts, 8)


# ------------------------------------------------------------------------------------ oom
def oom_jobs(n: int) -> list[str]:
    """n jobs alternating normal / over the limit; the over-limit ones alternate between a KV
    cache over the limit and a prefill whose activations are over it."""
    over = ("kv_over_limit", "prefill_over_limit")
    return ["normal" if i % 2 == 0 else over[(i // 2) % 2] for i in range(n)]


def check_oom(path: Path, probe_weights: int, n_jobs: int = 50) -> None:
    gpu = CupyBackend(0, memory_limit=probe_weights + (96 << 20))
    series = []
    try:
        cfg, ad = load(path, gpu)
        prompt = np.arange(32) % cfg.vocab_size
        big_prefill = 2048 if cfg.n_ff > 1024 else 4096
        jobs = oom_jobs(n_jobs)
        c = ad.new_cache(64)
        good = ad.forward(prompt, 0, c)
        gpu.free_kv_cache(c)
        gc.collect()
        base, pool_base = gpu.memory_in_use(), gpu.pool_bytes()
        all_ok = True
        for job in jobs:
            outcome, cache = "ok", None
            t = time.perf_counter()
            try:
                if job == "kv_over_limit":
                    cache = ad.new_cache(cfg.context_length * 8)
                    outcome = "no error"
                elif job == "prefill_over_limit":
                    cache = ad.new_cache(big_prefill)
                    ad.forward(np.arange(big_prefill) % cfg.vocab_size, 0, cache)
                    outcome = "no error"
                else:
                    cache = ad.new_cache(64)
                    logits = ad.forward(prompt, 0, cache)
                    outcome = "ok, same logits" if same_bits(logits, good) else "ok, DIFFERENT logits"
            except OutOfDeviceMemory:
                outcome = "VRAM_OOM"
            finally:
                if cache is not None:
                    gpu.free_kv_cache(cache)
            used, pool = gpu.memory_in_use(), gpu.pool_bytes()
            expect = "VRAM_OOM" if job != "normal" else "ok, same logits"
            ok = outcome == expect and used == base
            all_ok &= ok
            series.append({
                "job": job, "outcome": outcome, "ok": ok, "used_bytes": used, "pool_bytes": pool,
                "baseline": base, "pool_baseline": pool_base, "s": round(time.perf_counter() - t, 4),
            })
        # Compact: one letter per job (N normal, K KV over limit, P prefill over limit; lower
        # case = unexpected outcome), then the deviation from the baseline after each job.
        code = {"normal": "N", "kv_over_limit": "K", "prefill_over_limit": "P"}
        letters = "".join(code[s["job"]] if s["ok"] else code[s["job"]].lower() for s in series)
        dev_used = [s["used_bytes"] - base for s in series]
        dev_pool = [s["pool_bytes"] - pool_base for s in series]
        print(f"  oom: limit {gpu.memory_limit} B = weights {probe_weights} B + 96 MiB; baseline used {base} B, "
              f"pool {pool_base} B", flush=True)
        print(f"  oom: jobs {letters}", flush=True)
        print(f"  oom: used - baseline after each job (B): {' '.join(map(str, dev_used))}", flush=True)
        print(f"  oom: pool - baseline after each job (B): {' '.join(map(str, dev_pool))}", flush=True)
        bad = [f"{i}:{s['job']}->{s['outcome']}" for i, s in enumerate(series) if not s["ok"]]
        if bad:
            print(f"  oom: unexpected: {', '.join(bad[:10])}", flush=True)
        RESULTS["oom"] = {"limit": gpu.memory_limit, "baseline": base, "pool_baseline": pool_base,
                          "letters": letters, "series": series}
        n_oom = sum(s["outcome"] == "VRAM_OOM" for s in series)
        n_over = sum(j != "normal" for j in jobs)
        n_same = sum(s["outcome"] == "ok, same logits" for s in series)
        row(
            "oom",
            f"{len(jobs)} alternating jobs, limit weights+96MiB",
            f"{n_oom}/{n_over} OOM, {n_same}/{len(jobs) - n_over} same",
            "all",
            n_oom == n_over and n_same == len(jobs) - n_over,
        )
        row("oom", "used bytes after each job: max |used - baseline|", f"{max(map(abs, dev_used))} B", "0",
            max(map(abs, dev_used)) == 0)
        row("oom", "pool bytes after each job: max (pool - baseline)", f"{max(dev_pool)} B", "<=0",
            max(dev_pool) <= 0)
        row("oom", "series (N normal, K/P over limit; lower=bad)", letters[:30], "", all_ok)
    finally:
        gpu.close()


# ------------------------------------------------------------------------------------ arch
def check_arch(out_dir: Path, arch: str) -> None:
    """A tiny gpt2 / phi3 / gpt-oss fixture (fixtures/build.py, seed 0), CUDA vs NumPy, teacher
    forced along the reference's greedy ids; the noise floor is the 1-ulp-nudged reference's
    distance over 3 seeds; the F32 twin shows the forward pass without activation rounding."""
    from fixtures.build import build

    sec = f"arch:{arch}"[:9]
    path = out_dir / f"{arch}-tiny-s0.gguf"
    if not path.exists():
        build(arch, path, size="tiny", seed=0)

    def forced_errs(p: Path, other: Any) -> tuple[list[float], list[bool]]:
        cfg, ad_n = load(p, NumpyBackend())
        _, ad_o = load(p, other)
        prompt = np.random.default_rng(1).integers(0, cfg.vocab_size, 9)
        cn, co = ad_n.new_cache(32), ad_o.new_cache(32)
        ln, lo = ad_n.forward(prompt, 0, cn), ad_o.forward(prompt, 0, co)
        errs, agree = [], []
        for i in range(12):
            errs.append(rel(lo, ln))
            agree.append(int(np.argmax(lo)) == int(np.argmax(ln)))
            tok = np.array([int(np.argmax(ln))])
            ln, lo = ad_n.forward(tok, len(prompt) + i, cn), ad_o.forward(tok, len(prompt) + i, co)
        other.free_kv_cache(co)
        return errs, agree

    noise = max(max(forced_errs(path, NudgedNumpy(s))[0]) for s in range(3))
    gpu = CupyBackend(0)
    try:
        errs, agree = forced_errs(path, gpu)
        twin_errs, twin_agree = forced_errs(f32_twin(path), gpu)
        r = gpu.verify_residency()
    finally:
        gpu.close()
    RESULTS[f"arch_{arch}"] = {"errs": errs, "agree": agree, "noise": noise, "twin_errs": twin_errs}
    row(sec, f"{arch}: logits rel err, 12 forced steps (noise)", f"{max(errs):.1e} ({noise:.1e})", "<5e-02",
        max(errs) < 5e-2)
    row(sec, f"{arch}: teacher-forced argmax agreement", f"{sum(agree)}/{len(agree)}", "all", all(agree))
    row(sec, f"{arch}: F32 twin logits rel err / argmax", f"{max(twin_errs):.1e} {sum(twin_agree)}/{len(twin_agree)}",
        "<1e-03", max(twin_errs) < 1e-3 and all(twin_agree))
    row(sec, f"{arch}: residency", f"resident={r['resident']}", "True", r["resident"])


# ------------------------------------------------------------------------------------ speed
def check_speed(name: str, ad: Any, cfg: ModelConfig) -> None:
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, cfg.vocab_size, 512)
    ev0, ev1 = cp.cuda.Event(), cp.cuda.Event()
    pre, dec = [], []
    for _ in range(3):
        cache = ad.new_cache(512 + 65)
        ev0.record()
        logits = ad.forward(prompt, 0, cache)  # ends with the logits copied to the host
        ev1.record()
        ev1.synchronize()
        pre.append(cp.cuda.get_elapsed_time(ev0, ev1) / 1e3)
        tok = int(np.argmax(logits))
        ev0.record()
        for i in range(64):
            logits = ad.forward(np.array([tok]), 512 + i, cache)
            tok = int(np.argmax(logits))
        ev1.record()
        ev1.synchronize()
        dec.append(cp.cuda.get_elapsed_time(ev0, ev1) / 1e3 / 64)
        ad.backend.free_kv_cache(cache)
    p, d = float(np.median(pre)), float(np.median(dec))
    RESULTS[f"speed_{name}"] = {"prefill_512_s": pre, "decode_s_per_token": dec}
    row("speed", f"{name}: prefill 512 tokens", f"{512 / p:.0f} tok/s ({p * 1e3:.1f} ms)", "report")
    row("speed", f"{name}: decode batch 1 (after 512)", f"{1 / d:.0f} tok/s ({d * 1e3:.2f} ms)", "report")


def section(name: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        traceback.print_exc()
        row(name, "section raised", f"{type(exc).__name__}: {str(exc)[:60]}", "", False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="/tmp/worker-fixtures")
    ap.add_argument("--out", default=".")
    ap.add_argument("--budget-s", type=float, default=420.0, help="soft wall-clock budget")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="tiny fixtures (dry run)")
    ap.add_argument("--oom-jobs", type=int, default=50, help="length of the OOM series")
    ap.add_argument("--sections", default="kernels,oom,arch,models",
                    help="comma list of kernels, oom, arch (gpt2/phi3/gpt-oss tiny fixtures), models")
    args = ap.parse_args()
    want = set(args.sections.split(","))
    deadline = T0 + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = build_all(args.fixtures, tiny=args.tiny) if want & {"oom", "models"} else {}
    dev = cp.cuda.runtime.getDeviceProperties(0)
    RESULTS["env"] = {
        "device": dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"]),
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
    }
    print(RESULTS["env"], flush=True)

    gpu = CupyBackend(0)
    RESULTS["device_info"] = gpu.device_info()
    if "kernels" in want:
        section("kernel", check_kernels, gpu, args.tiny)
        section("kernel", check_ext_ops, gpu)
    gpu.close()
    del gpu

    qwen, smol = paths.get("qwen25-shape"), paths.get("smollm2-shape")
    if "oom" in want:
        # OOM series first (it needs the pool to itself): probe the weights' size
        probe = CupyBackend(0)
        load(qwen, probe)
        w_bytes = probe.memory_in_use()
        probe.close()
        del probe
        section("oom", check_oom, qwen, w_bytes, args.oom_jobs)
    if "arch" in want:
        for arch in ("phi3", "gpt2", "gpt-oss"):
            section(f"arch:{arch}"[:9], check_arch, Path(args.fixtures), arch)

    for name, path, share in (("qwen25-shape", qwen, 0.6), ("smollm2-shape", smol, 1.0)) if "models" in want else ():
        gpu = CupyBackend(0)
        try:
            t = time.perf_counter()
            cfg, ad = load(path, gpu)
            load_s = time.perf_counter() - t
            cache = ad.new_cache(16)
            r = gpu.verify_residency()
            RESULTS[f"residency_{name}"] = r
            RESULTS[f"weights_bytes_{name}"] = gpu.memory_in_use() - cache.nbytes
            row(
                "residency",
                f"{name}: {r['buffers']} buffers, {r['bytes'] / 2**20:.0f} MiB",
                f"resident={r['resident']}",
                "True",
                r["resident"],
            )
            gpu.free_kv_cache(cache)
            row("load", f"{name}: CUDA load", f"{load_s:.1f} s, {(gpu.memory_in_use()) / 2**20:.0f} MiB", "report")
            section("speed", check_speed, name, ad, cfg)
            left = deadline - time.perf_counter()
            section(f"model:{name[:5]}", check_model, name, path, ad, args.tokens, time.perf_counter() + left * share)
        except Exception as exc:
            traceback.print_exc()
            row(name[:9], "section raised", f"{type(exc).__name__}: {str(exc)[:60]}", "", False)
        finally:
            gpu.close()

    RESULTS["table"] = ROWS
    RESULTS["wall_s"] = time.perf_counter() - T0
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    fails = sum(r[4] == "FAIL" for r in ROWS)
    print("\n" + "=" * 118)
    print(f"{'section':10s} {'item':52s} {'value':>30s} {'bound':>9s} verdict")
    for s, item, value, bound, verdict in ROWS:
        print(f"{s:10s} {item[:52]:52s} {value[:30]:>30s} {bound:>9s} {verdict}")
    print(f"{len(ROWS)} rows, {fails} FAIL, {RESULTS['wall_s']:.0f} s, device {RESULTS['env']['device']}")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()

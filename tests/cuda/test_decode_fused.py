"""The fused one-token kernels (decode.cu) and the CUDA-graph decoder, on the GPU.

The fused steps must compute what the composed steps compute (the base Backend's defaults
over the unfused CUDA kernels, themselves checked against NumPy in test_cuda_backend.py): the
same rounding of every activation and the same weight bits, with float32 sums in another
order, so within 1e-5 relative; attention within 1e-6 (its P.V sums run in another order
too) and the KV-cache rows bit-identical; attention and the output projection in one kernel
(attn_out_*, thread block clusters) within float32 rounding of the two apart. The graph decoder replays
exactly the kernels an eager one-token forward pass runs, so its logits and greedy ids must
be bit-identical to forward()'s.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'worker-orcd[cuda]')")

from gguf import GGMLQuantizationType as T  # noqa: E402
from make_fixture import RawTensors  # noqa: E402

from worker.adapters import adapter_for  # noqa: E402
from worker.backends.base import Backend  # noqa: E402
from worker.backends.cupy_backend import CupyBackend, GraphDecoder, cuda_available  # noqa: E402
from worker.backends.numpy_backend import NumpyBackend  # noqa: E402
from worker.gguf_file import GGUFFile  # noqa: E402
from worker.model_config import ModelConfig  # noqa: E402

if not cuda_available():
    pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)

pytestmark = pytest.mark.cuda

ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4]
K_TYPES = {T.Q4_K, T.Q5_K, T.Q6_K}


def rel(a, b) -> float:
    a = np.asarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a, dtype=np.float64)
    b = np.asarray(cp.asnumpy(b) if isinstance(b, cp.ndarray) else b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bits_equal(a, b) -> bool:
    a = cp.asnumpy(a) if isinstance(a, cp.ndarray) else a
    b = cp.asnumpy(b) if isinstance(b, cp.ndarray) else b
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _load(path, be):
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    ad = adapter_for(f, cfg, be)
    ad.load(f)
    return cfg, ad


def _weights(qtype, shapes, seed):
    rng = np.random.default_rng(seed)
    src = RawTensors()
    for i, (n_out, n_in) in enumerate(shapes):
        src.add_float(f"w{i}", rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.05, int(qtype))
        src.add_float(f"b{i}", rng.standard_normal((1, n_out), dtype=np.float32)[0], int(T.F32))
    return src


@pytest.mark.parametrize("n", [1, 37], ids=["decode", "prefill"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_fused_products_match_composed(gpu, qtype, n):
    """n = 1: the one-row kernels (decode.cu); n = 37: act_split, the split float16 GEMMs and
    their epilogues (prefill.cu), one row large enough to need act_split's row scale."""
    n_in = 512 if qtype in K_TYPES else 384
    src = _weights(qtype, [(96, n_in), (32, n_in), (32, n_in)], int(qtype))
    ref = NumpyBackend()
    rng = np.random.default_rng(100 + int(qtype))
    x = rng.standard_normal((n, n_in), dtype=np.float32) * 3
    # (F16/BF16 activations are rounded to 16 bits; q8_1 keeps its block sums in float16)
    if n > 1 and qtype not in (T.F16, T.BF16, T.Q4_1, T.Q5_1):
        x[5] *= 3e4  # |x| beyond float16's 65504: act_split scales the row
    norm = rng.standard_normal(n_in, dtype=np.float32)
    ws = [gpu.matrix(src, f"w{i}") for i in range(3)]
    bs = [gpu.vector(src, f"b{i}") for i in range(3)]
    wn = [ref.matrix(src, f"w{i}") for i in range(3)]
    bn = [ref.vector(src, f"b{i}") for i in range(3)]
    xd, nd = cp.asarray(x), cp.asarray(norm)
    # norm + three products with biases (Q, K, V)
    fused = gpu.norm_linears(xd, nd, 1e-6, ws, bs)
    composed = Backend.norm_linears(gpu, xd, nd, 1e-6, ws, bs)
    expect = ref.norm_linears(x, norm, 1e-6, wn, bn)
    for f, c, e in zip(fused, composed, expect, strict=True):
        assert rel(f, c) < 1e-5 and rel(f, e) < 1e-5
    assert all(bits_equal(a, b) for a, b in zip(fused, gpu.norm_linears(xd, nd, 1e-6, ws, bs), strict=True))
    # product + residual (O, down)
    resid = cp.asarray(rng.standard_normal((n, 96), dtype=np.float32))
    y = gpu.linear_add(xd, ws[0], resid)
    assert rel(y, Backend.linear_add(gpu, xd, ws[0], resid)) < 1e-5
    assert rel(y, ref.linear_add(x, wn[0], cp.asnumpy(resid))) < 1e-5
    # norm + gate/up + SwiGLU, separate weights and phi3's fused gate|up
    g = gpu.norm_swiglu(xd, nd, 1e-6, ws[1], ws[2])
    assert rel(g, Backend.norm_swiglu(gpu, xd, nd, 1e-6, ws[1], ws[2])) < 1e-5
    assert rel(g, ref.norm_swiglu(x, norm, 1e-6, wn[1], wn[2])) < 1e-5
    h = gpu.norm_swiglu(xd, nd, 1e-6, None, ws[0])
    assert h.shape == (n, 48)
    assert rel(h, Backend.norm_swiglu(gpu, xd, nd, 1e-6, None, ws[0])) < 1e-5


INT_DOT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q6_K]


@pytest.mark.parametrize("qtype", INT_DOT_TYPES, ids=lambda t: t.name)
def test_fused_products_several_rows_per_warp(gpu, qtype):
    """Products with enough rows for warps to take 4 or 2 rows a round (fmv_plan's rpw, the
    head and gate/up of real models) against the composed path and NumPy."""
    from worker.backends.cupy_backend import fmv_plan

    n_in = 512 if qtype in K_TYPES else 384
    sizes = {"head": 8448, "gate/up": 4224, "o": 2112}
    src = _weights(qtype, [(sizes["head"], n_in), (sizes["gate/up"], n_in), (sizes["gate/up"], n_in),
                           (sizes["o"], n_in)], 200 + int(qtype))  # fmt: skip
    ref = NumpyBackend()
    rng = np.random.default_rng(300 + int(qtype))
    x = rng.standard_normal((1, n_in), dtype=np.float32) * 3
    norm = rng.standard_normal(n_in, dtype=np.float32)
    ws = [gpu.matrix(src, f"w{i}") for i in range(4)]
    wn = [ref.matrix(src, f"w{i}") for i in range(4)]
    xd, nd = cp.asarray(x), cp.asarray(norm)

    def rpw(mode, rows):
        total = sum(rows) if mode == 0 else rows[0]
        plan = fmv_plan(n_in, mode, total, tuple(int(qtype) for _ in rows), gpu._sm_count, gpu._fmv_smem_max,
                        gpu._fmv_blocks_per_sm, gpu._smem_per_sm, rows)  # fmt: skip
        return plan.rpw

    if gpu._sm_count == 132:  # the H100 these sizes were chosen for
        assert (rpw(0, (8448,)), rpw(2, (4224, 4224)), rpw(1, (2112,))) == (4, 4, 2)
    (head,) = gpu.norm_linears(xd, nd, 1e-6, [ws[0]], [None])
    assert rel(head, Backend.norm_linears(gpu, xd, nd, 1e-6, [ws[0]], [None])[0]) < 1e-5
    assert rel(head, ref.norm_linears(x, norm, 1e-6, [wn[0]], [None])[0]) < 1e-5
    g = gpu.norm_swiglu(xd, nd, 1e-6, ws[1], ws[2])
    assert rel(g, Backend.norm_swiglu(gpu, xd, nd, 1e-6, ws[1], ws[2])) < 1e-5
    assert rel(g, ref.norm_swiglu(x, norm, 1e-6, wn[1], wn[2])) < 1e-5
    resid = cp.asarray(rng.standard_normal((1, sizes["o"]), dtype=np.float32))
    y = gpu.linear_add(xd, ws[3], resid)
    assert rel(y, Backend.linear_add(gpu, xd, ws[3], resid)) < 1e-5
    assert rel(y, ref.linear_add(x, wn[3], cp.asnumpy(resid))) < 1e-5


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0, T.Q5_K, T.MXFP4], ids=lambda t: t.name)
def test_fused_product_rows_split_over_warps(gpu, qtype):
    """A down projection's long rows (4,864 columns, Qwen2.5-0.5B's), split over several warps
    of a block, against the composed path and NumPy."""
    n_in, n_out = 4864, 896
    src = _weights(qtype, [(n_out, n_in)], 400 + int(qtype))
    ref = NumpyBackend()
    rng = np.random.default_rng(500 + int(qtype))
    x = rng.standard_normal((1, n_in), dtype=np.float32)
    resid = rng.standard_normal((1, n_out), dtype=np.float32)
    w, wn = gpu.matrix(src, "w0"), ref.matrix(src, "w0")
    y = gpu.linear_add(cp.asarray(x), w, cp.asarray(resid))
    assert rel(y, Backend.linear_add(gpu, cp.asarray(x), w, cp.asarray(resid))) < 1e-5
    assert rel(y, ref.linear_add(x, wn, resid)) < 1e-5


@pytest.mark.parametrize("table", [False, True], ids=["cos-sin-computed", "cos-sin-from-table"])
@pytest.mark.parametrize("arch", ["qwen25-shape", "smollm2-shape"])
@pytest.mark.parametrize("q_scale", [None, 0.125])
def test_rope_attention_decode_matches_composed(gpu, tiny_models, arch, q_scale, table):
    """table: RoPE's cos and sin from the model's table (_rope_table, made at prepare()) rather
    than computed in attn_decode: the K rows written must still be the composed path's bits."""
    cfg, _ = _load(tiny_models[arch], NumpyBackend())
    if table:
        gpu._rope_table(cfg, make=40)
        assert gpu._kept_rope_table(cfg, 40) is not None
    rng = np.random.default_rng(11)
    d, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_kv_heads
    caches = [gpu.new_kv_cache(cfg, 40) for _ in range(2)]
    prompt = [cp.asarray(rng.standard_normal((13, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
    for c in caches:  # the same prefill in both caches (composed path: n > 1)
        gpu.rope_attention(*prompt, c, 0, 0, cfg, q_scale=q_scale)
    step = [cp.asarray(rng.standard_normal((1, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
    fused = gpu.rope_attention(*step, caches[0], 0, 13, cfg, q_scale=q_scale)
    composed = Backend.rope_attention(gpu, *step, caches[1], 0, 13, cfg, q_scale=q_scale)
    # the same scores and probabilities; P.V and the softmax sums are added in another order
    assert rel(fused, composed) < 1e-6
    assert bits_equal(caches[0].k, caches[1].k) and bits_equal(caches[0].v, caches[1].v)
    gpu._rope_tabs.pop(id(cfg), None)
    for c in caches:
        gpu.free_kv_cache(c)


# The real models' attention (the tiny files' heads are 32 wide): Qwen2.5-0.5B's 14 heads over
# 2 KV heads and SmolLM2-135M's 9 over 3, 64 wide, with a Q8_0 output projection of their width.
REAL_HEADS = {"qwen25-heads": (14, 2, 64), "smollm2-heads": (9, 3, 64)}


@pytest.mark.parametrize("start", [13, 200], ids=["ctx14", "ctx201"])
@pytest.mark.parametrize("table", [False, True], ids=["cos-sin-computed", "cos-sin-from-table"])
@pytest.mark.parametrize("arch", ["qwen25-shape", "smollm2-shape", *REAL_HEADS])
@pytest.mark.parametrize("q_scale", [None, 0.125])
def test_attention_output_fused_matches_apart(gpu, tiny_models, arch, q_scale, table, start):
    """attn_out_* (a block a head, clusters meeting in distributed shared memory) against
    attn_decode then fmv_*, which tests above check against the composed path: the same
    attention and the same int8 input to O, so only the order of a row's float32 sums differs;
    the K / V rows written are the same bits. The real heads' cases add a bias to O."""
    bias = None
    if arch in REAL_HEADS:
        nh, nkv, d = REAL_HEADS[arch]
        base, _ = _load(tiny_models["qwen25-shape"], NumpyBackend())
        cfg = dataclasses.replace(base, n_head=nh, n_kv_heads=nkv, head_dim=d, rope_dim=d, n_embd=nh * d)
        src = _weights(T.Q8_0, [(nh * d, nh * d)], 31)
        wo, bias = gpu.matrix(src, "w0"), gpu.vector(src, "b0")
    else:
        cfg, ad = _load(tiny_models[arch], gpu)
        wo = ad.layers[0].wo
    if table:
        gpu._rope_table(cfg, make=start + 8)
    rng = np.random.default_rng(12)
    d, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_kv_heads
    caches = [gpu.new_kv_cache(cfg, start + 8) for _ in range(2)]
    prompt = [cp.asarray(rng.standard_normal((start, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
    for c in caches:  # the same prefill in both caches (composed path: n > 1)
        gpu.rope_attention(*prompt, c, 0, 0, cfg, q_scale=q_scale)
    step = [cp.asarray(rng.standard_normal((1, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
    resid = cp.asarray(rng.standard_normal((1, wo.n_out), dtype=np.float32))
    before, saved = gpu.att_o_fused, gpu._att_o_max
    gpu._att_o_max = start + 1
    try:
        fused = gpu.attention_output(*step, caches[0], 0, start, cfg, wo, resid, q_scale=q_scale, bias=bias)
    finally:
        gpu._att_o_max = saved
    assert gpu.att_o_fused == before + 1
    apart = Backend.attention_output(gpu, *step, caches[1], 0, start, cfg, wo, resid, q_scale=q_scale, bias=bias)
    # the product's part alone (the residual is added exactly in both), and the whole row
    part = rel(fused - resid, apart - resid)
    assert part < 1e-5, f"attention @ W_O differs by {part:.2e} relative"
    assert rel(fused, apart) < 1e-5
    assert not bits_equal(fused - resid, cp.zeros_like(resid))  # (the attention reached the output)
    assert bits_equal(caches[0].k, caches[1].k) and bits_equal(caches[0].v, caches[1].v)
    gpu._rope_tabs.pop(id(cfg), None)
    for c in caches:
        gpu.free_kv_cache(c)


@pytest.mark.parametrize("arch", ["qwen25-shape", "smollm2-shape"])
def test_graph_decoder_short_context_variant(gpu, tiny_models, arch):
    """A decoder with fuse_max 12 replays graph_short (attn_out_*) up to position 11 and the
    general graph after: its logits must be bit for bit those of eager steps under the same
    setting, and no further from steps that never fuse, and from NumPy, than an int8 rounding
    flip of an activation takes them."""
    cfg, ad = _load(tiny_models[arch], gpu)
    prompt = np.random.default_rng(8).integers(0, cfg.vocab_size, 7)
    steps, saved = 14, gpu._att_o_max

    def eager(att_o_max: int, ids: list[int]) -> list[np.ndarray]:
        gpu._att_o_max = att_o_max
        cache, _ = _prefill(ad, prompt, 7 + steps + 1)
        out = []
        for i in range(steps):
            out.append(ad.forward(np.array([ids[i]]), 7 + i, cache))
            if len(ids) < steps:
                ids.append(int(np.argmax(out[-1])))
        gpu.free_kv_cache(cache)
        return out

    try:
        cache0, first = _prefill(ad, prompt, 8)
        gpu.free_kv_cache(cache0)
        ids = [int(np.argmax(first))]
        never = eager(0, ids)  # (fills ids: the never-fused greedy run)
        before = gpu.att_o_fused
        same = eager(12, ids)
        assert gpu.att_o_fused > before
        cache_g, _ = _prefill(ad, prompt, 7 + steps + 1)
        dec = ad.decoder(cache_g)
        got = [dec.logits(ids[i], 7 + i) for i in range(steps)]
        assert dec.graph is not None and dec.graph_short is not None and dec.fuse_max == 12
        dec.close()
        gpu.free_kv_cache(cache_g)
    finally:
        gpu._att_o_max = saved
    # the reference: NumPy's forward pass over the same ids
    _, nad = _load(tiny_models[arch], NumpyBackend())
    ncache = nad.new_cache(7 + steps + 1)
    nad.forward(prompt, 0, ncache)
    ref = [nad.forward(np.array([ids[i]]), 7 + i, ncache) for i in range(steps)]
    for i, (a, b, c, r) in enumerate(zip(got, same, never, ref, strict=True)):
        assert bits_equal(a, b), f"step at position {7 + i}"
        # One int8 rounding of an activation landing on the other side costs these tiny random
        # models ~7e-3 of their logits (CUDA against NumPy, never fused: up to 9.3e-3 on the
        # H100); the fused step may do that once more, not be further off.
        assert rel(a, r) < 2e-2, f"step at position {7 + i}: {rel(a, r):.2e} from NumPy"
        assert rel(a, c) < 2e-2, f"step at position {7 + i}: {rel(a, c):.2e} from the never-fused step"


def test_argmax_matches_numpy(gpu):
    rng = np.random.default_rng(5)
    cases = [rng.standard_normal(151936).astype(np.float32) for _ in range(3)]
    tie = rng.standard_normal(5000).astype(np.float32)
    tie[[17, 4000]] = 9.0  # equal maxima: the first index wins
    cases.append(tie)
    nan = rng.standard_normal(3000).astype(np.float32)
    nan[[50, 2000]] = np.nan
    cases.append(nan)
    cases.append(np.full(700, -np.inf, dtype=np.float32))
    out = cp.zeros(1, dtype=cp.int32)
    for x in cases:
        gpu.argmax_into(cp.asarray(x), out)
        assert int(out.get()[0]) == int(np.argmax(x))


def _prefill(ad, prompt, cap):
    cache = ad.new_cache(cap)
    return cache, ad.forward(prompt, 0, cache)


@pytest.mark.parametrize("arch", ["qwen25-shape", "smollm2-shape", "phi3"])
def test_graph_decoder_bit_identical_to_forward(gpu, tiny_models, arch, tmp_path):
    if arch == "phi3":
        from fixtures.build import build_fixture

        try:
            path = build_fixture("phi3", tmp_path, seed=0)
        except Exception as exc:  # pragma: no cover - the GPU machine may lack the vocabulary
            import os
            from pathlib import Path

            pre = os.environ.get("WORKER_ARCH_FIXTURES")
            if not pre:
                pytest.skip(f"phi3 fixture not buildable here: {exc}")
            path = Path(pre) / "phi3-tiny-s0.gguf"
    else:
        path = tiny_models[arch]
    cfg, ad = _load(path, gpu)
    prompt = np.random.default_rng(3).integers(0, cfg.vocab_size, 7)
    steps = 20
    # eager: forward() per token, greedy on the host
    cache_e, logits = _prefill(ad, prompt, 7 + steps + 1)
    eager_ids, eager_logits = [int(np.argmax(logits))], []
    for i in range(steps):
        logits = ad.forward(np.array([eager_ids[-1]]), 7 + i, cache_e)
        eager_logits.append(logits)
        eager_ids.append(int(np.argmax(logits)))
    gpu.free_kv_cache(cache_e)
    # graph: greedy on the device, then logits() for the same steps in a second job
    for mode in ("greedy", "logits"):
        cache_g, logits = _prefill(ad, prompt, 7 + steps + 1)
        dec = ad.decoder(cache_g)
        assert isinstance(dec, GraphDecoder)
        ids = [int(np.argmax(logits))]
        for i in range(steps):
            if mode == "greedy":
                ids.append(dec.greedy(ids[-1], 7 + i))
            else:
                lg = dec.logits(ids[-1], 7 + i)
                assert bits_equal(lg, eager_logits[i]), f"step {i}"
                ids.append(int(np.argmax(lg)))
        assert dec.graph is not None and not dec.eager  # captured, replayed
        dec.close()
        gpu.free_kv_cache(cache_g)
        assert ids == eager_ids


def test_graph_decoder_sampled_tokens_feed_back(gpu, tiny_models):
    # The host's sampled token (not the device argmax) must be the next step's input.
    cfg, ad = _load(tiny_models["qwen25-shape"], gpu)
    prompt = np.random.default_rng(4).integers(0, cfg.vocab_size, 5)
    forced = np.random.default_rng(6).integers(0, cfg.vocab_size, 12)
    cache_e, _ = _prefill(ad, prompt, 20)
    expect = [ad.forward(np.array([t]), 5 + i, cache_e) for i, t in enumerate(forced)]
    cache_g, _ = _prefill(ad, prompt, 20)
    dec = ad.decoder(cache_g)
    got = [dec.logits(int(t), 5 + i) for i, t in enumerate(forced)]
    dec.close()
    for c in (cache_e, cache_g):
        gpu.free_kv_cache(c)
    assert all(bits_equal(a, b) for a, b in zip(got, expect, strict=True))


def test_graph_decoder_memory_returns_to_baseline(gpu, tiny_models):
    _, ad = _load(tiny_models["smollm2-shape"], gpu)
    gc.collect()
    for _ in range(2):  # the second job must start and end where the first did
        base = gpu.memory_in_use()
        cache, logits = _prefill(ad, np.arange(5), 40)
        dec = ad.decoder(cache)
        tok = int(np.argmax(logits))
        for i in range(30):
            tok = dec.greedy(tok, 5 + i)
        assert gpu.memory_in_use() > base
        dec.close()
        gpu.free_kv_cache(cache)
        gc.collect()
        assert gpu.memory_in_use() == base


def test_graph_decoder_rejects_overflow(gpu, tiny_models):
    _, ad = _load(tiny_models["smollm2-shape"], gpu)
    cache, logits = _prefill(ad, np.arange(5), 8)
    dec = ad.decoder(cache)
    tok = int(np.argmax(logits))
    for i in range(3):
        tok = dec.greedy(tok, 5 + i)
    with pytest.raises(ValueError, match="KV cache overflow"):
        dec.greedy(tok, 8)
    dec.close()
    gpu.free_kv_cache(cache)


def test_programmatic_launch_bit_identical_to_plain(gpu, tiny_models):
    # The decode kernels launched with programmatic dependent launch (pdl.py; they start
    # while the previous kernel drains and wait in griddepcontrol.wait) must compute exactly
    # what plain launches compute: a read before the wait would show as a changed logit.
    if gpu._pdl is None:
        pytest.skip("programmatic dependent launch needs sm_90 and cuLaunchKernelEx")
    cfg, ad = _load(tiny_models["qwen25-shape"], gpu)
    prompt = np.random.default_rng(5).integers(0, cfg.vocab_size, 9)
    runs = []
    pdl = gpu._pdl
    try:
        for launcher in (pdl, None, pdl):
            gpu._pdl = launcher
            cache, logits = _prefill(ad, prompt, 9 + 24)
            dec = ad.decoder(cache)
            ids, lgs = [int(np.argmax(logits))], []
            for i in range(12):  # logits() steps, then greedy ones on the device
                lg = dec.logits(ids[-1], 9 + i)
                lgs.append(cp.asnumpy(lg))
                ids.append(int(np.argmax(lgs[-1])))
            for i in range(12, 22):
                ids.append(dec.greedy(ids[-1], 9 + i))
            assert dec.graph is not None and not dec.eager
            dec.close()
            gpu.free_kv_cache(cache)
            runs.append((ids, lgs))
    finally:
        gpu._pdl = pdl
    for ids, lgs in runs[1:]:
        assert ids == runs[0][0]
        assert all(bits_equal(a, b) for a, b in zip(lgs, runs[0][1], strict=True))


def test_graph_decoder_step_queued_ahead_is_redone_for_another_input(gpu, tiny_models):
    # greedy() queues step pos + 1 with the device's argmax as input; a caller that then asks
    # for another token at pos + 1 (or for logits) must get that token's step, as eager does.
    cfg, ad = _load(tiny_models["qwen25-shape"], gpu)
    prompt = np.random.default_rng(8).integers(0, cfg.vocab_size, 6)
    other = np.random.default_rng(9).integers(0, cfg.vocab_size, 8)
    cache_e, logits = _prefill(ad, prompt, 30)
    cache_g, _ = _prefill(ad, prompt, 30)
    dec = ad.decoder(cache_g)
    tok, pos, ids_e, ids_g = int(np.argmax(logits)), 6, [], []
    for i in range(8):
        lg = ad.forward(np.array([tok]), pos, cache_e)
        ids_e.append(int(np.argmax(lg)))
        ids_g.append(dec.greedy(tok, pos))
        # every other step continues with a token of our own instead of the argmax
        tok = int(other[i]) if i % 2 else ids_e[-1]
        pos += 1
    lg_g = dec.logits(tok, pos)
    lg_e = ad.forward(np.array([tok]), pos, cache_e)
    dec.close()
    for c in (cache_e, cache_g):
        gpu.free_kv_cache(c)
    assert ids_g == ids_e
    assert bits_equal(lg_g, lg_e)


@pytest.mark.parametrize("sm_count", [None, 12], ids=["grid-of-the-gpu", "12-sm-grid"])
@pytest.mark.parametrize("n_ff", [512, 2304])
@pytest.mark.parametrize("down_type", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_gate_up_rounds_its_output_once_for_down(down_type, n_ff, sm_count):
    """norm_swiglu(round_for=down) rounds its output to q8_K in its own kernel (round_output:
    per-super-block counters, the block that completes one rounds it) and the down product
    takes that input as it is (load_pre): the same bits as down rounding the floats itself.
    With a grid sized for 12 multiprocessors, 2304 rows go 48 to a block (fmv_plan: 3 rounds
    of 16), so blocks straddle super-blocks and add to two counters."""
    be = CupyBackend(0)
    try:
        if sm_count:
            be._sm_count = sm_count  # fmv_plan sizes the grid from it
        rng = np.random.default_rng(int(down_type) + n_ff)
        n_embd = 256
        src = RawTensors()
        for name, shape, qt in (("g", (n_ff, n_embd), T.Q4_K), ("u", (n_ff, n_embd), T.Q6_K),
                                ("d", (n_embd, n_ff), down_type)):  # fmt: skip
            src.add_float(name, rng.standard_normal(shape, dtype=np.float32) * 0.05, int(qt))
        wg, wu, wd = (be.matrix(src, n) for n in "gud")
        x = cp.asarray(rng.standard_normal((1, n_embd), dtype=np.float32))
        norm = cp.asarray(rng.standard_normal(n_embd, dtype=np.float32))
        plain = be.norm_swiglu(x, norm, 1e-6, wg, wu)
        assert be._rounded is None
        want = be.linear_add(plain.copy(), wd, x)  # down rounds the floats itself (load_act)
        for _ in range(3):  # the counters are back at zero after every launch
            h = be.norm_swiglu(x, norm, 1e-6, wg, wu, round_for=wd)
            assert be._rounded is not None and be._rounded[0] is h
            assert bits_equal(h, plain)
            taken = be.rounded_taken
            got = be.linear_add(h, wd, x)
            assert be._rounded is None and be.rounded_taken == taken + 1  # taken
            assert bits_equal(got, want)
        # another weight next (not the one rounded for): the floats are rounded as usual
        h = be.norm_swiglu(x, norm, 1e-6, wg, wu, round_for=wd)
        taken = be.rounded_taken
        assert bits_equal(be.linear_add(h.copy(), wd, x), want) and be._rounded is None
        assert be.rounded_taken == taken
    finally:
        be.close()

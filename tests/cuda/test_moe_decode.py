"""gpt-oss's one-token step on the device: norm_moe (the router's product, moe_route's top-k
and softmax, gate / up / down of the chosen experts as rows of one fused launch each,
moe_combine), attn_decode with YaRN's table, sinks and a sliding window, and the whole step
recorded in a CUDA graph at load. Against the NumPy reference (np.argsort for the routing),
the base class's composition of the same backend's primitives (routing on the host), and
eager forward().

Needs CuPy and a CUDA GPU; skipped with a reason elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'worker-orcd[cuda]')")

from worker.adapters import adapter_for  # noqa: E402
from worker.backends.base import Backend  # noqa: E402
from worker.backends.cupy_backend import cuda_available  # noqa: E402
from worker.backends.numpy_backend import NumpyBackend  # noqa: E402
from worker.gguf_file import GGUFFile  # noqa: E402
from worker.model_config import ModelConfig  # noqa: E402

if not cuda_available():
    pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)

pytestmark = pytest.mark.cuda


def rel(a, b) -> float:
    a = np.asarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else a, dtype=np.float64)
    b = np.asarray(cp.asnumpy(b) if isinstance(b, cp.ndarray) else b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bits_equal(a, b) -> bool:
    a = cp.asnumpy(a) if isinstance(a, cp.ndarray) else a
    b = cp.asnumpy(b) if isinstance(b, cp.ndarray) else b
    a32, b32 = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a32.shape == b32.shape and np.array_equal(a32.view(np.uint32), b32.view(np.uint32))


def _load(path, be, max_len=None):
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    ad = adapter_for(f, cfg, be)
    ad.load(f)
    if max_len is not None:
        be.prepare(ad, max_len)
    return cfg, ad


@pytest.fixture(scope="module")
def oss(gpu, arch_models):
    """(cfg, adapter on the GPU with its decode step recorded for 64 positions, the same on NumPy)."""
    cfg, ad = _load(arch_models["gpt-oss"], gpu, 64)
    _, ref = _load(arch_models["gpt-oss"], NumpyBackend())
    return cfg, ad, ref


def test_moe_route_matches_numpy(gpu):
    """moe_route against np.argsort(-logits, kind="stable") and the softmax of the chosen
    logits as base.Backend.norm_moe computes them; ties go to the first index, NaN last."""
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal(32).astype(np.float32) for _ in range(4)]
    tie = np.zeros(32, np.float32)
    tie[[3, 7, 9]] = 1.0
    tie[20] = 2.0
    nan = rng.standard_normal(8).astype(np.float32)
    nan[[0, 2]] = np.nan
    many = np.round(rng.standard_normal(200), 1).astype(np.float32)  # 7 a lane, with ties
    cases += [tie, nan, np.full(6, -3.0, np.float32), many]
    for logits in cases:
        for k in (1, 2, 4):
            ids, w = cp.empty(k, cp.int32), cp.empty(k, cp.float32)
            with gpu._device:
                gpu._launch_dep("moe_route", 1, 32, (cp.asarray(logits), np.int32(logits.size), np.int32(k), ids, w))
            chosen = np.argsort(-logits, kind="stable")[:k]
            sel = logits[chosen]
            want = np.exp(sel - sel.max())
            want *= np.float32(1.0 / want.sum(dtype=np.float64))
            assert ids.get().tolist() == chosen.tolist(), (logits, k)
            # exp on the device and in NumPy may differ in the last bit
            np.testing.assert_allclose(w.get(), want, rtol=1e-6, atol=0)


def test_norm_moe_on_device_matches_host_routing(gpu, oss):
    cfg, ad, ref = oss
    rng = np.random.default_rng(7)
    for layer in range(cfg.n_layer):
        L, Ln = ad.layers[layer], ref.layers[layer]
        for _ in range(4):
            x = rng.standard_normal((1, cfg.n_embd), dtype=np.float32)
            before = gpu.moe_on_device
            fused = gpu.norm_moe(cp.asarray(x), L.post_norm, cfg.norm_eps, L.moe)
            assert gpu.moe_on_device == before + 1  # the device path ran, not the fallback
            composed = Backend.norm_moe(gpu, cp.asarray(x), L.post_norm, cfg.norm_eps, L.moe)
            numpy = ref.backend.norm_moe(x, Ln.post_norm, cfg.norm_eps, Ln.moe)
            # the products sum in another order than matvec's: float32 rounding, and now and
            # then an 8-bit rounding of the down projection's input that flips (a wrong expert,
            # weight or bias is off by O(1))
            assert rel(fused, composed) < 1e-3
            assert rel(fused, numpy) < 1e-2


@pytest.mark.parametrize("n", [5, 13])
def test_norm_moe_of_a_prompt_routes_every_token_on_the_device(gpu, oss, monkeypatch, n):
    """n tokens at once (a prompt): one launch per kind for all tokens (13: in chunks of 4,
    the last one short), against routing each token on the host and the NumPy reference."""
    import worker.backends.cupy_backend as cb

    monkeypatch.setattr(cb, "MOE_CHUNK", 4 if n == 13 else cb.MOE_CHUNK)
    cfg, ad, ref = oss
    rng = np.random.default_rng(n)
    L, Ln = ad.layers[1], ref.layers[1]
    x = rng.standard_normal((n, cfg.n_embd), dtype=np.float32)
    before = gpu.moe_on_device
    fused = gpu.norm_moe(cp.asarray(x), L.post_norm, cfg.norm_eps, L.moe)
    assert gpu.moe_on_device > before
    composed = Backend.norm_moe(gpu, cp.asarray(x), L.post_norm, cfg.norm_eps, L.moe)
    numpy = ref.backend.norm_moe(x, Ln.post_norm, cfg.norm_eps, Ln.moe)
    assert fused.shape == (n, cfg.n_embd)
    for t in range(n):  # each token on its own: an error in one row must not hide in the norm
        assert rel(fused[t], composed[t]) < 1e-3, t
        assert rel(fused[t], numpy[t]) < 1e-2, t


def test_yarn_rope_of_a_prompt_reads_the_device_table(gpu, oss):
    """Consecutive positions the model's table holds take its rows: the reference's bits."""
    cfg, _, ref = oss
    assert id(cfg) in gpu._rope_tabs  # made when prepare() recorded the decode step
    x = np.random.default_rng(4).standard_normal((7, cfg.n_head, cfg.head_dim), dtype=np.float32)
    for pos in (np.arange(7), np.arange(3000, 3007)):
        assert bits_equal(gpu.rope(cp.asarray(x), pos, cfg), ref.backend.rope(x, pos, cfg))


def test_yarn_sinks_window_attention_matches_composed(gpu, oss):
    """attn_decode with YaRN's table, sinks and gpt-oss's window, past the window's length,
    against RoPE from the host's tables and attention_ext (the composed path)."""
    cfg, ad, _ = oss
    assert cfg.rope_ext_factor and cfg.sliding_window
    rng = np.random.default_rng(11)
    d, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_kv_heads
    start = cfg.sliding_window + 5
    opts = {"kq_scale": 1.0 / np.sqrt(cfg.rope_dim), "sinks": ad.layers[0].sinks}
    for window in (cfg.sliding_window, 0):
        caches = [gpu.new_kv_cache(cfg, 40) for _ in range(2)]
        prompt = [cp.asarray(rng.standard_normal((start, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
        for c in caches:  # the same prefill in both caches (composed path: n > 1)
            gpu.rope_attention(*prompt, c, 0, 0, cfg, window=window, **opts)
        step = [cp.asarray(rng.standard_normal((1, h, d), dtype=np.float32)) for h in (nh, nkv, nkv)]
        fused = gpu.rope_attention(*step, caches[0], 0, start, cfg, window=window, **opts)
        composed = Backend.rope_attention(gpu, *step, caches[1], 0, start, cfg, window=window, **opts)
        assert rel(fused, composed) < 1e-5
        assert bits_equal(caches[0].v, caches[1].v)
        # K went through RoPE: the same float32 tables, rounded to float16
        k0, k1 = (c.k[0, start].astype(cp.float32) for c in caches)
        assert float(cp.abs(k0 - k1).max()) <= 1e-3 * float(cp.abs(k1).max())
        for c in caches:
            gpu.free_kv_cache(c)


def _greedy(dec, tok, start, n):
    out = [tok]
    for i in range(n):
        out.append(dec.greedy(out[-1], start + i))
    return out


def test_step_recorded_at_load_follows_forward(gpu, oss):
    """The decode step prepare() recorded (no prompt graphs: a prompt's experts are routed on
    the host) serves jobs of two cache sizes with eager forward()'s ids, and its logits() are
    forward()'s bits; the ids are the NumPy reference's where its top logit leads clearly."""
    cfg, ad, ref = oss
    assert gpu.prompt_buckets(ad) == ()
    shared = gpu._shared_decoders[id(ad)]
    assert shared.graph is not None and not shared.busy
    rng = np.random.default_rng(5)
    for cap in (40, 64):
        prompt = rng.integers(0, cfg.vocab_size, 9)
        ce = ad.new_cache(cap)
        want = [int(ad.forward(prompt, 0, ce).argmax())]
        for i in range(20):
            want.append(int(ad.forward(np.array([want[-1]]), 9 + i, ce).argmax()))
        lr = ad.forward(np.array([want[-1]]), 29, ce)
        gpu.free_kv_cache(ce)
        c = ad.new_cache(cap)
        tok = int(ad.forward(prompt, 0, c).argmax())
        dec = ad.decoder(c)
        assert dec is shared
        routed = gpu.moe_on_device
        got = _greedy(dec, tok, 9, 20)
        assert dec.graph is not None and not dec.eager
        assert gpu.moe_on_device == routed  # replays: no Python in the step
        lg = dec.logits(got[-1], 29)
        dec.close()
        gpu.free_kv_cache(c)
        assert got == want, cap
        assert bits_equal(lg, lr)
        # the reference, teacher-forced along these ids (the tiny fixture's head makes the
        # winner lead by far: fixtures/build.py)
        cn = ref.new_cache(cap)
        ln = ref.forward(prompt, 0, cn)
        for i, t in enumerate(got):
            assert int(ln.argmax()) == t, i
            ln = ref.forward(np.array([t]), 9 + i, cn)  # the last: got[-1] at 29, as lg
        assert rel(lg, ln) < 5e-2


def test_memory_returns_after_a_job(gpu, oss):
    _, ad, _ = oss
    base = gpu.memory_in_use()
    c = ad.new_cache(48)
    tok = int(ad.forward(np.arange(5), 0, c).argmax())
    dec = ad.decoder(c)
    _greedy(dec, tok, 5, 10)
    dec.close()
    gpu.free_kv_cache(c)
    assert gpu.memory_in_use() == base

"""What CupyBackend.prepare records at load: the prompt graphs (worker/backends/
prompt_graphs.py), a prompt's prefill replayed from the graph of its length bucket, against
the NumPy reference and the eager prefill; and the shared decode step (GraphDecoder lent to
one job at a time, finding each job's KV cache through device memory), against per-job
decoders and eager forward().

Needs CuPy and a CUDA GPU; skipped with a reason elsewhere.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'worker-orcd[cuda]')")


from worker.adapters import adapter_for  # noqa: E402
from worker.backends.cupy_backend import CupyBackend, GraphDecoder, cuda_available  # noqa: E402
from worker.backends.numpy_backend import NumpyBackend  # noqa: E402
from worker.backends.prompt_graphs import PROMPT_BUCKETS  # noqa: E402
from worker.gguf_file import GGUFFile  # noqa: E402
from worker.model_config import ModelConfig  # noqa: E402

if not cuda_available():
    pytest.skip("no CUDA device visible to CuPy", allow_module_level=True)

pytestmark = pytest.mark.cuda


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bits_equal(a, b) -> bool:
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
def prepared(gpu, tiny_models):
    """name -> (cfg, adapter with prompt graphs up to 512 tokens)."""
    return {name: _load(tiny_models[name], gpu, 512) for name in ("smollm2-shape", "qwen25-shape")}


def _replays(gpu, ad) -> int:
    return gpu._prompt_graphs[id(ad)].replays


def test_buckets_follow_the_longest_context(gpu, tiny_models, prepared):
    for _, ad in prepared.values():
        assert gpu.prompt_buckets(ad) == PROMPT_BUCKETS
    _, short = _load(tiny_models["smollm2-shape"], gpu, 100)
    assert gpu.prompt_buckets(short) == (16, 32, 64)
    _, none = _load(tiny_models["smollm2-shape"], gpu, 8)
    assert gpu.prompt_buckets(none) == ()


@pytest.mark.parametrize("model", ["smollm2-shape", "qwen25-shape"])
@pytest.mark.parametrize("n", [2, 9, 16, 17, 100, 512])
def test_graph_prefill_matches_reference_and_eager(gpu, tiny_models, prepared, model, n):
    cfg, ad = prepared[model]
    _, ref = _load(tiny_models[model], NumpyBackend())
    prompt = np.random.default_rng(n).integers(0, cfg.vocab_size, n)
    before = _replays(gpu, ad)
    cg = ad.new_cache(n + 3)
    lg = ad.forward(prompt, 0, cg)
    assert _replays(gpu, ad) == before + 1  # the graph ran, not the eager path
    ce = ad.new_cache(n + 3)
    le = gpu.to_host(ad.logits(prompt, 0, ce))[0]  # the eager prefill, same kernels
    lr = ref.forward(prompt, 0, ref.new_cache(n + 3))
    # the bound of test_tiny_model_quantized_close_to_reference: 8-bit input rounding turns
    # last-bit differences (cuBLAS picks its algorithm by shape) into ~1e-2 in logits
    assert rel(lg, lr) < 5e-2 and rel(lg, le) < 5e-2
    assert int(lg.argmax()) == int(le.argmax())
    # the cache: the prompt's K and V rows as the eager prefill wrote them, nothing past them
    k_g, k_e = cp.asnumpy(cg.k), cp.asnumpy(ce.k)
    assert rel(k_g[:, :n], k_e[:, :n]) < 5e-2
    assert not k_g[:, n:].any() and not cp.asnumpy(cg.v)[:, n:].any()
    gpu.free_kv_cache(cg)
    gpu.free_kv_cache(ce)


def test_graph_prefill_then_decode_follows_eager(gpu, prepared):
    """Greedy decode after a graph prefill takes the tokens it takes after an eager one."""
    cfg, ad = prepared["qwen25-shape"]
    prompt = np.random.default_rng(5).integers(0, cfg.vocab_size, 23)
    runs = []
    for graph in (True, False):
        c = ad.new_cache(40)
        logits = ad.forward(prompt, 0, c) if graph else gpu.to_host(ad.logits(prompt, 0, c))[0]
        toks = [int(logits.argmax())]
        dec = ad.decoder(c)
        for i in range(8):
            toks.append(dec.greedy(toks[-1], 23 + i))
        dec.close()
        gpu.free_kv_cache(c)
        runs.append(toks)
    assert runs[0] == runs[1]


def test_bucket_shared_by_prompts_is_deterministic(gpu, prepared):
    # prompts of 20 and 30 tokens share the 32 graph; the longer one's ids must not leak into
    # the shorter one's padding
    cfg, ad = prepared["smollm2-shape"]
    rng = np.random.default_rng(9)
    a, b = rng.integers(0, cfg.vocab_size, 20), rng.integers(0, cfg.vocab_size, 30)
    out = []
    for p in (a, b, a, a):
        c = ad.new_cache(64)
        out.append(ad.forward(p, 0, c))
        gpu.free_kv_cache(c)
    assert bits_equal(out[2], out[0]) and bits_equal(out[3], out[0])
    assert not bits_equal(out[1], out[0])


def test_eager_outside_the_buckets(gpu, prepared):
    cfg, ad = prepared["smollm2-shape"]
    before = _replays(gpu, ad)
    for n, start in ((1, 0), (513, 0), (20, 4)):
        c = ad.new_cache(start + n + 1)
        if start:
            ad.forward(np.arange(start) % cfg.vocab_size, 0, c)
            before += 1  # that prompt of 4 took the 16 graph
        ad.forward(np.arange(n) % cfg.vocab_size, start, c)
        gpu.free_kv_cache(c)
    assert _replays(gpu, ad) == before


def test_bad_input_is_refused(gpu, prepared):
    cfg, ad = prepared["smollm2-shape"]
    c = ad.new_cache(8)
    with pytest.raises(IndexError, match="token id out of range"):
        ad.forward(np.array([1, cfg.vocab_size]), 0, c)
    with pytest.raises(ValueError, match="KV cache overflow"):
        ad.forward(np.arange(9), 0, c)
    gpu.free_kv_cache(c)


def test_memory_reserved_at_prepare_and_stable_across_jobs(tiny_models):
    be = CupyBackend(0)
    try:
        _, ad = _load(tiny_models["qwen25-shape"], be)
        gc.collect()
        weights = be.memory_in_use()
        be.prepare(ad, 512)
        reserved = be.memory_in_use() - weights
        graphs, dec = be._prompt_graphs[id(ad)].nbytes(), be._shared_decoders[id(ad)].nbytes()
        assert graphs > 0 and dec > 0
        # and the shared decoder's buffers in the default pool (state, scores for 512 positions)
        assert graphs + dec < reserved < graphs + dec + (1 << 20)
        base = be.memory_in_use()
        for n in (3, 40, 200, 512, 600):
            c = ad.new_cache(n + 5)
            tok = int(ad.forward(np.arange(n) % ad.cfg.vocab_size, 0, c).argmax())
            dec = ad.decoder(c)
            _greedy(dec, tok, n, 4)
            dec.close()
            be.free_kv_cache(c)
            assert be.memory_in_use() == base, n
    finally:
        be.close()


def test_no_graphs_when_memory_is_short(gpu, tiny_models):
    # room for the weights and 3 MiB: not for the 512 bucket's working set (its float32
    # gate/up product alone is 2 MiB), so no graph is kept and prompts run eagerly, still
    # giving the reference's logits
    # (the default pool is the process's, shared by both backends; gpu's prompt graphs have
    # pools of their own, which `limited` does not count)
    before = gpu._pool.used_bytes()
    _load(tiny_models["qwen25-shape"], gpu)
    weights = gpu._pool.used_bytes() - before
    limited = CupyBackend(0, memory_limit=gpu._pool.used_bytes() + weights + (3 << 20))
    try:
        _, ad = _load(tiny_models["qwen25-shape"], limited)
        limited.prepare(ad, 512)
        assert limited.prompt_buckets(ad) == ()
        assert id(ad) not in limited._prompt_graphs
        prompt = np.arange(12)
        c = ad.new_cache(16)
        lg = ad.forward(prompt, 0, c)
        limited.free_kv_cache(c)
        _, ref = _load(tiny_models["qwen25-shape"], NumpyBackend())
        assert rel(lg, ref.forward(prompt, 0, ref.new_cache(16))) < 5e-2
    finally:
        limited.close()


# ------------------------------------------------------------------------ shared decode step


def _greedy(dec, tok, start, n):
    out = [tok]
    for i in range(n):
        out.append(dec.greedy(out[-1], start + i))
    return out


def _eager_greedy(ad, prompt, cache, n):
    toks = [int(ad.forward(prompt, 0, cache).argmax())]
    for i in range(n):
        toks.append(int(ad.forward(np.array([toks[-1]]), len(prompt) + i, cache).argmax()))
    return toks


@pytest.mark.parametrize("model", ["smollm2-shape", "qwen25-shape"])
def test_shared_decoder_serves_jobs_of_any_cache(gpu, prepared, model):
    """Jobs with caches of other sizes (so other addresses) in turn, through the step recorded
    at load: the ids of eager forward() every time."""
    cfg, ad = prepared[model]
    shared = gpu._shared_decoders[id(ad)]
    assert shared.graph is not None and not shared.busy
    rng = np.random.default_rng(11)
    for cap in (40, 300, 41):
        prompt = rng.integers(0, cfg.vocab_size, 9)
        ce = ad.new_cache(cap)
        want = _eager_greedy(ad, prompt, ce, 12)
        gpu.free_kv_cache(ce)
        c = ad.new_cache(cap)
        tok = int(ad.forward(prompt, 0, c).argmax())
        dec = ad.decoder(c)
        assert dec is shared and dec.busy
        steps = dec.steps
        got = _greedy(dec, tok, 9, 12)
        assert dec.graph is not None and not dec.eager  # replays only: no eager step, no capture
        assert dec.steps >= steps + 12
        # logits() of the same decoder: the sampled path
        lg = dec.logits(got[-1], 21)
        dec.close()
        assert not shared.busy and shared.pool is not None  # handed back, not freed
        gpu.free_kv_cache(c)
        assert got == want, cap
        ce = ad.new_cache(cap)
        ref = _eager_greedy(ad, prompt, ce, 12)
        lr = ad.forward(np.array([ref[-1]]), 21, ce)
        gpu.free_kv_cache(ce)
        assert bits_equal(lg, lr)


def test_busy_or_too_long_gets_a_decoder_of_its_own(gpu, prepared):
    _, ad = prepared["qwen25-shape"]
    shared = gpu._shared_decoders[id(ad)]
    prompt = np.arange(7)
    c1, c2 = ad.new_cache(30), ad.new_cache(30)
    t1, t2 = int(ad.forward(prompt, 0, c1).argmax()), int(ad.forward(prompt, 0, c2).argmax())
    d1 = ad.decoder(c1)
    d2 = ad.decoder(c2)  # the shared one is lent to the first job
    assert d1 is shared and d2 is not shared and isinstance(d2, GraphDecoder)
    a, b = _greedy(d1, t1, 7, 10), _greedy(d2, t2, 7, 10)
    d2.close()
    d1.close()
    assert a == b
    for c in (c1, c2):
        gpu.free_kv_cache(c)
    long = ad.new_cache(shared.max_positions + 1)
    d3 = ad.decoder(long)
    assert d3 is not shared
    d3.close()
    gpu.free_kv_cache(long)

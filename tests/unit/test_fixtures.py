"""Made models (fixtures/build.py): determinism, loadability, quant types, full-shape sizes."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as ggml_dequantize

from fixtures.build import ARCHITECTURES, build, plan, tensor_data
from worker.backends.numpy_backend import NumpyBackend
from worker.gguf_file import GGUFFile
from worker.model_config import ModelConfig, UnsupportedArchitecture
from worker.tokenizer import load_tokenizer

# The quant types each tiny fixture claims (those of the real model it stands for).
EXPECTED_TYPES = {
    "llama": {"F32", "Q8_0", "Q4_1"},
    "qwen2": {"F32", "Q5_0", "Q8_0", "Q6_K", "Q4_K"},
    "phi3": {"F32", "Q4_K", "Q5_K", "Q6_K"},
    "gpt2": {"F32", "Q8_0"},
    "gpt-oss": {"F32", "Q8_0", "BF16", "MXFP4"},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {a: build(a, folder / f"{a}.gguf") for a in ARCHITECTURES}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes(tiny: dict[str, Path], tmp_path: Path) -> None:
    again = build("gpt-oss", tmp_path / "again.gguf", seed=0)
    other = build("gpt-oss", tmp_path / "other.gguf", seed=1)
    assert _sha(again) == _sha(tiny["gpt-oss"])
    assert _sha(other) != _sha(again)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_loads_with_claimed_types(tiny: dict[str, Path], arch: str) -> None:
    path = tiny[arch]
    assert path.stat().st_size < 8 << 20
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    assert cfg.architecture == arch
    assert {t.type_name for t in f.tensors.values()} == EXPECTED_TYPES[arch]
    p = plan(arch, "tiny")
    assert [t.name for t in p.tensors] == list(f.tensors)
    for tp in p.tensors:
        assert f.tensors[tp.name].shape == tuple(reversed(tp.shape)), tp.name
    tok = load_tokenizer(f)
    assert tok.vocab_size == cfg.vocab_size
    assert tok.decode(tok.encode("Hello world, this is a test.")).strip() == "Hello world, this is a test."
    f.close()


def test_without_vocabulary_the_same_tensors(tiny: dict[str, Path], tmp_path: Path) -> None:
    # What tests/cuda builds on a GPU machine that cannot fetch the registry vocabulary.
    bare = GGUFFile(build("qwen2", tmp_path / "bare.gguf", vocab=False))
    full = GGUFFile(tiny["qwen2"])
    assert not any(k.startswith("tokenizer.") for k in bare.metadata)
    assert ModelConfig.from_gguf(bare).vocab_size == ModelConfig.from_gguf(full).vocab_size == 8192
    assert list(bare.tensors) == list(full.tensors)
    assert all(np.array_equal(bare.raw(n), full.raw(n)) for n in full.tensors)


def test_quantize_at_full_size_draws_the_tiny_way() -> None:
    # Full-shape files get random blocks by default; quantize=True uses the tiny files' values path.
    tp = next(t for t in plan("qwen2", "full").tensors if t.name == "blk.0.ffn_down.weight")
    small = dataclasses.replace(tp, shape=(4, tp.shape[1]))  # the values path, at a testable size
    quantized = tensor_data(small, 0, "full", quantize=True)
    assert np.array_equal(quantized, tensor_data(small, 0, "tiny"))
    assert not np.array_equal(quantized, tensor_data(small, 0, "full"))
    values = ggml_dequantize(quantized, tp.qtype)
    assert 0.5 < float(values.std() * np.sqrt(tp.shape[1])) < 2  # N(0, 1/fan_in), quantized


def test_cuda_fixture_module_builds_from_fixtures_build(tmp_path: Path) -> None:
    # tests/cuda/make_fixture.py (imported by tests/cuda and bench/gpu_check.py) is a thin layer
    # over fixtures/build.py; it must work without a GPU and without the registry vocabulary.
    module = Path(__file__).parents[1] / "cuda" / "make_fixture.py"
    spec = importlib.util.spec_from_file_location("make_fixture", module)
    assert spec is not None and spec.loader is not None
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    paths = mf.build_all(tmp_path, tiny=True)
    assert set(paths) == {"smollm2-shape", "qwen25-shape"}
    assert mf.build_all(tmp_path, tiny=True) == paths  # reused, not rebuilt
    qwen = GGUFFile(paths["qwen25-shape"])
    assert qwen.architecture == "qwen2" and {t.type_name for t in qwen.tensors.values()} == EXPECTED_TYPES["qwen2"]
    assert GGUFFile(paths["smollm2-shape"]).architecture == "llama"
    src = mf.RawTensors()
    w = np.random.default_rng(0).standard_normal((3, 64), dtype=np.float32)
    src.add_float("w", w, int(Q.Q8_0))
    assert np.allclose(NumpyBackend().linear(np.eye(64, dtype=np.float32), NumpyBackend().matrix(src, "w")).T, w,
                       atol=0.02)  # fmt: skip


def test_gpt_oss_config(tiny: dict[str, Path]) -> None:
    cfg = ModelConfig.from_gguf(GGUFFile(tiny["gpt-oss"]))
    assert (cfg.n_expert, cfg.n_expert_used, cfg.sliding_window) == (4, 2, 8)
    assert cfg.rope_style == "neox" and cfg.rope_ext_factor == 1.0
    assert cfg.rope_freq_scale == pytest.approx(1 / 32) and cfg.rope_n_ctx_orig == 4096


def test_phi3_spm_vocabulary(tiny: dict[str, Path]) -> None:
    tok = load_tokenizer(GGUFFile(tiny["phi3"]))
    assert tok.kind == "gguf-spm" and not tok.add_bos
    end, user = tok.token_id("<|end|>"), tok.token_id("<|user|>")
    assert end in tok.eog_ids and tok.eos_id in tok.eog_ids
    assert tok.encode("<|user|>\nhi", parse_special=True)[0] == user
    assert user not in tok.encode("<|user|>\nhi")  # plain text cannot inject control tokens
    assert tok.decode(tok.encode("naïve 日本")) == "naïve 日本"  # byte fallback


def test_longrope_fails_clearly(tmp_path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "lr.gguf"), "phi3")
    for key, value in (("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 64),
                       ("attention.head_count", 1), ("context_length", 131072)):  # fmt: skip
        w.add_uint32(f"phi3.{key}", value)
    w.add_string("phi3.rope.scaling.type", "longrope")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitecture, match="longrope"):
        ModelConfig.from_gguf(GGUFFile(tmp_path / "lr.gguf"))


def test_full_shape_dry_run_sizes() -> None:
    oss = plan("gpt-oss", "full")
    assert 12.0e9 < oss.total_bytes < 13.0e9
    exps = [t for t in oss.tensors if t.name.endswith("_exps.weight")]
    assert len(exps) == 72 and all(t.qtype == Q.MXFP4 and t.shape[0] == 32 for t in exps)
    phi = plan("phi3", "full")
    assert 2.2e9 < phi.total_bytes < 2.5e9  # Phi-3-mini-4k Q4_K_M is 2.39 GB
    assert phi.tensors[2].name == "blk.0.attn_qkv.weight" and phi.tensors[2].shape == (9216, 3072)
    qwen = plan("qwen2", "full")
    assert 0.45e9 < qwen.total_bytes < 0.495e9  # the real file is 491,400,064 B with its vocabulary


def test_mxfp4_matvec_matches_float64(tiny: dict[str, Path]) -> None:
    f = GGUFFile(tiny["gpt-oss"])
    be = NumpyBackend()
    name = "blk.0.ffn_down_exps.weight"
    experts = be.experts(f, name)
    info = f.tensors[name]
    ref_w = ggml_dequantize(np.asarray(f.raw(name)).reshape(info.shape[2], -1), Q.MXFP4)  # gguf.quants
    ref_w = ref_w.reshape(info.shape[2], info.shape[1], info.shape[0]).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((3, info.shape[0]), dtype=np.float32)
    for e, m in enumerate(experts):
        assert m.act_type == "q8_0"  # ggml's vec_dot_type for MXFP4
        m.act_type = "f32"  # no activation rounding: the product itself is under test
        got = be.linear_expert(x, experts, e)
        want = x.astype(np.float64) @ ref_w[e].T
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_new_numpy_ops_reduce_to_the_old_ones() -> None:
    """attention_ext with defaults is attention(); layer_norm and gelu match float64 formulas."""
    from worker.backends.base import KVCache

    rng = np.random.default_rng(1)
    be = NumpyBackend()
    q = rng.standard_normal((5, 4, 32), dtype=np.float32)
    k = rng.standard_normal((5, 2, 32), dtype=np.float32)
    v = rng.standard_normal((5, 2, 32), dtype=np.float32)

    def cache() -> KVCache:
        shape = (1, 8, 2, 32)
        return KVCache(k=np.zeros(shape, np.float16), v=np.zeros(shape, np.float16), capacity=8, nbytes=0)

    assert np.array_equal(be.attention(q, k, v, cache(), 0, 0), be.attention_ext(q, k, v, cache(), 0, 0))
    # A sink of -inf changes nothing; a window of 1 leaves each query only its own value.
    assert np.array_equal(
        be.attention_ext(q, k, v, cache(), 0, 0),
        be.attention_ext(q, k, v, cache(), 0, 0, sinks=np.full(4, -np.inf, np.float32)),
    )
    own = be.attention_ext(q, k, v, cache(), 0, 0, window=1).reshape(5, 4, 32)
    assert np.allclose(own[:, 0], v[:, 0].astype(np.float16), atol=0)

    x = rng.standard_normal((3, 64), dtype=np.float32) * 3 + 1
    w, b = rng.standard_normal(64, dtype=np.float32), rng.standard_normal(64, dtype=np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w + b
    assert np.allclose(be.layer_norm(x, w, b, 1e-5), ref, rtol=1e-5, atol=1e-5)
    g = np.linspace(-12, 12, 1001, dtype=np.float32)
    g64 = g.astype(np.float64)
    tanh_gelu = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3)))
    assert np.allclose(be.gelu(g), tanh_gelu, rtol=2e-3, atol=2e-3)  # fp16 table, as ggml

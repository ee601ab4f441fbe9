"""Helpers for comparing the NumPy backend with llama.cpp (llama-cpp-python) on one GGUF file.

- `open_llama` / `llama_logits`: the reference, run the way MODELS.md records it (CPU,
  n_ctx 512, flash attention off, f16 KV cache).
- `load_ours`: our adapter on a backend, built straight from the file (no tokenizer needed).
- `teacher_forced`: runs both on llama.cpp's own greedy trajectory, one step at a time, and
  yields both sides' last-position logits at every step. Feeding llama.cpp's ids to us keeps
  the two contexts identical after a near-tie flip, so every step stays comparable; where our
  argmax equals llama.cpp's at every step, our free-running greedy ids are llama.cpp's ids.
- `converted`: a cached F32/F16 copy of a quantized file (fixtures/convert.py).

Run as a script it prints the noise study that docs/CONFORMANCE.md quotes:
    python tests/conformance/llamacpp_ref.py [models] [--weights ...] [--variants ...]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.adapters import adapter_for
from worker.adapters.base import ModelAdapter
from worker.backends.numpy_backend import Matrix, NumpyBackend
from worker.gguf_file import GGUFFile
from worker.model_config import ModelConfig
from worker.quants import roundtrip_activations, roundtrip_q8_1

if TYPE_CHECKING:
    import llama_cpp

    from worker.tokenizer import Tokenizer

N_CTX = 512
# llama.cpp's logits are bit-identical for 1 and 2 threads (checked on both models, quantized and
# F32); one thread keeps its spin-waiting thread pool from stalling on a busy 2-core machine.
N_THREADS = int(os.environ.get("WORKER_CONFORMANCE_THREADS", "1"))

# Prompts fed as raw text (tokenized by llama.cpp, the reference) and as one chat turn
# (tokenized by our tokenizer's chat template; llama.cpp gets the same ids).
PLAIN_PROMPTS: tuple[str, ...] = (
    "Write a haiku about GPUs",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "Explain the difference between TCP and UDP.",
    "1, 2, 3, 5, 8, 13,",
    "Translate to French: The weather is nice today.",
    "import numpy as np\n\n# compute the mean of each row\n",
)
CHAT_PROMPTS: tuple[str, ...] = (
    "What is the tallest mountain in the world?",
    "Write a Python function that reverses a string.",
    "Give me three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
)


# -- llama.cpp ---------------------------------------------------------------------------------
def open_llama(path: str | os.PathLike[str], n_ctx: int = N_CTX, n_threads: int = N_THREADS) -> llama_cpp.Llama:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)


def llama_tokenize(llm: llama_cpp.Llama, text: str) -> list[int]:
    return list(llm.tokenize(text.encode(), add_bos=False, special=False))


def llama_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """A copy of the last evaluated position's logits (float32 [vocab])."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def llama_is_eog(llm: llama_cpp.Llama, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


def llama_prefill(llm: llama_cpp.Llama, ids: Sequence[int]) -> np.ndarray:
    llm.reset()
    llm.eval(list(ids))
    return llama_logits(llm)


def llama_greedy(llm: llama_cpp.Llama, ids: Sequence[int], n: int) -> list[int]:
    logits = llama_prefill(llm, ids)
    out: list[int] = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
        logits = llama_logits(llm)
    return out


# -- ours --------------------------------------------------------------------------------------
@dataclass
class Ours:
    adapter: ModelAdapter
    backend: NumpyBackend
    cfg: ModelConfig
    path: Path


def load_ours(path: str | os.PathLike[str], backend: NumpyBackend | None = None) -> Ours:
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    be = backend or NumpyBackend()
    adapter = adapter_for(f, cfg, be)
    adapter.load(f)
    f.close()
    return Ours(adapter=adapter, backend=be, cfg=cfg, path=Path(path))


class Float64Backend(NumpyBackend):
    """The NumPy backend with float64 matmul accumulation: the same arithmetic otherwise, so its
    distance from the float32 backend measures how far last-bit summation differences carry."""

    def matrix(self, f: GGUFFile, name: str) -> Matrix:
        m = super().matrix(f, name)
        m.w = m.w.astype(np.float64)  # converted once: twice the memory, study only
        if m.mins is not None:
            m.mins = m.mins.astype(np.float64)
        return m

    def linear(self, x: np.ndarray, w: Matrix, bias: np.ndarray | None = None) -> np.ndarray:
        if w.mins is not None:
            xq, s16 = roundtrip_q8_1(x)
            exact = xq.reshape(x.shape[0], -1, 32).sum(axis=-1, dtype=np.float64)
            y = xq.astype(np.float64) @ w.w.T + (s16 - exact) @ w.mins.T
        else:
            y = roundtrip_activations(x, w.act_type).astype(np.float64) @ w.w.T
        y = y.astype(np.float32)
        if bias is not None:
            y += bias
        return y


@functools.cache
def _tokenizer(path: Path) -> Tokenizer:
    from worker.tokenizer import load_tokenizer

    f = GGUFFile(path)
    try:
        return load_tokenizer(f)
    finally:
        f.close()


def chat_ids(path: str | os.PathLike[str], prompt: str) -> list[int]:
    """Our tokenizer's ids for one chat turn through the model's chat template."""
    return list(_tokenizer(Path(path).resolve()).encode_prompt(prompt, True))


# -- comparison --------------------------------------------------------------------------------
def rel_l2(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))


def top2(logits: np.ndarray) -> tuple[int, int, float]:
    """(top-1 id, top-2 id, top-1 minus top-2 logit)."""
    i1, i2 = np.argpartition(logits, -2)[-2:][::-1]
    if logits[i2] > logits[i1]:
        i1, i2 = i2, i1
    return int(i1), int(i2), float(logits[i1] - logits[i2])


def teacher_forced(
    llm: llama_cpp.Llama, ours: Mapping[str, Ours], prompt_ids: Sequence[int], n: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (llama.cpp logits, {name: our logits}) after the prompt and after each of the n-1
    greedy tokens llama.cpp picks (n steps in all); every model is fed llama.cpp's token."""
    caches = {k: m.adapter.new_cache(len(prompt_ids) + n) for k, m in ours.items()}
    try:
        ids = np.asarray(prompt_ids, dtype=np.int64)
        ref = llama_prefill(llm, prompt_ids)
        mine = {k: m.adapter.forward(ids, 0, caches[k]) for k, m in ours.items()}
        pos = len(prompt_ids)
        for step in range(n):
            yield ref, mine
            if step == n - 1:
                break
            tok = int(np.argmax(ref))
            llm.eval([tok])
            ref = llama_logits(llm)
            mine = {k: m.adapter.forward(np.asarray([tok]), pos, caches[k]) for k, m in ours.items()}
            pos += 1
    finally:
        for k, m in ours.items():
            m.backend.free_kv_cache(caches[k])


@dataclass
class Trace:
    """One prompt's teacher-forced comparison, reduced to what the checks need."""

    prompt_ids: list[int]
    ref_ids: list[int] = field(default_factory=list)  # llama.cpp's greedy ids
    our_ids: list[int] = field(default_factory=list)  # our argmax at the same steps
    rel_l2: list[float] = field(default_factory=list)  # per step, ours vs llama.cpp
    ref_margin: list[float] = field(default_factory=list)  # llama.cpp's top-1 minus top-2 logit
    pair_err: list[float] = field(default_factory=list)  # |error| of that margin in our logits

    @property
    def first_mismatch(self) -> int | None:
        pairs = zip(self.our_ids, self.ref_ids, strict=True)
        return next((i for i, (a, b) in enumerate(pairs) if a != b), None)


def trace(llm: llama_cpp.Llama, ours: Ours, prompt_ids: Sequence[int], n: int) -> Trace:
    """n greedy steps, or fewer: the step where llama.cpp picks an end-of-generation token is
    the last one compared (generation stops there)."""
    t = Trace(prompt_ids=list(prompt_ids))
    for ref, mine in teacher_forced(llm, {"ours": ours}, prompt_ids, n):
        if t.ref_ids and llama_is_eog(llm, t.ref_ids[-1]):
            break
        x = mine["ours"]
        i1, i2, margin = top2(ref)
        t.ref_ids.append(i1)
        t.our_ids.append(int(np.argmax(x)))
        t.rel_l2.append(rel_l2(x, ref))
        t.ref_margin.append(margin)
        t.pair_err.append(abs(float(x[i1] - x[i2]) - margin))
    return t


# -- converted (dequantized) copies ------------------------------------------------------------
def converted_dir() -> Path:
    root = os.environ.get("WORKER_MODEL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "worker-orcd") / "converted"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def converted(src: str | os.PathLike[str], out_type: str = "F32") -> Path:
    """`src` with every weight dequantized to out_type, written once per (sha256, size) of src."""
    from fixtures.convert import dequantize_gguf

    src = Path(src)
    key = f"{src.stem}-{src.stat().st_size}-{_sha256(src)[:16]}.{out_type}.gguf"
    dst = converted_dir() / key
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
        try:
            dequantize_gguf(src, tmp, out_type)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return dst


def _write_truncated(src: Path, dst: Path, n_layers: int) -> None:
    import gguf

    f = GGUFFile(src)
    arch = f.architecture
    w = gguf.GGUFWriter(str(dst), arch)
    for key, fld in f._reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = fld.types[0]
        sub = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = n_layers if key == f"{arch}.block_count" else f.metadata[key]
        w.add_key_value(key, value.tolist() if isinstance(value, np.ndarray) else value, vtype, sub)
    for t in f._reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, np.array(t.data).reshape(tuple(reversed([int(n) for n in t.shape]))))
        else:  # block formats: the bytes as they are, shape [rows, bytes per row]
            w.add_tensor(t.name, np.array(t.data), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f.close()


def truncated(src: str | os.PathLike[str], n_layers: int) -> Path:
    """`src` cut to its first n_layers blocks (plus embeddings, final norm and output head),
    quantized tensors byte for byte: few layers leave little depth for rounding noise to grow."""
    src = Path(src)
    key = f"{src.stem}-{src.stat().st_size}-{_sha256(src)[:16]}.L{n_layers}.gguf"
    dst = converted_dir() / key
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
        try:
            _write_truncated(src, tmp, n_layers)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return dst


def weights_path(src: Path, weights: str) -> Path:
    """ "quantized" (the file itself), "F32" / "F16" (converted), or "N-layer" (truncated)."""
    if weights == "quantized":
        return src
    if weights in ("F32", "F16"):
        return converted(src, weights)
    if weights.endswith("-layer") and weights[: -len("-layer")].isdigit():
        return truncated(src, int(weights[: -len("-layer")]))
    raise ValueError(f"unknown weights {weights!r}: quantized, F32, F16 or N-layer")


# -- the noise study ---------------------------------------------------------------------------
class NoActivationRounding(NumpyBackend):
    """Mutant: float32 activations straight into the products (no vec_dot_type emulation)."""

    def linear(self, x: np.ndarray, w: Matrix, bias: np.ndarray | None = None) -> np.ndarray:
        y = x @ w.w.T
        if bias is not None:
            y += bias
        return y


class Float32Attention(NumpyBackend):
    """Mutant: attention in float32 throughout (no f16 K/V cache, Q or softmax rounding)."""

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: Any, layer: int, start: int) -> np.ndarray:
        if cache.k.dtype != np.float32:
            cache.k, cache.v = cache.k.astype(np.float32), cache.v.astype(np.float32)
        n, n_head, d = q.shape
        n_kv, end = k.shape[1], start + n
        cache.k[layer, start:end], cache.v[layer, start:end] = k, v
        group = n_head // n_kv
        qh = q.reshape(n, n_kv, group, d).transpose(1, 2, 0, 3).reshape(n_kv, group * n, d)
        scores = qh @ cache.k[layer, :end].transpose(1, 2, 0) * np.float32(1 / np.sqrt(d))
        qpos = np.tile(np.arange(start, end), group)
        scores[:, np.arange(end)[None, :] > qpos[:, None]] = -np.inf
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out = (p @ cache.v[layer, :end].transpose(1, 0, 2)).reshape(n_kv, group, n, d)
        return np.ascontiguousarray(out.transpose(2, 0, 1, 3).reshape(n, n_head * d))


class NoQ8_1BlockSums(NumpyBackend):
    """Mutant: Q4_1/Q5_1 products without ggml's fp16-rounded q8_1 block sums (uses sum(xq))."""

    def linear(self, x: np.ndarray, w: Matrix, bias: np.ndarray | None = None) -> np.ndarray:
        if w.mins is None:
            return super().linear(x, w, bias)
        y = roundtrip_q8_1(x)[0] @ w.w.T
        if bias is not None:
            y += bias
        return y


class SwappedRope(NumpyBackend):
    """Mutant: the other RoPE layout (adjacent pairs for neox models and the reverse)."""

    def rope(self, x: np.ndarray, positions: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        other = dataclasses.replace(cfg, rope_style="normal" if cfg.rope_style == "neox" else "neox")
        return super().rope(x, positions, other)


EXACT = 1e-5  # rel L2 below this: the same result up to float32 round-off

BACKENDS = {
    "f64": Float64Backend,
    "no-act-rounding": NoActivationRounding,
    "f32-attention": Float32Attention,
    "no-q8_1-sums": NoQ8_1BlockSums,
    "swapped-rope": SwappedRope,
}


def _summary(v: Sequence[float]) -> dict[str, float]:
    a = np.asarray(v, dtype=np.float64)
    if not a.size:
        return {}
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def noise_study(path: Path, prompts: Sequence[Sequence[int]], n: int, variants: Sequence[str]) -> dict[str, Any]:
    """Teacher-forced along llama.cpp's greedy path (n steps, through end-of-turn tokens too):
    our backend and each variant (BACKENDS) against llama.cpp, and each variant against ours:
    with "f64" that last figure is our self-noise."""
    llm = open_llama(path)
    models = {"ours": load_ours(path), **{v: load_ours(path, BACKENDS[v]()) for v in variants}}
    rows: dict[str, dict[str, list[float]]] = {
        k: {s: [] for s in ("l2_ref", "l2_ref_prefill", "pair_ref", "margin_at_flip", "l2_ours", "pair_ours")}
        for k in models
    }
    for ids in prompts:
        for step, (ref, mine) in enumerate(teacher_forced(llm, models, ids, n)):
            i1, i2, margin = top2(ref)
            o1, o2, o_margin = top2(mine["ours"])
            for k, x in mine.items():
                r = rows[k]
                r["l2_ref"].append(rel_l2(x, ref))
                if step == 0:
                    r["l2_ref_prefill"].append(rel_l2(x, ref))
                r["pair_ref"].append(abs(float(x[i1] - x[i2]) - margin))
                if int(np.argmax(x)) != i1:
                    r["margin_at_flip"].append(margin)
                if k != "ours":
                    r["l2_ours"].append(rel_l2(x, mine["ours"]))
                    r["pair_ours"].append(abs(float(x[o1] - x[o2]) - o_margin))
    out: dict[str, Any] = {}
    for k, r in rows.items():
        out[k] = {s: _summary(v) for s, v in r.items() if s != "margin_at_flip" and v}
        out[k]["exact_share_ref"] = float(np.mean(np.asarray(r["l2_ref"]) < EXACT))
        out[k]["flips_ref"] = len(r["margin_at_flip"])
        out[k]["margins_at_flips"] = sorted(round(m, 4) for m in r["margin_at_flip"])
        out[k]["steps"] = len(r["l2_ref"])
    del llm, models
    return out


def llama_self_noise(path: Path, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """llama.cpp against itself: prefill logits of the whole prompt in one batch vs token by
    token (different kernels and summation orders, the same arithmetic)."""
    llm = open_llama(path)
    errs = []
    for ids in prompts:
        batch = llama_prefill(llm, ids)
        llm.reset()
        for tok in ids:
            llm.eval([tok])
        errs.append(rel_l2(llama_logits(llm), batch))
    del llm
    return {"batch_vs_tokenwise": _summary(errs), "bit_identical": sum(e == 0.0 for e in errs)}


def _main() -> None:
    import argparse
    import json

    from worker.models.registry import pull

    ap = argparse.ArgumentParser(description="Noise study: ours, variants of ours and llama.cpp.")
    ap.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--weights", nargs="+", default=["quantized", "F32", "1-layer"], help="also F16, N-layer")
    ap.add_argument("--variants", nargs="+", default=["f64"], choices=sorted(BACKENDS))
    ap.add_argument("--llama-self", action="store_true", help="only llama.cpp batched vs token-by-token")
    args = ap.parse_args()
    for name in args.models:
        src = pull(name)
        llm = open_llama(src)
        prompts = [llama_tokenize(llm, p) for p in PLAIN_PROMPTS]
        del llm
        prompts += [chat_ids(src, p) for p in CHAT_PROMPTS]
        for label in args.weights:
            path = weights_path(src, label)
            if args.llama_self:
                stats = llama_self_noise(path, prompts)
            else:
                stats = noise_study(path, prompts, args.tokens, args.variants)
            head = {"model": name, "weights": label, "prompts": len(prompts), "tokens": args.tokens}
            print(json.dumps({**head, **stats}), flush=True)


if __name__ == "__main__":
    _main()

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
    python tests/conformance/llamacpp_ref.py
"""

from __future__ import annotations

import hashlib
import os
import sys
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

N_CTX = 512
N_THREADS = int(os.environ.get("WORKER_CONFORMANCE_THREADS", "2"))

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


def chat_ids(path: str | os.PathLike[str], prompt: str) -> list[int]:
    """Our tokenizer's ids for one chat turn (raises ImportError until worker.tokenizer lands)."""
    from worker.tokenizer import load_tokenizer

    f = GGUFFile(path)
    try:
        return list(load_tokenizer(f).encode_prompt(prompt, True))
    finally:
        f.close()


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


# -- the noise study ---------------------------------------------------------------------------
def _pctl(v: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q)) if len(v) else float("nan")


def noise_study(path: Path, prompts: Sequence[Sequence[int]], n: int) -> dict[str, Any]:
    """Teacher-forced along llama.cpp's greedy path: ours (f32) and ours with float64
    accumulation vs llama.cpp, and f32 vs f64 (our self-noise)."""
    llm = open_llama(path)
    models = {"f32": load_ours(path), "f64": load_ours(path, Float64Backend())}
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "l2_32_ref",
            "l2_64_ref",
            "l2_32_64",
            "l2_32_ref_prefill",
            "l2_32_64_prefill",
            "pair_32_ref",
            "pair_32_64",
            "margin_at_flip",
            "margin",
        )
    }
    flips = 0
    for ids in prompts:
        for step, (ref, mine) in enumerate(teacher_forced(llm, models, ids, n)):
            a, b = mine["f32"], mine["f64"]
            i1, i2, margin = top2(ref)
            rows["l2_32_ref"].append(rel_l2(a, ref))
            rows["l2_64_ref"].append(rel_l2(b, ref))
            rows["l2_32_64"].append(rel_l2(a, b))
            if step == 0:
                rows["l2_32_ref_prefill"].append(rel_l2(a, ref))
                rows["l2_32_64_prefill"].append(rel_l2(a, b))
            rows["margin"].append(margin)
            rows["pair_32_ref"].append(abs(float(a[i1] - a[i2]) - margin))
            j1, j2, m64 = top2(b)
            rows["pair_32_64"].append(abs(float(a[j1] - a[j2]) - m64))
            if int(np.argmax(a)) != i1:
                flips += 1
                rows["margin_at_flip"].append(margin)
    stats: dict[str, Any] = {"steps": len(rows["margin"]), "argmax_flips_vs_ref": flips}
    for k, v in rows.items():
        stats[k] = {"median": _pctl(v, 50), "p99": _pctl(v, 99), "max": max(v) if v else float("nan")}
    stats["margin_at_flip"]["all"] = sorted(round(m, 4) for m in rows["margin_at_flip"])
    del llm, models
    return stats


def _main() -> None:
    import json

    from worker.models.registry import pull

    n = int(os.environ.get("WORKER_STUDY_TOKENS", "32"))
    for name in sys.argv[1:] or ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"]:
        src = pull(name)
        llm = open_llama(src)
        prompts = [llama_tokenize(llm, p) for p in PLAIN_PROMPTS]
        del llm
        try:
            prompts += [chat_ids(src, p) for p in CHAT_PROMPTS]
        except ImportError:
            print("worker.tokenizer not available: plain prompts only", file=sys.stderr)
        for label, path in (("quantized", src), ("F32", converted(src, "F32"))):
            stats = noise_study(path, prompts, n)
            head = {"model": name, "weights": label, "prompts": len(prompts), "tokens": n}
            print(json.dumps({**head, **stats}))


if __name__ == "__main__":
    _main()

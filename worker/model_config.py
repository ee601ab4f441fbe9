"""Hyperparameters read from GGUF metadata into one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from worker.gguf_file import GGUFError, GGUFFile

# ggml's RoPE layouts: "normal" rotates adjacent pairs (x[2i], x[2i+1]); "neox" rotates
# (x[i], x[i + d/2]). llama.cpp picks one per architecture (llama_model_rope_type).
ROPE_STYLE = {"llama": "normal", "qwen2": "neox"}

SUPPORTED_ARCHITECTURES = tuple(ROPE_STYLE)


class UnsupportedArchitecture(GGUFError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_kv_heads: int
    head_dim: int
    rope_dim: int
    rope_base: float
    rope_style: str
    norm_eps: float
    context_length: int
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> ModelConfig:
        arch = f.architecture
        if arch not in ROPE_STYLE:
            raise UnsupportedArchitecture(
                f.path,
                f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
            )

        def req(key: str) -> int:
            value = f.require(f"{arch}.{key}", int)
            if value <= 0:
                raise GGUFError(f.path, f"metadata {arch}.{key}: expected a positive integer, found {value}")
            return value

        n_embd = req("embedding_length")
        n_head = req("attention.head_count")
        n_kv = f.metadata.get(f"{arch}.attention.head_count_kv", n_head)
        if not isinstance(n_kv, int) or n_kv <= 0 or n_head % n_kv:
            raise GGUFError(
                f.path, f"attention.head_count_kv {n_kv!r} must be a positive divisor of head_count {n_head}"
            )
        head_dim = f.metadata.get(f"{arch}.attention.key_length", n_embd // n_head)
        rope_dim = f.metadata.get(f"{arch}.rope.dimension_count", head_dim)
        tokens = f.metadata.get("tokenizer.ggml.tokens")
        vocab = f.metadata.get(f"{arch}.vocab_size") or (len(tokens) if tokens is not None else 0)
        if "token_embd.weight" not in f.tensors:
            raise GGUFError(f.path, "missing tensor 'token_embd.weight'")
        emb_rows = f.tensors["token_embd.weight"].shape[1]
        if not vocab:
            vocab = emb_rows
        if emb_rows != vocab:
            raise GGUFError(f.path, f"token_embd has {emb_rows} rows but the vocabulary has {vocab} tokens")
        return cls(
            architecture=arch,
            name=str(f.metadata.get("general.name", f.path.stem)),
            n_layer=req("block_count"),
            n_embd=n_embd,
            n_ff=req("feed_forward_length"),
            n_head=n_head,
            n_kv_heads=n_kv,
            head_dim=int(head_dim),
            rope_dim=int(rope_dim),
            rope_base=float(f.metadata.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_style=ROPE_STYLE[arch],
            norm_eps=float(f.metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            context_length=req("context_length"),
            vocab_size=int(vocab),
            tied_embeddings="output.weight" not in f.tensors,
        )

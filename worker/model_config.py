"""Hyperparameters read from GGUF metadata into one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from worker.gguf_file import GGUFError, GGUFFile

# ggml's RoPE layouts: "normal" rotates adjacent pairs (x[2i], x[2i+1]); "neox" rotates
# (x[i], x[i + d/2]). llama.cpp picks one per architecture (llama_model_rope_type).
# gpt2 has learned position embeddings and no RoPE ("none").
ROPE_STYLE = {"llama": "normal", "qwen2": "neox", "phi3": "neox", "gpt2": "none", "gpt-oss": "neox"}

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
    # Optional features (defaults: a plain llama-style model).
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    sliding_window: int = 0  # 0: none; gpt-oss: on even layers (llama.cpp's swa pattern 2)
    # YaRN RoPE (llama.cpp's rope_yarn): freq_scale = 1/factor, ext_factor 1 when type is yarn.
    rope_freq_scale: float = 1.0
    rope_ext_factor: float = 0.0
    rope_attn_factor: float = 1.0
    rope_n_ctx_orig: int = 0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0

    @property
    def rope_yarn(self) -> bool:
        """RoPE through YaRN's tables (ggml's rope_yarn): a scaled frequency, extrapolation
        mixed in, or a magnitude factor."""
        return bool(self.rope_ext_factor or self.rope_freq_scale != 1.0 or self.rope_attn_factor != 1.0)

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
        scaling = f.metadata.get(f"{arch}.rope.scaling.type")
        if scaling in (None, "linear"):
            # A factor of 1 (or none) is no scaling; linear scaling itself is not implemented.
            scaling = "linear" if f.metadata.get(f"{arch}.rope.scaling.factor") not in (None, 1.0) else None
        if scaling in ("longrope", "su") or "rope_factors_long.weight" in f.tensors:
            raise UnsupportedArchitecture(
                f.path,
                f"{arch}: long-context RoPE scaling (longrope / su factors) is not supported; "
                "use a model without rope.scaling (e.g. Phi-3-mini-4k)",
            )
        if scaling not in (None, "none", "yarn"):
            raise UnsupportedArchitecture(f.path, f"{arch}: unsupported rope.scaling.type {scaling!r}")
        yarn = scaling == "yarn"
        factor = float(f.metadata.get(f"{arch}.rope.scaling.factor", 1.0)) if yarn else 1.0
        n_ctx = req("context_length")
        if arch == "gpt2":
            eps = f.metadata.get(f"{arch}.attention.layer_norm_epsilon", 1e-5)
        else:
            eps = f.metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        # Phi-3's converter writes a sliding window that llama.cpp deliberately ignores.
        window = int(f.metadata.get(f"{arch}.attention.sliding_window", 0)) if arch == "gpt-oss" else 0
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
            norm_eps=float(eps),
            context_length=n_ctx,
            vocab_size=int(vocab),
            tied_embeddings="output.weight" not in f.tensors,
            n_expert=int(f.metadata.get(f"{arch}.expert_count", 0)),
            n_expert_used=int(f.metadata.get(f"{arch}.expert_used_count", 0)),
            n_ff_exp=int(f.metadata.get(f"{arch}.expert_feed_forward_length", 0)),
            sliding_window=window,
            rope_freq_scale=1.0 / factor,
            rope_ext_factor=1.0 if yarn else 0.0,
            rope_attn_factor=float(f.metadata.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
            rope_n_ctx_orig=int(f.metadata.get(f"{arch}.rope.scaling.original_context_length", n_ctx)),
        )

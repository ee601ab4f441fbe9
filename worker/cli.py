"""`worker` command line: serve, generate, inspect, models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.gguf_file import GGUFError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="GGUF path or registry name (default: the registry default)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--gpu-device", type=int, default=0)
    p.add_argument("--ctx-size", type=int, default=None)
    p.add_argument("--eos-token-id", type=int, default=None, help="force this id to end generation")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer.json (or a folder with one) to use instead of the GGUF's vocabulary "
                        "(default: a tokenizer.json beside the model file, if any)")


def _progress_printer(label: str) -> Any:
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True, console=None)
    task = bar.add_task(label, total=100)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=100 * done / max(total, 1))
        if done >= total:
            bar.stop()

    return update


def cmd_generate(args: argparse.Namespace) -> int:
    from worker.generation import FinishEvent, generate
    from worker.model import load_model, make_backend
    from worker.models.registry import resolve
    from worker.sampler import SamplingParams

    path = resolve(args.model)
    backend = make_backend(args.device, gpu_device=args.gpu_device)
    model = load_model(path, backend, ctx_size=args.ctx_size, eos_token_id=args.eos_token_id,
                       progress=_progress_printer("loading"), tokenizer=args.tokenizer)
    ids = model.encode_prompt(args.prompt, args.chat)
    seed = args.seed if args.seed is not None else int.from_bytes(__import__("os").urandom(8), "little")
    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=seed,
    )
    finish = None
    for ev in generate(model, ids, max_tokens=args.max_tokens, sampling=params, stop=args.stop or ()):
        if isinstance(ev, FinishEvent):
            finish = ev
        else:
            sys.stdout.write(ev.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if finish is not None:
        decode_s = finish.decode_time_ms / 1e3
        rate = (finish.tokens_out - 1) / decode_s if decode_s > 0 and finish.tokens_out > 1 else 0.0
        print(
            json.dumps({
                "event": "generate_end", "prompt_tokens": finish.prompt_tokens, "tokens_out": finish.tokens_out,
                "stop_reason": finish.stop_reason, "prefill_time_ms": round(finish.prefill_time_ms, 1),
                "decode_tokens_per_sec": round(rate, 2), "seed": seed, "device": backend.name,
            }),
            file=sys.stderr,
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from worker.gguf_file import GGUFFile
    from worker.model_config import ModelConfig

    f = GGUFFile(args.file)
    meta = f.metadata
    out: dict[str, Any] = {
        "file": str(f.path),
        "size_bytes": f.file_size,
        "architecture": f.architecture,
        "name": meta.get("general.name"),
        "quant_kind": f.quant_kind,
        "tensor_count": len(f.tensors),
        "tensor_types": f.tensor_type_counts(),
    }
    try:
        cfg = ModelConfig.from_gguf(f)
        out["hyperparameters"] = {k: v for k, v in cfg.__dict__.items() if k not in ("architecture", "name")}
    except GGUFError as exc:
        out["hyperparameters"] = f"unavailable: {exc.problem}"
    model = meta.get("tokenizer.ggml.model")
    out["tokenizer"] = {
        "ggml_model": model,
        "kind": {"gpt2": "gguf-bpe", "llama": "gguf-spm"}.get(str(model), f"unsupported ({model})"),
        "pre": meta.get("tokenizer.ggml.pre"),
        "vocab_size": len(meta.get("tokenizer.ggml.tokens") or []),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    template = meta.get("tokenizer.chat_template")
    out["chat_template"] = {"present": bool(template), "size_chars": len(template or "")}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from worker.models.registry import DEFAULT_MODEL, MODELS, cache_dir, pull, verify

    if args.action == "list":
        for name, m in MODELS.items():
            cached = (cache_dir() / m.filename).exists()
            default = " (default)" if name == DEFAULT_MODEL else ""
            print(f"{name}{default}: {m.description}; {m.size} bytes; {'cached' if cached else 'not cached'}")
        return 0
    if args.action == "verify":
        bad = [n for n in args.names or list(MODELS) if not verify(n)]
        for name in args.names or list(MODELS):
            print(f"{name}: {'FAILED' if name in bad else 'ok'} (full SHA-256 of the cached file)")
        return 1 if bad else 0
    for name in args.names or [DEFAULT_MODEL]:
        print(pull(name))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from worker.http.server import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worker", description="worker-orcd: GGUF inference worker")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve one model over HTTP (SSE streaming)")
    _add_model_args(s)
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; other addresses, such as "
                        "0.0.0.0, only when given, and then with --api-key)")
    s.add_argument("--worker-id", default=None)
    s.add_argument("--max-tokens-out", type=int, default=2048)
    s.add_argument("--vram-limit", type=int, default=None, help="device memory budget in bytes")
    s.add_argument("--inference-timeout-sec", type=float, default=300.0)
    s.add_argument("--queue-depth", type=int, default=8)
    s.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /execute and /cancel (or set WORKER_API_KEY); "
                        "printable ASCII, no spaces")
    s.set_defaults(func=cmd_serve)

    g = sub.add_parser("generate", help="generate text to stdout")
    _add_model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template (one user turn)")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("inspect", help="describe a GGUF file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    m = sub.add_parser("models", help="the model registry")
    m.add_argument("action", choices=["pull", "list", "verify"])
    m.add_argument("names", nargs="*")
    m.set_defaults(func=cmd_models)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GGUFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

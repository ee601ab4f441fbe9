"""CPU reference backend beside llama.cpp: greedy decode tokens/s and peak RSS.

    python bench/cpu_generate.py [--model qwen2.5-0.5b-instruct] [--tokens 64] [--threads 2]
                                 [--rss-tokens 32] [--json out.json]

1. ours: `worker generate --device cpu` (greedy, seed 0) in a child process, BLAS limited to
   --threads; decode tokens/s is the CLI's own `decode_tokens_per_sec` (tokens after the first,
   over the time after the first one was sampled). Peak RSS comes from `/usr/bin/time -v` (or,
   where that is missing, the child's rusage from os.wait4): once on the speed run and once on
   the brief's memory command, `--max-tokens <rss-tokens>`.
2. llama.cpp (llama-cpp-python, CPU) in a child process too, same file, same prompt ids, same
   thread count: the same greedy loop (`eval` one token, argmax), timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "Write a haiku about GPUs"
TIME = "/usr/bin/time"


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str, int]:
    """(exit status, stdout, stderr, peak RSS in bytes) of cmd run to completion."""
    use_time = Path(TIME).exists()
    full = [TIME, "-v", *cmd] if use_time else cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
        rss = int(m.group(1)) * 1024 if m else -1
    else:
        rss = usage.ru_maxrss * 1024  # kilobytes on Linux
    return proc.returncode, stdout, stderr, rss


def ours(model: str, prompt: str, tokens: int, threads: int) -> dict[str, Any]:
    cmd = ["worker", "generate", "--model", model, "--device", "cpu", "--prompt", prompt,
           "--max-tokens", str(tokens), "--temperature", "0", "--seed", "0"]  # fmt: skip
    if shutil.which("worker") is None:
        cmd = [sys.executable, "-m", "worker.cli", *cmd[1:]]
    t0 = time.perf_counter()
    rc, stdout, stderr, rss = run_measured(cmd, _thread_env(threads))
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}):\n{stderr[-2000:]}")
    end = next(json.loads(line) for line in stderr.splitlines() if '"generate_end"' in line)
    return {
        "command": " ".join(cmd),
        "tokens_out": end["tokens_out"],
        "decode_tokens_per_sec": end["decode_tokens_per_sec"],
        "prefill_ms": end["prefill_time_ms"],
        "peak_rss_bytes": rss,
        "wall_s": round(wall, 1),
        "text": stdout.rstrip("\n"),
    }


def llama_child(path: str, prompt: str, tokens: int, threads: int) -> None:
    """In the child: llama.cpp's greedy decode, one JSON line on stdout."""
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False)
    load_s = time.perf_counter() - t0
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    t0 = time.perf_counter()
    llm.reset()
    llm.eval(ids)
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    out = [int(np.argmax(logits))]
    t1 = time.perf_counter()  # first token sampled: decode timing starts here, as in the CLI
    while len(out) < tokens:
        llm.eval([out[-1]])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(logits)))
    t2 = time.perf_counter()
    text = llm.detokenize(out).decode(errors="replace")
    print(json.dumps({
        "load_s": round(load_s, 2), "prefill_ms": round((t1 - t0) * 1e3, 1), "tokens_out": len(out),
        "decode_tokens_per_sec": round((len(out) - 1) / (t2 - t1), 2), "text": text, "prompt_ids": list(ids),
    }))  # fmt: skip


def llama(model_path: Path, prompt: str, tokens: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--llama-child", str(model_path), "--prompt", prompt,
           "--tokens", str(tokens), "--threads", str(threads)]  # fmt: skip
    rc, stdout, stderr, rss = run_measured(cmd, _thread_env(threads))
    if rc != 0:
        raise RuntimeError(f"llama.cpp child failed ({rc}):\n{stderr[-2000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_bytes": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rss-tokens", type=int, default=32, help="max tokens of the memory run (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--llama-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_child:
        llama_child(args.llama_child, args.prompt, args.tokens, args.threads)
        return

    from worker.models.registry import resolve

    path = resolve(args.model)
    load = os.getloadavg()
    result: dict[str, Any] = {
        "model": args.model, "file": str(path), "prompt": args.prompt, "tokens": args.tokens,
        "threads": args.threads, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "loadavg_before": [round(x, 2) for x in load],
        "ours": ours(args.model, args.prompt, args.tokens, args.threads),
        "llama_cpp": llama(path, args.prompt, args.tokens, args.threads),
    }  # fmt: skip
    if args.rss_tokens:
        result["ours_rss_run"] = ours(args.model, args.prompt, args.rss_tokens, args.threads)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    o, ll = result["ours"], result["llama_cpp"]
    gib = 1 << 30
    print(f"{args.model}, greedy, {args.tokens} tokens, {args.threads} threads, prompt {args.prompt!r}")
    print(f"  ours (numpy):  {o['decode_tokens_per_sec']:7.2f} tok/s decode, prefill {o['prefill_ms']:.0f} ms, "
          f"peak RSS {o['peak_rss_bytes'] / gib:.2f} GiB")  # fmt: skip
    print(f"  llama.cpp:     {ll['decode_tokens_per_sec']:7.2f} tok/s decode, prefill {ll['prefill_ms']:.0f} ms, "
          f"peak RSS {ll['peak_rss_bytes'] / gib:.2f} GiB")  # fmt: skip
    if "ours_rss_run" in result:
        r = result["ours_rss_run"]
        print(f"  memory run:    {r['command']}\n                 peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB")
    if o["tokens_out"] < args.tokens:
        print(f"  note: ours stopped on an end-of-generation token after {o['tokens_out']} tokens")
    same = o["text"] == ll["text"].rstrip("\n")
    print(f"  same text as llama.cpp: {same}")
    if not same:
        print(f"    ours:      {o['text']!r}\n    llama.cpp: {ll['text']!r}")
    print(f"  load average before/after: {result['loadavg_before']} / {result['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

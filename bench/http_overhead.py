"""What the HTTP layer costs: time to `started`, and per-token overhead against in-process generate().

    python bench/http_overhead.py [--runs 5] [--tokens 64] [--model smollm2-135m-instruct]

Part 1 runs the same greedy job (SmolLM2 on the CPU backend by default) in-process through
`generate()` and over HTTP against a real `worker serve` subprocess, alternating, so that a
change in machine load hits both alike; the per-token overhead is the difference of the mean
inter-token intervals of each pair (median over pairs). It also compares the client-observed
interval with the server's own decode time from the `end` event.
Decode on the CPU costs tens of ms per token, so part 2 isolates the HTTP path: the real app and
uvicorn over a stub engine that emits tokens with no compute, which gives the serving plus
client cost of one `token` event directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.conftest import start_worker
from tests.service.sse import iter_events
from worker.engine import Engine

PROMPT = "1, 2, 3, 4, 5, 6,"  # counting: no early EOS


def _per_token(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) * 1e3


# -- part 1: a real model, HTTP against in-process ------------------------------------------------
def in_process_run(model: Any, ids: list[int], tokens: int) -> dict[str, float]:
    from worker.generation import FinishEvent, generate
    from worker.sampler import SamplingParams

    t0 = time.perf_counter()
    stamps: list[float] = []
    n = 0
    for ev in generate(model, ids, max_tokens=tokens, sampling=SamplingParams(temperature=0)):
        if isinstance(ev, FinishEvent):
            n = ev.tokens_out
        else:
            stamps.append(time.perf_counter())
    return {"first_token_ms": (stamps[0] - t0) * 1e3, "per_token_ms": _per_token(stamps), "tokens": n}


def http_run(c: httpx.Client, tokens: int) -> dict[str, float]:
    body = {"job_id": f"bench-{time.monotonic_ns()}", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    t0 = time.perf_counter()
    stamps: list[float] = []
    started = end = None
    with c.stream("POST", "/execute", json=body) as r:
        for ev in iter_events(r):
            now = time.perf_counter()
            if ev.event == "started":
                started = now
            elif ev.event == "token":
                stamps.append(now)
            elif ev.event in ("end", "error"):
                end = ev.data
                break
    assert started is not None and end is not None and "tokens_out" in end, end
    return {
        "started_ms": (started - t0) * 1e3,
        "first_token_ms": (stamps[0] - t0) * 1e3,
        "per_token_ms": _per_token(stamps),
        # The server's own decode time per token: client-observed minus this is what delivery adds.
        "server_per_token_ms": end["decode_time_ms"] / max(1, len(stamps) - 1),
        "tokens": end["tokens_out"],
    }


def paired(model_name: str, url: str, tokens: int, runs: int) -> tuple[list[dict], list[dict]]:
    from worker.model import load_model, make_backend
    from worker.models.registry import resolve

    model = load_model(resolve(model_name), make_backend("cpu"))
    ids = model.encode_prompt(PROMPT, False)
    http, local = [], []
    with httpx.Client(base_url=url, timeout=300) as c:
        for run in range(runs + 1):  # run 0 warms caches and is dropped
            h, p = http_run(c, tokens), in_process_run(model, ids, tokens)
            if run:
                http.append(h)
                local.append(p)
    return http, local


# -- part 2: the HTTP path alone -----------------------------------------------------------------
class _StubEngine(Engine):
    """The Engine's HTTP-facing surface with no model: tokens as fast as the loop takes them."""

    def __init__(self, n_tokens: int) -> None:  # no super().__init__: there is no model
        from worker.engine import EngineConfig, EngineInfo
        from worker.metrics import WorkerMetrics

        self.n_tokens = n_tokens
        self.config = EngineConfig()
        self.metrics = WorkerMetrics()
        self.info = EngineInfo("stub", "none", "F32", "none", 1, 1 << 20, "cpu", None, None, 1 << 20)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def submit(self, req: Any) -> Any:
        from worker.engine import Finished, Job, Started
        from worker.generation import TokenEvent

        job = Job(req, [1], self.n_tokens, 0, asyncio.get_running_loop())
        job.post(Started(req.job_id, "stub", "1970-01-01T00:00:00.000Z", 0, 1))

        def produce() -> None:  # from another thread, like the real engine
            for i in range(self.n_tokens):
                job.post(TokenEvent(text=" tok", index=i, ids=[i]))
            job.claim_end()
            job.post(Finished(self.n_tokens, 0.0, 0.0, 0.0, "max_tokens", 0))

        threading.Thread(target=produce, daemon=True).start()
        return job

    def release(self, job: Any) -> None: ...

    def cancel(self, job_id: str, message: str = "") -> str:
        return "unknown"


def http_path_only(n_tokens: int, runs: int) -> list[float]:
    import uvicorn

    from worker.http.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(_StubEngine(n_tokens))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    per_event = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        for run in range(runs + 1):
            t0 = time.perf_counter()
            n = 0
            with c.stream("POST", "/execute", json={"job_id": f"s{run}", "prompt": "x"}) as r:
                for ev in iter_events(r):
                    n += ev.event == "token"
            per_event.append((time.perf_counter() - t0) / n * 1e3)
    server.should_exit = True
    thread.join(5)
    return per_event[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--stub-tokens", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    stub = http_path_only(args.stub_tokens, args.runs)
    worker = start_worker(model=args.model)
    try:
        http, local = paired(args.model, worker.url, args.tokens, args.runs)
    finally:
        worker.stop()
    diffs = [h["per_token_ms"] - p["per_token_ms"] for h, p in zip(http, local, strict=True)]
    delivery = [h["per_token_ms"] - h["server_per_token_ms"] for h in http]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}",
        "model": args.model,
        "tokens": args.tokens,
        "runs": args.runs,
        "http_started_ms": med(http, "started_ms"),
        "http_first_token_ms": med(http, "first_token_ms"),
        "inproc_first_token_ms": med(local, "first_token_ms"),
        "http_per_token_ms": med(http, "per_token_ms"),
        "http_server_decode_per_token_ms": med(http, "server_per_token_ms"),
        "inproc_per_token_ms": med(local, "per_token_ms"),
        "per_token_overhead_ms": statistics.median(diffs),
        "per_token_overhead_ms_runs": [round(d, 3) for d in diffs],
        "delivery_per_token_ms": statistics.median(delivery),
        "http_path_only_per_token_ms": statistics.median(stub),
        "tokens_out": [r["tokens"] for r in http],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    print(f"{args.model}, CPU backend, greedy, {args.tokens} tokens, median of {args.runs} runs (after 1 warm-up)")
    print(f"  request -> started                 {result['http_started_ms']:8.2f} ms")
    print(f"  request -> first token (HTTP)      {result['http_first_token_ms']:8.2f} ms")
    print(f"  first token in-process             {result['inproc_first_token_ms']:8.2f} ms")
    print(f"  per token, HTTP (client-observed)  {result['http_per_token_ms']:8.3f} ms")
    print(f"  per token, HTTP (server decode)    {result['http_server_decode_per_token_ms']:8.3f} ms")
    print(f"  per token, in-process generate()   {result['inproc_per_token_ms']:8.3f} ms")
    print(
        f"  per-token overhead, HTTP - in-proc {result['per_token_overhead_ms']:8.3f} ms "
        f"(paired runs: {result['per_token_overhead_ms_runs']})"
    )
    print(f"  client-observed - server decode    {result['delivery_per_token_ms']:8.3f} ms")
    print(
        f"  HTTP path alone, per token event   {result['http_path_only_per_token_ms']:8.3f} ms "
        f"(stub engine, {args.stub_tokens} tokens)"
    )


if __name__ == "__main__":
    main()

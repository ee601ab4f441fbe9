"""A fake worker that speaks the contract, with one deliberate fault at a time.

The gates are only worth something if they fail on a broken worker. `FakeWorker(fault)` is a
stdlib HTTP server that implements the contract faithfully (validation, SSE stream, cancel,
health) except for the one fault named; with `fault=None` it passes gate 1, so each fault's
failures are that fault's doing. gates/selftest.py runs gate 1 against each of them.

    python -m gates.broken_workers --fault two_terminal_events --port 9100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCAB_SIZE = 1000
CONTEXT_LENGTH = 8192
MAX_TOKENS_OUT = 2048
TOKEN_DELAY_S = 0.005
# What the fake "generates", one piece per token; multibyte characters on purpose.
PIECES = ["Hello", " wörld", ",", " 日本", "🎉", " and", " مرحبا", " again", "."]
EMOJI_INDEX = PIECES.index("🎉")

# fault name -> what it breaks (gates/selftest.py knows which scenario must catch each)
FAULTS: dict[str, str] = {
    "two_terminal_events": "sends an error event after the end event",
    "split_utf8": "splits a 4-byte character across two token events",
    "accepts_high_temperature": "accepts temperature up to 4.0",
    "missing_health_field": "leaves vocab_size out of /health",
    "ignores_cancel": "answers /cancel with 202 but lets the job run on",
    "cancel_unknown_404": "answers /cancel for an unknown job with 404",
    "extra_token": "streams one token more than max_tokens",
    "unnamed_field": "leaves the field out of 400 bodies",
}


def _tokens(text: str) -> int:
    """The fake's token count: about two bytes a token, as byte-level BPE on plain text."""
    return len(text.encode()) // 2 + 1


class Rejected(Exception):
    def __init__(self, field: str | None, message: str, code: str = "INVALID_REQUEST") -> None:
        super().__init__(message)
        self.field, self.message, self.code = field, message, code


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate(body: Any, fault: str | None) -> dict[str, Any]:
    """The contract's request rules; returns the request with defaults filled in."""
    if not isinstance(body, dict):
        raise Rejected(None, "the body must be a JSON object")
    t_max = 4.0 if fault == "accepts_high_temperature" else 2.0
    ranges: dict[str, tuple[Any, Any, Any]] = {  # field: (type check, low, high)
        "max_tokens": (_is_int, 1, MAX_TOKENS_OUT),
        "temperature": (_is_num, 0.0, t_max),
        "top_p": (_is_num, 0.0, 1.0),
        "top_k": (_is_int, 0, VOCAB_SIZE),
        "min_p": (_is_num, 0.0, 1.0),
        "repetition_penalty": (_is_num, 0.0, 2.0),
        "seed": (_is_int, 0, 2**64 - 1),
    }
    known = {"job_id", "prompt", "stop", "chat", *ranges}
    for key in body:
        if key not in known:
            raise Rejected(key, f"unknown field {key!r}")
    for key, limit in (("job_id", 256), ("prompt", 32768)):
        v = body.get(key)
        if not isinstance(v, str) or not v or len(v) > limit:
            raise Rejected(key, f"{key} must be a non-empty string of at most {limit} characters")
    for key, (check, lo, hi) in ranges.items():
        if key in body and not (check(body[key]) and lo <= body[key] <= hi):
            raise Rejected(key, f"{key} must be in {lo}..{hi}, got {body[key]!r}")
    stop = body.get("stop", [])
    if not (isinstance(stop, list) and len(stop) <= 4
            and all(isinstance(s, str) and s and _tokens(s) <= 32 for s in stop)):
        raise Rejected("stop", "stop must be a list of at most 4 non-empty strings of at most 32 tokens")
    if not isinstance(body.get("chat", False), bool):
        raise Rejected("chat", "chat must be a boolean")
    req = {"max_tokens": MAX_TOKENS_OUT, "temperature": 1.0, "seed": None, **body}
    if _tokens(req["prompt"]) + req["max_tokens"] > CONTEXT_LENGTH:
        raise Rejected("max_tokens", "prompt tokens + max_tokens exceed the context length",
                       "CONTEXT_LENGTH_EXCEEDED")
    return req


class FakeWorker:
    """The fake worker's state: running jobs, cancel flags, and the server thread."""

    def __init__(self, fault: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; faults: {', '.join(FAULTS)}")
        self.fault = fault
        self.worker_id = str(uuid.uuid4())
        self.born = time.monotonic()
        self.lock = threading.Lock()
        self.running: dict[str, threading.Event] = {}  # job_id -> cancel flag
        self.seen: set[str] = set()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeWorker:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def health(self) -> dict[str, Any]:
        h = {
            "status": "healthy", "model": "fake-worker", "architecture": "llama", "resident": False,
            "quant_kind": "Q8_0", "vram_bytes_used": 0, "tokenizer_kind": "gguf-bpe",
            "vocab_size": VOCAB_SIZE, "context_length": CONTEXT_LENGTH,
            "uptime_seconds": round(time.monotonic() - self.born, 3), "device": "cpu", "sm": None,
            "cuda_runtime_version": None, "worker_id": self.worker_id, "busy": bool(self.running),
            "queued": 0,
        }
        if self.fault == "missing_health_field":
            del h["vocab_size"]
        return h


class _Handler(BaseHTTPRequestHandler):
    fake: FakeWorker

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, exc: Rejected) -> None:
        body: dict[str, Any] = {"code": exc.code, "message": exc.message, "field": exc.field}
        if self.fake.fault == "unnamed_field":
            del body["field"]
        self._json(400, body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, self.fake.health())
        else:
            self._json(404, {"code": "NOT_FOUND", "message": self.path})

    def do_POST(self) -> None:
        raw = self._body()
        if self.path == "/cancel":
            self._cancel(raw)
        elif self.path == "/execute":
            self._execute(raw)
        else:
            self._json(404, {"code": "NOT_FOUND", "message": self.path})

    def _cancel(self, raw: bytes) -> None:
        try:
            job_id = json.loads(raw)["job_id"]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"code": "INVALID_REQUEST", "message": "body must be {job_id}", "field": "job_id"})
            return
        fake = self.fake
        with fake.lock:
            flag = fake.running.get(job_id)
            known = job_id in fake.seen
        if fake.fault == "cancel_unknown_404" and not known:
            self._json(404, {"code": "NOT_FOUND", "message": f"no job {job_id}"})
            return
        if flag is not None and fake.fault != "ignores_cancel":
            flag.set()
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def _execute(self, raw: bytes) -> None:
        fake = self.fake
        try:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Rejected(None, f"invalid JSON: {exc}") from None
            req = validate(body, fake.fault)
            with fake.lock:
                if req["job_id"] in fake.running:
                    raise Rejected("job_id", f"job {req['job_id']} is already running")
                cancelled = fake.running[req["job_id"]] = threading.Event()
                fake.seen.add(req["job_id"])
        except Rejected as exc:
            self._reject(exc)
            return
        try:
            self._stream(req, cancelled)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away: the job ends with it
        finally:
            with fake.lock:
                fake.running.pop(req["job_id"], None)

    def _event(self, name: str, data: dict[str, Any] | bytes) -> None:
        payload = data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode()
        self.wfile.write(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")
        self.wfile.flush()

    def _stream(self, req: dict[str, Any], cancelled: threading.Event) -> None:
        fault = self.fake.fault
        seed = req["seed"] if req["seed"] is not None else int.from_bytes(uuid.uuid4().bytes[:8], "little")
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        started_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._event("started", {"job_id": req["job_id"], "model": "fake-worker", "started_at": started_at,
                                "seed": seed, "prompt_tokens": _tokens(req["prompt"])})
        t0 = time.monotonic()
        n_out = req["max_tokens"] + (1 if fault == "extra_token" else 0)
        produced = 0
        for k in range(n_out):
            if cancelled.is_set():
                self._event("error", {"code": "CANCELLED", "message": "cancelled by /cancel"})
                return
            time.sleep(TOKEN_DELAY_S)
            piece = PIECES[k % len(PIECES)]
            if fault == "split_utf8" and k % len(PIECES) == EMOJI_INDEX:
                b = piece.encode()
                # Raw bytes on the wire: the first half of the emoji, then the rest.
                self._event("token", b'{"t": "' + b[:2] + b'", "i": %d, "ids": [%d]}' % (produced, k))
                self._event("token", b'{"t": "' + b[2:] + b'", "i": %d, "ids": [%d]}' % (produced + 1, k + 1))
                produced += 2
                continue
            self._event("token", {"t": piece, "i": produced, "ids": [k]})
            produced += 1
        ms = (time.monotonic() - t0) * 1e3
        self._event("end", {"tokens_out": produced, "decode_time_ms": ms, "prefill_time_ms": 0.1, "ttft_ms": 0.1,
                            "stop_reason": "max_tokens", "seed": seed})
        if fault == "two_terminal_events":
            self._event("error", {"code": "INFERENCE_FAILED", "message": "a second terminal event"})


def main() -> None:
    ap = argparse.ArgumentParser(description="a contract-speaking fake worker with one fault")
    ap.add_argument("--fault", choices=list(FAULTS), default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    args = ap.parse_args()
    fake = FakeWorker(args.fault, args.host, args.port)
    print(f"fake worker ({args.fault or 'no fault'}) on {fake.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake.server.serve_forever()


if __name__ == "__main__":
    main()

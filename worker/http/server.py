"""`worker serve`: load the model, then serve it with uvicorn until SIGTERM / Ctrl-C.

Order: JSON logging -> reserve the port (fail fast, before a long load) -> load the model
(progress bar on a terminal, `model_load_progress` events otherwise) -> engine + app ->
uvicorn on the reserved socket. Requests are answered only once the model is loaded, so
/health is never "starting" in practice: a client that cannot connect yet is waiting for load.

Shutdown: the first SIGTERM / SIGINT drains (new /execute -> 503 SHUTTING_DOWN, queued jobs
cancelled, the running job gets 2 s to finish and is then cancelled) and only then asks uvicorn
to stop; the process exits 0 within 5 s. A second signal forces the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import prometheus_client
import uvicorn

from worker.logs import log_event, setup_json_logging

log = logging.getLogger("worker.server")

# RFC 6750 bearer tokens are printable ASCII; the cap keeps the header well under h11's limit.
_API_KEY_OK = re.compile(r"[\x21-\x7e]{1,4096}")
DRAIN_GRACE_S = 2.0  # the running job may finish within this, then it is cancelled
DRAIN_CANCEL_WAIT_S = 2.0  # a cancelled job lands at its next token boundary, well within this


class _Interrupted(Exception):
    """SIGTERM during start-up: exit cleanly (0) instead of dying mid-load."""


class StartupError(Exception):
    """A start-up failure, worded as the one line the operator reads."""


def serve(args: argparse.Namespace) -> int:
    worker_id = args.worker_id or str(uuid.uuid4())
    setup_json_logging(worker_id)
    # The `*_created` timestamp series only double /metrics; this process owns the client.
    prometheus_client.disable_created_metrics()
    api_key = args.api_key or os.environ.get("WORKER_API_KEY") or None
    test_faults = os.environ.get("WORKER_TEST_FAULTS") == "1"
    log_event(
        log, "startup",
        pid=os.getpid(), model=args.model, device=args.device, host=args.host, port=args.port,
        ctx_size=args.ctx_size, max_tokens_out=args.max_tokens_out, vram_limit=args.vram_limit,
        inference_timeout_sec=args.inference_timeout_sec, queue_depth=args.queue_depth,
        auth=api_key is not None, test_faults=test_faults,
    )
    if test_faults:
        log_event(log, "startup", logging.WARNING, message="WORKER_TEST_FAULTS=1: fault injection enabled")

    def interrupt(_sig: int, _frame: FrameType | None) -> None:
        raise _Interrupted

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sock, engine, app = _start(args, worker_id, api_key, test_faults)
    except StartupError as exc:
        log_event(log, "error", logging.ERROR, message=str(exc), fatal=True)
        return 1
    except _Interrupted:
        log_event(log, "shutdown", message="interrupted during start-up")
        return 0
    except Exception as exc:
        log_event(log, "error", logging.ERROR, message=f"start-up failed: {type(exc).__name__}: {exc}",
                  fatal=True, exc_info=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        log_config=None,  # our JSON handler on the root logger formats uvicorn's records too
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
        server_header=False,
        ws="none",
    )
    server = _Server(config, engine)
    server.run(sockets=[sock])
    log_event(log, "shutdown", message="stopped", uptime_seconds=round(time.monotonic() - server.born, 3))
    return 0 if server.started else 1


def _start(args: argparse.Namespace, worker_id: str, api_key: str | None, test_faults: bool) -> Any:
    from worker.backends.base import OutOfDeviceMemory
    from worker.engine import Engine, EngineConfig
    from worker.gguf_file import GGUFError
    from worker.http.app import ServiceConfig, create_app
    from worker.model import load_model, make_backend
    from worker.models.registry import DEFAULT_MODEL, MODELS, resolve

    if args.queue_depth < 1:
        raise StartupError(f"--queue-depth must be at least 1, got {args.queue_depth}")
    if args.max_tokens_out < 1:
        raise StartupError(f"--max-tokens-out must be at least 1, got {args.max_tokens_out}")
    if args.inference_timeout_sec <= 0:
        raise StartupError(f"--inference-timeout-sec must be positive, got {args.inference_timeout_sec}")
    if api_key is not None and not _API_KEY_OK.fullmatch(api_key):
        # Headers arrive as Latin-1 and the token is stripped: a non-ASCII key, or one with blanks
        # at either end, never matches (every request 401). RFC 6750 tokens have no blanks at all.
        raise StartupError("--api-key / WORKER_API_KEY must be printable ASCII without spaces (1-4096 characters)")
    sock = _reserve_port(args.host, args.port)
    bound = sock.getsockname()[0]
    if api_key is None and not ipaddress.ip_address(bound.split("%")[0]).is_loopback:
        log_event(log, "startup", logging.WARNING, host=bound,
                  message=f"listening on {bound} without --api-key: anyone who can reach this port can run "
                          "and cancel jobs (set --api-key or WORKER_API_KEY)")
    try:
        path = resolve(args.model)
    except (ValueError, RuntimeError, OSError) as exc:
        raise StartupError(str(exc)) from None
    name = args.model if args.model in MODELS else (DEFAULT_MODEL if args.model is None else Path(path).name)
    try:
        backend = make_backend(args.device, memory_limit=args.vram_limit, gpu_device=args.gpu_device)
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    log_event(log, "model_load_start", model=name, path=str(path), device=backend.name,
              size_bytes=Path(path).stat().st_size if Path(path).exists() else None)
    t0 = time.monotonic()
    try:
        model = load_model(path, backend, ctx_size=args.ctx_size, eos_token_id=args.eos_token_id,
                           progress=_load_progress(), tokenizer=getattr(args, "tokenizer", None))
    except OutOfDeviceMemory as exc:
        raise StartupError(
            f"{path}: not enough device memory for the weights on device {backend.name}: required at least "
            f"{exc.in_use + exc.requested} bytes, available {exc.limit} bytes"
            + (" (--vram-limit)" if args.vram_limit is not None else "")
        ) from None
    except (GGUFError, FileNotFoundError) as exc:
        raise StartupError(str(exc)) from None
    except ValueError as exc:  # unsupported tokenizer or template, bad metadata
        raise StartupError(f"{path}: {exc}") from None
    log_event(
        log, "model_load_complete", model=name, architecture=model.cfg.architecture, quant_kind=model.quant_kind,
        tokenizer_kind=model.tokenizer.kind, context_length=model.context_length, device=backend.name,
        vram_bytes_used=backend.memory_in_use(), load_ms=round((time.monotonic() - t0) * 1e3, 1),
    )
    if backend.name == "cpu" and args.device != "cpu":
        log_event(log, "startup", logging.WARNING, message="no CUDA GPU: serving on the CPU reference backend (slow)")
    engine = Engine(
        model,
        EngineConfig(
            queue_depth=args.queue_depth,
            inference_timeout_s=args.inference_timeout_sec,
            max_tokens_out=args.max_tokens_out,
            test_faults=test_faults,
        ),
        model_name=name,
    )
    app = create_app(engine, ServiceConfig(worker_id=worker_id, api_key=api_key))
    return sock, engine, app


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind now, listen later: a taken port fails in a second, not after the model load, and
    nobody can connect before the model is ready."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _load_progress() -> Any:
    """A rich progress bar on a terminal, else `model_load_progress` events every 10 %."""
    if sys.stderr.isatty():
        from worker.cli import _progress_printer

        return _progress_printer("loading")
    last = -10

    def update(done: int, total: int) -> None:
        nonlocal last
        pct = int(100 * done / max(total, 1))
        if pct >= last + 10 or (pct == 100 and last != 100):
            last = pct
            log_event(log, "model_load_progress", percent=pct, tensors_done=done, tensors_total=total)

    update(0, 1)
    return update


class _Server(uvicorn.Server):
    """uvicorn with a draining shutdown.

    Plain uvicorn closes the listening socket at the first signal (new clients get connection
    refused, not the contract's 503) and re-raises the signal after shutdown (exit status 143).
    Here the first signal drains the engine while the server keeps answering, then stops it.
    """

    def __init__(self, config: uvicorn.Config, engine: Any) -> None:
        super().__init__(config)
        self.engine = engine
        self.born = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started:
            addr = sockets[0].getsockname() if sockets else None
            log_event(log, "ready", host=addr[0] if addr else None, port=addr[1] if addr else None,
                      model=self.engine.info.model, device=self.engine.info.device)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining  # a second signal: stop waiting
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain(sig)))

    async def _drain(self, sig: int) -> None:
        log_event(log, "shutdown", message="draining", signal=signal.Signals(sig).name)
        try:
            await self.engine.drain(DRAIN_GRACE_S, DRAIN_CANCEL_WAIT_S)
            await asyncio.sleep(0.05)  # let the last terminal events reach their sockets
        finally:
            self.should_exit = True

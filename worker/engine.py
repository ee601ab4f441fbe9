"""The engine: one loaded model, one worker thread, one job at a time, a bounded FIFO in front.

The HTTP layer talks to this object only (`submit`, `cancel`, `release`, `status`, `drain`).
Compute runs on a dedicated thread so the asyncio event loop never blocks on a forward pass;
each job's events cross back to the loop through an `asyncio.Queue` fed with
`call_soon_threadsafe`.

    submit() --admit--> pending deque --worker thread--> generate() --events--> Job queue --> SSE

Admission control happens before a stream opens (`Rejected` carries the HTTP status and the
contract's error code); once admitted, a job always ends with exactly one terminal event,
`Finished` or `Failed`, whatever happens (cancel, disconnect, timeout, OOM, exception, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from worker.adapters.base import Decoder
from worker.backends.base import Backend, KVCache, OutOfDeviceMemory
from worker.generation import Cancelled, FinishEvent, TokenEvent, generate
from worker.logs import log_event, text_digest
from worker.metrics import WorkerMetrics
from worker.model import LoadedModel
from worker.sampler import SamplingParams

log = logging.getLogger("worker.engine")

MAX_TOKENS_DEFAULT = 2048
MAX_STOP_TOKENS = 32
# Generated seeds stay below 2**53 so that any JSON client (JavaScript included) can send the
# reported seed back exactly; requests may still pass any seed up to 2**64 - 1.
GENERATED_SEED_BOUND = 2**53


@dataclass(frozen=True)
class EngineConfig:
    # Jobs admitted at once, the running one included (TGI's --max-concurrent-requests
    # semantics): with 8, the 9th concurrent request gets 503 BUSY.
    queue_depth: int = 8
    inference_timeout_s: float = 300.0  # counted from the start of execution, not queue time
    max_tokens_out: int = MAX_TOKENS_DEFAULT
    metrics_every: int = 16  # a `metrics` event after every this many generated tokens
    residency_interval_s: float = 60.0
    # Test hook (WORKER_TEST_FAULTS=1): honour JobRequest.fault. Off in production.
    test_faults: bool = False


@dataclass(frozen=True)
class JobRequest:
    job_id: str
    prompt: str
    max_tokens: int | None = None  # None: 2048, capped by --max-tokens-out and the room left
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: generated, and reported in `started` and `end`
    chat: bool = False
    correlation_id: str | None = None
    fault: str | None = None  # test hook, see parse_fault


class Rejected(Exception):
    """A request refused before its stream opens (HTTP status + contract error code)."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after


# -- events a job's stream carries (TokenEvent comes from generation) ------------------------------
@dataclass(frozen=True, slots=True)
class Started:
    job_id: str
    model: str
    started_at: str
    seed: int
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Progress:
    tokens_out: int
    elapsed_ms: float
    tokens_per_sec: float


@dataclass(frozen=True, slots=True)
class Finished:
    tokens_out: int
    decode_time_ms: float
    prefill_time_ms: float
    ttft_ms: float
    stop_reason: str
    seed: int


@dataclass(frozen=True, slots=True)
class Failed:
    code: str  # VRAM_OOM | CANCELLED | TIMEOUT | INFERENCE_FAILED
    message: str


Event = Started | TokenEvent | Progress | Finished | Failed


@dataclass(frozen=True)
class EngineInfo:
    """What does not change while the worker runs."""

    model: str
    architecture: str
    quant_kind: str
    tokenizer_kind: str
    vocab_size: int
    context_length: int
    device: str
    sm: str | None
    cuda_runtime_version: str | None
    max_tokens_out: int


@dataclass(frozen=True)
class EngineStatus:
    healthy: bool
    draining: bool
    resident: bool
    vram_bytes_used: int
    busy: bool
    queued: int


class Job:
    """One admitted request: its parameters, its stop flag and the queue its events go to."""

    def __init__(
        self, req: JobRequest, prompt_ids: list[int], max_tokens: int, seed: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.req = req
        self.id = req.job_id
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.seed = seed
        self.admitted = time.monotonic()
        self.deadline = float("inf")
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._stop = threading.Event()
        self._stop_reason: tuple[str, str] = ("CANCELLED", "cancelled")
        self._lock = threading.Lock()
        self.done = False

    # -- stop / cancel ---------------------------------------------------------------------
    def request_stop(self, code: str, message: str) -> None:
        with self._lock:
            if not self._stop.is_set():
                self._stop_reason = (code, message)
                self._stop.set()

    def should_stop(self) -> bool:
        # Read by generate() at every token boundary: a flag check and a clock read.
        return self._stop.is_set() or time.monotonic() > self.deadline

    def stop_reason(self, timeout_s: float) -> tuple[str, str]:
        if self._stop.is_set():
            return self._stop_reason
        return "TIMEOUT", f"inference timeout: the job ran longer than {timeout_s:g} s"

    # -- events ----------------------------------------------------------------------------
    def post(self, event: Event) -> None:
        # A closed event loop (RuntimeError) means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def claim_end(self) -> bool:
        """True for the one caller that may post the terminal event (exactly one per job)."""
        with self._lock:
            if self.done:
                return False
            self.done = True
            return True

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Finished | Failed):
                return


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        config: EngineConfig | None = None,
        *,
        model_name: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.model = model
        self.config = config or EngineConfig()
        backend = model.backend
        self.metrics = metrics or WorkerMetrics(backend.memory_in_use)
        device = backend.device_info()
        self.info = EngineInfo(
            model=model_name or model.name,
            architecture=model.cfg.architecture,
            quant_kind=model.quant_kind,
            tokenizer_kind=model.tokenizer.kind,
            vocab_size=model.cfg.vocab_size,
            context_length=model.context_length,
            device=backend.name,
            # A CUDA backend reports these; the CPU reference backend has none.
            sm=device.get("sm"),
            cuda_runtime_version=device.get("cuda_runtime_version"),
            max_tokens_out=self.config.max_tokens_out,
        )
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: dict[str, Job] = {}  # admitted and unfinished, queued or running
        self._draining = False
        self._closing = False
        # Set when drain gave up on a job stuck inside one forward pass (which cannot be interrupted).
        self._stuck = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Tokenizing on its own thread keeps admission (400s) quick while a job decodes.
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        # Backends with a device override verify_residency(); the CPU reference has nothing to
        # check (resident is false there, and that is not a fault).
        self._checks_residency = type(backend).verify_residency is not Backend.verify_residency
        self._resident: bool | None = None  # None: not checked (yet, or ever on the CPU)
        self._residency_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._worker, name="engine", daemon=True)
        self._thread.start()
        self._resident = await asyncio.to_thread(self._check_residency)
        if self._resident is not None:
            self._residency_task = asyncio.create_task(self._residency_loop())

    async def drain(self, grace_s: float = 2.0, cancel_wait_s: float = 2.0) -> None:
        """Refuse new work, cancel queued jobs, let the running one finish for up to grace_s,
        then cancel it; a job still busy cancel_wait_s later (a long prefill) gets its terminal
        event anyway so that every client sees one."""
        with self._lock:
            self._draining = True
            queued = list(self._pending)
            self._pending.clear()
            for job in queued:
                self._jobs.pop(job.id, None)
        for job in queued:
            job.request_stop("CANCELLED", "worker shutting down")
            self._end(job, Failed("CANCELLED", "worker shutting down"), "cancelled")
        end = time.monotonic() + grace_s
        while self._running is not None and time.monotonic() < end:
            await asyncio.sleep(0.02)
        job = self._running
        if job is None:
            return
        job.request_stop("CANCELLED", "worker shutting down")
        end = time.monotonic() + cancel_wait_s
        while self._running is job and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if not job.done:
            self._stuck = True
            self._end(job, Failed("CANCELLED", "worker shutting down"), "cancelled")

    async def shutdown(self) -> None:
        if not self._draining:
            await self.drain(grace_s=0.0)
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._residency_task is not None:
            self._residency_task.cancel()
        if self._thread is not None:
            # A thread stuck in a forward pass will not come back within the 5 s the contract gives
            # the exit (drain already used 4): don't wait for it; it is a daemon thread, and
            # closing the backend under it is skipped below.
            await asyncio.to_thread(self._thread.join, 0.1 if self._stuck else 2.0)
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self._thread is None or not self._thread.is_alive():
            self.model.backend.close()  # frees the weights and pools on a device backend

    # -- admission -------------------------------------------------------------------------
    async def submit(self, req: JobRequest) -> Job:
        """Admit a job or raise Rejected. The job's first event, `started`, is already queued."""
        loop = asyncio.get_running_loop()
        self._check_admission(req.job_id)
        cfg, info = self.config, self.info
        if req.max_tokens is not None and req.max_tokens > cfg.max_tokens_out:
            raise Rejected(
                400, "INVALID_REQUEST",
                f"max_tokens {req.max_tokens} exceeds this worker's --max-tokens-out {cfg.max_tokens_out}",
                "max_tokens",
            )
        if req.top_k > info.vocab_size:
            raise Rejected(
                400, "INVALID_REQUEST", f"top_k {req.top_k} exceeds the vocabulary size {info.vocab_size}", "top_k"
            )
        if cfg.test_faults and req.fault:
            parse_fault(req.fault)  # a malformed fault spec is the client's error: 400 now
        prompt_ids, stop_lengths = await loop.run_in_executor(self._tokenize_pool, self._tokenize, req)
        for s, n in zip(req.stop, stop_lengths, strict=True):
            if n > MAX_STOP_TOKENS:
                raise Rejected(
                    400, "INVALID_REQUEST", f"stop sequence {s[:40]!r} is {n} tokens long; at most 32", "stop"
                )
        n_prompt, ctx = len(prompt_ids), info.context_length
        if n_prompt == 0:
            raise Rejected(400, "INVALID_REQUEST", "the prompt encodes to no tokens", "prompt")
        if req.max_tokens is None:
            if n_prompt >= ctx:
                raise Rejected(
                    400, "CONTEXT_LENGTH_EXCEEDED",
                    f"the prompt is {n_prompt} tokens; the context length is {ctx}", "prompt",
                )
            max_tokens = min(MAX_TOKENS_DEFAULT, cfg.max_tokens_out, ctx - n_prompt)
        else:
            max_tokens = req.max_tokens
            if n_prompt + max_tokens > ctx:
                raise Rejected(
                    400, "CONTEXT_LENGTH_EXCEEDED",
                    f"prompt tokens ({n_prompt}) + max_tokens ({max_tokens}) = {n_prompt + max_tokens} "
                    f"exceeds the context length {ctx}",
                    "prompt" if n_prompt >= ctx else "max_tokens",
                )
        seed = req.seed if req.seed is not None else secrets.randbelow(GENERATED_SEED_BOUND)
        job = Job(req, prompt_ids, max_tokens, seed, loop)
        with self._wake:
            # Checked again: the queue may have filled, or the id been taken, while tokenizing.
            self._check_admission(req.job_id)
            self._jobs[job.id] = job
            job.post(Started(job.id, info.model, _rfc3339_now(), seed, n_prompt))
            self._pending.append(job)
            self._wake.notify()
        return job

    def _check_admission(self, job_id: str) -> None:
        if self._draining:
            raise Rejected(503, "SHUTTING_DOWN", "the worker is shutting down")
        if job_id in self._jobs:
            raise Rejected(400, "INVALID_REQUEST", f"job_id {job_id!r} is already running or queued", "job_id")
        if len(self._jobs) >= self.config.queue_depth:
            raise Rejected(
                503, "BUSY", f"the queue is full ({self.config.queue_depth} jobs admitted)", retry_after=1
            )

    def _tokenize(self, req: JobRequest) -> tuple[list[int], list[int]]:
        tok = self.model.tokenizer
        try:
            ids = self.model.encode_prompt(req.prompt, req.chat)
        except ValueError as exc:  # e.g. a chat template that refuses the message
            field = "chat" if req.chat else "prompt"
            raise Rejected(400, "INVALID_REQUEST", f"cannot encode the prompt: {exc}", field) from None
        stop_lengths = [len(tok.encode(s, add_bos=False)) for s in req.stop]
        return ids, stop_lengths

    # -- cancel ----------------------------------------------------------------------------
    def cancel(self, job_id: str, message: str = "cancelled by request") -> str:
        """Stop a queued or running job; returns "queued", "running" or "unknown" (idempotent)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return "unknown"
            queued = job is not self._running
            if queued:
                self._pending.remove(job)
                del self._jobs[job_id]
        job.request_stop("CANCELLED", message)
        if queued:
            # Never ran: it ends here, at once, rather than when it reaches the head of the queue.
            self._end(job, Failed("CANCELLED", message), "cancelled")
            return "queued"
        return "running"

    def release(self, job: Job) -> None:
        """The job's stream is gone (finished or client disconnected): cancel it if still live."""
        if not job.done and self._jobs.get(job.id) is job:
            self.cancel(job.id, "client disconnected")

    # -- status ----------------------------------------------------------------------------
    def status(self) -> EngineStatus:
        with self._lock:
            busy = self._running is not None
            queued = len(self._pending)
        thread_ok = self._thread is not None and self._thread.is_alive()
        return EngineStatus(
            healthy=thread_ok and self._resident is not False and not self._draining,
            draining=self._draining,
            resident=bool(self._resident),
            vram_bytes_used=int(self.model.backend.memory_in_use()),
            busy=busy,
            queued=queued,
        )

    def _check_residency(self) -> bool | None:
        """The device backend's verdict: every weight and KV buffer is device memory. None on
        a backend with no device (the CPU reference: `resident` false, still healthy)."""
        if not self._checks_residency:
            return None
        try:
            report = self.model.backend.verify_residency()
        except Exception:
            log_event(log, "error", logging.ERROR, message="residency check raised", exc_info=True)
            return False
        if not report.get("resident"):
            log_event(log, "error", logging.ERROR, message="residency check failed",
                      failures=report.get("failures"), buffers=report.get("buffers"))
        return bool(report.get("resident"))

    async def _residency_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.residency_interval_s)
            self._resident = await asyncio.to_thread(self._check_residency)

    # -- the worker thread -----------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                job = self._pending.popleft()
                self._running = job
            try:
                self._execute(job)
            except BaseException:  # never let one job take the worker thread down
                log.exception("engine: unexpected failure outside generation")
                self._end(job, Failed("INFERENCE_FAILED", "internal error"), "inference_failed")
            finally:
                with self._lock:
                    if self._running is job:
                        self._running = None

    def _execute(self, job: Job) -> None:
        req, cfg = job.req, self.config
        t0 = time.monotonic()
        job.deadline = t0 + cfg.inference_timeout_s
        log_event(
            log, "execute_start",
            job_id=job.id, correlation_id=req.correlation_id, **text_digest(req.prompt),
            prompt_tokens=len(job.prompt_ids), max_tokens=job.max_tokens, seed=job.seed,
            temperature=req.temperature, chat=req.chat, stop_count=len(req.stop),
            queued_ms=round((t0 - job.admitted) * 1e3, 3),
        )
        model = self.model
        if cfg.test_faults and req.fault:
            model = dataclasses.replace(model, adapter=_FaultyAdapter(model.adapter, *parse_fault(req.fault)))
        sampling = SamplingParams(
            temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, seed=job.seed,
        )
        tokens_out = 0
        next_progress = cfg.metrics_every
        finish: FinishEvent | None = None
        terminal: Finished | Failed
        try:
            for ev in generate(
                model, job.prompt_ids, max_tokens=job.max_tokens, sampling=sampling,
                stop=req.stop, should_stop=job.should_stop,
            ):
                if isinstance(ev, FinishEvent):
                    finish = ev
                    continue
                job.post(ev)
                tokens_out += len(ev.ids)
                self.metrics.tokens.inc(len(ev.ids))
                if cfg.metrics_every and tokens_out >= next_progress:
                    elapsed = time.monotonic() - t0
                    job.post(Progress(tokens_out, round(elapsed * 1e3, 3), round(tokens_out / elapsed, 3)))
                    next_progress = (tokens_out // cfg.metrics_every + 1) * cfg.metrics_every
            assert finish is not None
            terminal = Finished(
                tokens_out=finish.tokens_out,
                decode_time_ms=round(finish.decode_time_ms, 3),
                prefill_time_ms=round(finish.prefill_time_ms, 3),
                ttft_ms=round(finish.ttft_ms, 3),
                stop_reason=finish.stop_reason,
                seed=job.seed,
            )
            outcome = "completed"
            self.metrics.ttft_ms.observe(finish.ttft_ms)
        except Cancelled:
            code, message = job.stop_reason(cfg.inference_timeout_s)
            terminal, outcome = Failed(code, message), code.lower()
        except MemoryError as exc:  # OutOfDeviceMemory, or the host allocator on the CPU backend
            self.metrics.oom.inc()
            terminal, outcome = Failed("VRAM_OOM", str(exc) or "out of device memory"), "vram_oom"
        except Exception as exc:
            log_event(
                log, "error", logging.ERROR, job_id=job.id, correlation_id=req.correlation_id,
                message=f"inference failed: {type(exc).__name__}: {exc}", exc_info=True,
            )
            terminal = Failed("INFERENCE_FAILED", f"{type(exc).__name__}: {exc}")
            outcome = "inference_failed"
        self.metrics.inference_ms.observe((time.monotonic() - t0) * 1e3)
        self._end(job, terminal, outcome, tokens_out=tokens_out, started=t0)

    def _end(
        self, job: Job, terminal: Finished | Failed, outcome: str, *, tokens_out: int = 0,
        started: float | None = None,
    ) -> None:
        """Unregister the job (its id is free again), count it, then post its terminal event:
        a client that reads /metrics or /health right after `end` sees the job accounted for."""
        with self._lock:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
            if self._running is job:
                self._running = None
        if not job.claim_end():
            return
        self.metrics.outcome(outcome)
        now = time.monotonic()
        fields: dict[str, Any] = {
            "job_id": job.id, "correlation_id": job.req.correlation_id, "outcome": outcome,
            "tokens_out": tokens_out, "prompt_tokens": len(job.prompt_ids),
            "duration_ms": round((now - (started or job.admitted)) * 1e3, 3),
        }
        if isinstance(terminal, Finished):
            fields |= {"stop_reason": terminal.stop_reason, "ttft_ms": terminal.ttft_ms,
                       "decode_time_ms": terminal.decode_time_ms}
        else:
            fields |= {"code": terminal.code, "message": terminal.message}
        log_event(log, "execute_end", logging.INFO if outcome == "completed" else logging.WARNING, **fields)
        job.post(terminal)


# -- test hook ---------------------------------------------------------------------------------
FAULT_KINDS = ("raise", "oom", "delay")
FAULT_ARG_MAX = 60_000


def parse_fault(spec: str | None) -> tuple[str, int]:
    """`raise@N`: the job's N-th forward pass raises RuntimeError (-> INFERENCE_FAILED);
    `oom@N`: it raises OutOfDeviceMemory (-> VRAM_OOM, mid-stream); `delay@MS`: every forward
    pass sleeps MS ms first (slow tokens for timeout and shutdown tests)."""
    kind, _, arg = (spec or "").partition("@")
    # ASCII digits and a bound: `delay@1e30`-sized sleeps overflow time.sleep (a job failure, not
    # the delay the test asked for); no test needs more than a minute per pass.
    if kind not in FAULT_KINDS or not (arg.isascii() and arg.isdigit()) or not 1 <= int(arg) <= FAULT_ARG_MAX:
        raise Rejected(
            400, "INVALID_REQUEST",
            f"bad test fault {(spec or '')[:64]!r}: want raise@N, oom@N or delay@MS, 1 <= N, MS <= {FAULT_ARG_MAX}",
            "fault",
        )
    return kind, int(arg)


class _FaultyAdapter:
    """Wraps the model adapter for one job so that the fault happens inside a forward pass."""

    def __init__(self, inner: Any, kind: str, arg: int) -> None:
        self.inner, self.kind, self.arg = inner, kind, arg
        self.calls = 0

    def new_cache(self, capacity: int) -> KVCache:
        return self.inner.new_cache(capacity)

    def decoder(self, cache: KVCache) -> Decoder:
        # the plain decoder: every step goes through forward() below, where the fault is
        return Decoder(self, cache)

    def forward(self, tokens: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        self.calls += 1
        if self.kind == "delay":
            time.sleep(self.arg / 1e3)
        elif self.calls == self.arg:
            if self.kind == "raise":
                raise RuntimeError(f"injected fault in forward pass {self.calls}")
            raise OutOfDeviceMemory(1 << 30, 0, 0)
        return self.inner.forward(tokens, start, cache)


def _rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

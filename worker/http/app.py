"""The HTTP layer: a Litestar app over one Engine. It knows nothing of devices or kernels.

    POST /execute  -> SSE: started, token*, metrics*, then exactly one of end | error
    POST /cancel   -> 202 (idempotent)
    GET  /health   -> the contract's health object
    GET  /metrics  -> Prometheus text
    GET  /schema/openapi.json (Litestar's default schema path)
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Controller, Litestar, Request, Response, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import JSONBody, SkipValidation
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from msgspec import UNSET

from worker.engine import Engine, Failed, Finished, Job, JobRequest, Progress, Rejected, Started
from worker.generation import TokenEvent
from worker.http.schemas import CancelRequest, CancelResponse, ErrorBody, ExecuteRequest, Health, TokenData
from worker.logs import log_event
from worker.metrics import OUTCOMES

log = logging.getLogger("worker.http")

CORRELATION_HEADER = b"x-correlation-id"
# The test hook's header (honoured only with WORKER_TEST_FAULTS=1; see docs/CONTRACT-NOTES.md).
FAULT_HEADER = "x-worker-test-fault"
# Bodies are small (a prompt is <= 32768 characters); refuse anything far larger early.
MAX_BODY_BYTES = 1 << 20
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("worker-orcd")
    except PackageNotFoundError:
        return "0.0.0"


# Injected by name; not re-validated on every request (they are our own objects).
EngineDep = NamedDependency[SkipValidation[Engine]]


@dataclass(frozen=True)
class ServiceConfig:
    worker_id: str = "00000000-0000-0000-0000-000000000000"
    api_key: str | None = None
    started: float = field(default_factory=time.monotonic)


ServiceDep = NamedDependency[SkipValidation[ServiceConfig]]


# -- errors --------------------------------------------------------------------------------------
def _error_response(request: Request, exc: Rejected) -> Response[ErrorBody]:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # Exception handlers get no dependency injection: the engine rides in app.state for this.
    engine: Engine | None = request.app.state.get("engine")
    if engine is not None and request.scope["path"] == "/execute" and exc.code.lower() in OUTCOMES:
        engine.metrics.outcome(exc.code.lower())
    return Response(ErrorBody(exc.code, exc.message, exc.field), status_code=exc.status, headers=headers)


def _validation_handler(request: Request, exc: ValidationException) -> Response[ErrorBody]:
    # Litestar's own validation (a non-strict second look; see strict_body): name the field.
    extra = exc.extra if isinstance(exc.extra, list) else []
    key = str(extra[0].get("key", "")) if extra and isinstance(extra[0], dict) else ""
    message = str(extra[0].get("message", exc.detail)) if extra and isinstance(extra[0], dict) else exc.detail
    name = key.removeprefix("data.").split(".")[0].split("[")[0] or None
    return _error_response(request, Rejected(400, "INVALID_REQUEST", message, name))


def _http_handler(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code >= 500:
        return _internal_handler(request, exc)
    code = {401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "INVALID_REQUEST")
    response = _error_response(request, Rejected(exc.status_code, code, exc.detail))
    # Keep the exception's own headers: a 405 must name the allowed methods (RFC 9110 `Allow`).
    response.headers.update(exc.headers or {})
    return response


def _internal_handler(request: Request, exc: Exception) -> Response[ErrorBody]:
    # A bug, not a client error: the worker stays up; the traceback goes out as one JSON event.
    cause = exc.__cause__ or exc
    log_event(log, "error", logging.ERROR, message=f"unhandled {type(cause).__name__} on {request.url.path}: {cause}",
              correlation_id=correlation_id(request), exc_info=exc)
    return _error_response(request, Rejected(500, "INTERNAL_ERROR", "internal error"))


_AT_FIELD = re.compile(r"at `\$\.([^`.\[]+)")
_NAMED_FIELD = re.compile(r"field `([^`]+)`")


def msgspec_error(exc: msgspec.DecodeError) -> Rejected:
    """msgspec's message names the JSON path (`... - at `$.top_k``) or the field; keep the
    message and lift the top-level field name out of it."""
    text = str(exc)
    m = _AT_FIELD.search(text) or _NAMED_FIELD.search(text)
    if not isinstance(exc, msgspec.ValidationError):
        text = f"invalid JSON body: {text}"
    return Rejected(400, "INVALID_REQUEST", text, m.group(1) if m else None)


# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or a low one not preceded by a high
# one; the leading lookbehind skips escaped backslashes (`\\ud800` is the text "\ud800").
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


def strict_body(body_type: type[msgspec.Struct]) -> Callable[[Request], Any]:
    """Litestar converts bodies with strict=False ("5" -> 5, "true" -> True); the contract wants
    wrong types refused, so the raw body is decoded strictly first."""

    async def hook(request: Request) -> None:
        body = await request.body()
        try:
            msgspec.json.decode(body, type=body_type)
        except msgspec.DecodeError as exc:
            if m := _LONE_SURROGATE.search(body):
                # msgspec words this as "truncated" or "malformed"; say what is actually wrong.
                raise Rejected(
                    400, "INVALID_REQUEST",
                    f"invalid JSON body: lone UTF-16 surrogate escape {m.group(1).decode()} at byte {m.start(1)} "
                    "(strings must be valid Unicode: a surrogate escape needs its pair)",
                ) from None
            raise msgspec_error(exc) from None
        except UnicodeDecodeError as exc:
            raise Rejected(400, "INVALID_REQUEST", f"invalid JSON body: not UTF-8 ({exc.reason})") from None

    return hook


# -- auth and correlation ----------------------------------------------------------------------
def bearer_guard(api_key: str | None) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    expected = (api_key or "").encode()

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if not expected:
            return
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise Rejected(401, "UNAUTHORIZED", "missing or wrong bearer token (Authorization: Bearer <key>)")

    return guard


_CID_OK = re.compile(rb"^[\x21-\x7e]{1,128}$")


def correlation_middleware(app: ASGIApp) -> ASGIApp:
    """Echo X-Correlation-Id on the response (one is made up when absent or unusable) and
    leave it in scope state for the job's logs."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        cid = next((v for k, v in scope["headers"] if k == CORRELATION_HEADER), b"")
        if not _CID_OK.match(cid):
            cid = uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["correlation_id"] = cid.decode()

        async def send_with_cid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (CORRELATION_HEADER, cid)]
            await send(message)

        await app(scope, receive, send_with_cid)

    return middleware


def correlation_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("correlation_id")


# -- SSE -------------------------------------------------------------------------------------------
_encode = msgspec.json.Encoder().encode
_EVENT_NAMES: dict[type, str] = {
    Started: "started", TokenEvent: "token", Progress: "metrics", Finished: "end", Failed: "error",
}


# Characters that JSON leaves raw but that line splitters with Unicode rules (Python's
# str.splitlines, for one) take for line breaks: escaped, a `data:` line of the stream stays one
# line for every client, not only for those that split on CR and LF as the SSE spec says. Every
# event passes here and almost none holds one: a regex pass (~0.2 µs an event) rather than
# str.translate (~1.4 µs).
_UNICODE_BREAK = re.compile("[\x85\u2028\u2029]")


def _escape_break(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def to_sse(event: Any) -> ServerSentEventMessage:
    payload = TokenData(event.text, event.index, event.ids) if isinstance(event, TokenEvent) else event
    data = _UNICODE_BREAK.sub(_escape_break, _encode(payload).decode())
    return ServerSentEventMessage(data=data, event=_EVENT_NAMES[type(event)])


async def job_stream(job: Job, engine: Engine) -> AsyncGenerator[ServerSentEventMessage, None]:
    try:
        async for event in job.events():
            yield to_sse(event)
    finally:
        # Also reached when the client disconnects (Litestar cancels the stream): cancel the job.
        engine.release(job)


_ERRORS = {
    400: ResponseSpec(ErrorBody, description="INVALID_REQUEST or CONTEXT_LENGTH_EXCEEDED", generate_examples=False),
    401: ResponseSpec(ErrorBody, description="UNAUTHORIZED (only with --api-key)", generate_examples=False),
    503: ResponseSpec(ErrorBody, description="BUSY (with Retry-After) or SHUTTING_DOWN", generate_examples=False),
}


class JobsController(Controller):
    """Work: execute and cancel (behind the bearer guard when an API key is set)."""

    path = "/"
    security = [{}, {"bearer": []}]  # noqa: RUF012  (Litestar reads class attributes)

    @post(
        "/execute",
        before_request=strict_body(ExecuteRequest),
        status_code=200,
        media_type="text/event-stream",
        operation_id="execute",
        response_description="SSE stream of job events",
        responses=_ERRORS,
        summary="Run one job and stream its tokens",
        description="An SSE stream: `started`, zero or more `token` and `metrics`, then one `end` or `error`.",
    )
    async def execute(self, request: Request, data: JSONBody[ExecuteRequest], engine: EngineDep) -> ServerSentEvent:
        job = await engine.submit(
            JobRequest(
                job_id=data.job_id,
                prompt=data.prompt,
                max_tokens=None if data.max_tokens is UNSET else data.max_tokens,
                temperature=data.temperature,
                top_p=data.top_p,
                top_k=data.top_k,
                min_p=data.min_p,
                repetition_penalty=data.repetition_penalty,
                stop=tuple(data.stop),
                seed=data.seed,
                chat=data.chat,
                correlation_id=correlation_id(request),
                fault=request.headers.get(FAULT_HEADER),
            )
        )
        return ServerSentEvent(
            job_stream(job, engine),
            # Runs after the stream ends, also when it never started: no job outlives its client.
            background=BackgroundTask(engine.release, job),
            headers={"X-Accel-Buffering": "no"},
        )

    @post(
        "/cancel",
        before_request=strict_body(CancelRequest),
        status_code=202,
        operation_id="cancel",
        responses={k: v for k, v in _ERRORS.items() if k != 503},
        summary="Cancel a queued or running job (202 always; idempotent)",
    )
    async def cancel(self, data: JSONBody[CancelRequest], engine: EngineDep) -> CancelResponse:
        return CancelResponse(data.job_id, engine.cancel(data.job_id))  # type: ignore[arg-type]


class StatusController(Controller):
    path = "/"

    @get(
        "/health",
        operation_id="health",
        summary="Worker and model status",
        responses={503: ResponseSpec(Health, generate_examples=False, description="unhealthy or draining")},
    )
    async def health(self, engine: EngineDep, service: ServiceDep) -> Response[Health]:
        info, st = engine.info, engine.status()
        body = Health(
            status="healthy" if st.healthy else "unhealthy",
            model=info.model,
            architecture=info.architecture,
            resident=st.resident,
            quant_kind=info.quant_kind,
            vram_bytes_used=st.vram_bytes_used,
            tokenizer_kind=info.tokenizer_kind,
            vocab_size=info.vocab_size,
            context_length=info.context_length,
            uptime_seconds=round(time.monotonic() - service.started, 3),
            device=info.device,
            sm=info.sm,
            cuda_runtime_version=info.cuda_runtime_version,
            worker_id=service.worker_id,
            busy=st.busy,
            queued=st.queued,
        )
        # Like llama.cpp's /health: 503 while the worker cannot take work (also while draining).
        return Response(body, status_code=200 if st.healthy else 503)

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics", media_type=METRICS_MEDIA_TYPE)
    async def metrics(self, engine: EngineDep) -> Response[bytes]:
        return Response(engine.metrics.render(), media_type=engine.metrics.content_type)


def create_app(engine: Engine | None, config: ServiceConfig | None = None) -> Litestar:
    """The app over `engine`; engine=None builds a route-only app (for the OpenAPI schema)."""
    config = config or ServiceConfig()

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        if engine is None:
            yield
            return
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()

    jobs = Router(path="/", route_handlers=[JobsController], guards=[bearer_guard(config.api_key)])
    app = Litestar(
        route_handlers=[jobs, StatusController],
        dependencies={
            "engine": Provide(lambda: engine, sync_to_thread=False),
            "service": Provide(lambda: config, sync_to_thread=False),
        },
        exception_handlers={
            Rejected: _error_response,
            ValidationException: _validation_handler,
            HTTPException: _http_handler,
            Exception: _internal_handler,
        },
        middleware=[correlation_middleware],
        lifespan=[lifespan],
        state=State({"engine": engine}),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="worker-orcd",
            version=_version(),
            description="One GGUF model, one job at a time, tokens streamed over SSE.",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="only with --api-key")
                }
            ),
        ),
        logging_config=None,  # keep the process's JSON logging (worker.logs) as it is
        debug=False,
    )
    _serve_exact_request_schemas(app)
    return app


def _serve_exact_request_schemas(app: Litestar) -> None:
    """Litestar's schema of a msgspec Struct loses rules the strict decoder enforces (no
    `additionalProperties: false`, no bounds on `seed: int | None`, no `minLength` on `stop`
    items), so clients and fuzzers built from it send bodies the worker refuses. msgspec's own
    JSON schema states exactly what the decoder accepts: it replaces Litestar's for the request
    bodies in the (cached) document the app serves."""
    _, components = msgspec.json.schema_components(
        (ExecuteRequest, CancelRequest), ref_template="#/components/schemas/{name}"
    )
    schemas = app.openapi_schema.components.schemas
    for name, body in components.items():
        schemas[name] = body  # type: ignore[assignment]  (a plain dict is serialized as is)


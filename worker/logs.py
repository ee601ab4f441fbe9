"""Structured logs: one JSON object per line on stderr.

Every record carries `ts`, `level`, `event` and `worker_id`; events emitted through `log_event`
add their own fields (`job_id`, `correlation_id`, ...). Records from other libraries (uvicorn,
warnings from the loader) come out as `event: "log"` with their message, so stderr stays one
parseable stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import IO, Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "worker_id": self.worker_id,
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if out["event"] == "log":
            out["logger"] = record.name
            out["message"] = record.getMessage()
        elif record.msg != out["event"]:
            out.setdefault("message", record.getMessage())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_json_logging(worker_id: str, stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Route every logger (ours, uvicorn's, litestar's) to one JSON handler on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker_id))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a numpy RuntimeWarning must not break the one-JSON-per-line stream
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """One event record; `fields` become top-level keys of the JSON line."""
    if logger.isEnabledFor(level):
        message = fields.pop("message", event)
        exc_info = fields.pop("exc_info", None)
        logger.log(level, message, exc_info=exc_info, extra={"event": event, "fields": fields})


def text_digest(text: str) -> dict[str, Any]:
    """What the logs say about a prompt instead of the prompt itself."""
    return {"prompt_chars": len(text), "prompt_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _rfc3339(t: float) -> str:
    ms = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"

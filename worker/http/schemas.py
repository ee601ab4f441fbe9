"""Request and response bodies of the HTTP contract, constraints in the types."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

SEED_MAX = 2**64 - 1
JobId = Annotated[str, Meta(min_length=1, max_length=256, description="Caller-chosen id, unique among live jobs")]
StopString = Annotated[str, Meta(min_length=1, description="Non-empty; at most 32 tokens")]


class ExecuteRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    job_id: JobId
    prompt: Annotated[str, Meta(min_length=1, max_length=32768)]
    # Absent: 2048, capped by --max-tokens-out and by the context room the prompt leaves.
    max_tokens: Annotated[
        int, Meta(ge=1, le=2048, description="1..2048 and <= --max-tokens-out; default 2048 (capped to fit)")
    ] | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0.0, le=2.0, description="0.0 means greedy")] = 1.0
    top_p: Annotated[float, Meta(ge=0.0, le=1.0, description="1.0 = off")] = 1.0
    top_k: Annotated[int, Meta(ge=0, description="0 = off; at most the vocabulary size")] = 0
    min_p: Annotated[float, Meta(ge=0.0, le=1.0, description="0.0 = off")] = 0.0
    repetition_penalty: Annotated[float, Meta(ge=0.0, le=2.0, description="1.0 = off")] = 1.0
    stop: Annotated[list[StopString], Meta(max_length=4)] = msgspec.field(default_factory=list)
    # msgspec cannot express le=2**64-1 (int64 bounds only): __post_init__ checks it.
    seed: Annotated[
        int, Meta(ge=0, description="0..2**64-1; generated and reported when absent",
                  extra_json_schema={"maximum": SEED_MAX})
    ] | None = None
    chat: Annotated[bool, Meta(description="Apply the model's chat template, the prompt as one user turn")] = False

    def __post_init__(self) -> None:
        if self.seed is not None and self.seed > SEED_MAX:
            # Worded like msgspec's own errors so the field is found the same way.
            raise ValueError(f"Expected `int` <= {SEED_MAX} - at `$.seed`")


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    job_id: JobId


class CancelResponse(msgspec.Struct):
    job_id: str
    state: Literal["queued", "running", "unknown"]  # what the job was when the cancel arrived


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None = None


class Health(msgspec.Struct):
    status: Literal["healthy", "unhealthy", "starting"]
    model: str
    architecture: str
    resident: bool
    quant_kind: str
    vram_bytes_used: int
    tokenizer_kind: str
    vocab_size: int
    context_length: int
    uptime_seconds: float
    device: str
    sm: str | None
    cuda_runtime_version: str | None
    worker_id: str
    busy: bool
    queued: int


# -- SSE `data:` payloads (events other than `token` encode the engine's dataclasses as is) ------
class TokenData(msgspec.Struct, array_like=False):
    t: str
    i: int
    ids: list[int]

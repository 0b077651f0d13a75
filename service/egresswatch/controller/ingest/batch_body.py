"""The body of `POST /api/v1/results` (agent ingest): read within a size limit, validated
strictly, turned into model types.

A batch is {"source", "batch_id", "rounds": [...]}, each round the shape
`report.round_document` produces (target, source, started_at, steps with step, status, reason,
duration_ms, detail, evidence). The fields a round document derives (url, ok,
first_failing_step, first_failing_reason, next_command) may be sent and are ignored: the
controller derives them again. Anything else unknown is refused, in the evidence too: each
step's evidence must be its step's type (steps.py, evidence.py), checked strictly here.

`BatchIn` is the contract (the OpenAPI document is made from it) and answers every batch that
`plain_batch.py` does not take: that reads what agents send, the same way, without pydantic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from egresswatch.controller.api.query import (
    NAME_PATTERN,
    ApiError,
    InvalidParam,
    bad_request,
    parse_time,
)
from egresswatch.controller.ingest.plain_batch import (
    BATCH_ID_MAX,
    DETAIL_MAX,
    DURATION_MS_MAX,
    NAME_MAX,
    Batch,
    plain_batch,
)
from egresswatch.evidence import Evidence, EvidenceError
from egresswatch.model import (
    PROBE_STEPS,
    Reason,
    RoundResult,
    SourceKind,
    Status,
    Step,
    StepResult,
)
from egresswatch.steps import evidence_from_json

__all__ = [
    "BATCH_ID_MAX",
    "DETAIL_MAX",
    "DURATION_MS_MAX",
    "MAX_BODY_BYTES",
    "NAME_MAX",
    "TEXT_PATTERN",
    "Batch",
    "BatchIn",
    "parse_batch",
    "read_body",
]

MAX_BODY_BYTES = 5 * 1024 * 1024
TEXT_PATTERN = r"^[^\u0000]*$"  # no NUL: PostgreSQL stores none in text or JSON
_CHUNK = 64 * 1024
# Validation context: True when the body holds no NUL character. JSON writes one only as the
# escape \u0000 (a raw control character is not JSON); looking through every evidence object
# for one was a sixth of the controller's CPU per ingested round.
_NO_NUL = "no_nul"


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


def _time(value: object) -> object:
    if isinstance(value, str):
        return parse_time(value)
    raise ValueError("an RFC 3339 date-time string with a timezone, e.g. 2024-05-01T12:00:00Z")


Time = Annotated[datetime, BeforeValidator(_time)]
Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StepIn(_Strict):
    step: Step
    status: Status
    reason: Reason | None = None
    duration_ms: float = Field(ge=0, le=DURATION_MS_MAX, allow_inf_nan=False)
    detail: str = Field("", max_length=DETAIL_MAX, pattern=TEXT_PATTERN)
    evidence: dict[str, Any] = Field(default_factory=dict)

    def decoded_evidence(self) -> Evidence:
        """The evidence as its step's type, decoded strictly; raises EvidenceError when it
        does not fit. A separate pass (parse_batch), so the problem names the field inside
        the evidence."""
        return evidence_from_json(self.step, self.evidence)

    @field_validator("evidence")
    @classmethod
    def _storable(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if (info.context or {}).get(_NO_NUL) is True:
            return value  # parse_batch found no NUL in the whole body: no need to look
        if _has_nul(value):
            raise ValueError("a text in the evidence holds a NUL character: no database stores it")
        return value

    @field_validator("step")
    @classmethod
    def _probe_step(cls, value: Step) -> Step:
        if value not in PROBE_STEPS:
            allowed = ", ".join(s.value for s in PROBE_STEPS)
            raise ValueError(f"{value.value} is derived by the controller; agents send {allowed}")
        return value


class RoundIn(_Strict):
    target: Name
    source: Name
    started_at: Time
    steps: list[StepIn] = Field(min_length=1, max_length=len(PROBE_STEPS))
    # Derived by report.round_document; accepted so an agent may send that document as it is,
    # and ignored.
    url: str | None = None
    ok: bool | None = None
    first_failing_step: Step | None = None
    first_failing_reason: Reason | None = None
    next_command: str | None = None

    @field_validator("steps")
    @classmethod
    def _each_step_once(cls, value: list[StepIn]) -> list[StepIn]:
        seen: set[Step] = set()
        for item in value:
            if item.step in seen:
                raise ValueError(f"step {item.step.value} appears twice")
            seen.add(item.step)
        return value

    def result(self, evidence: Sequence[Evidence]) -> RoundResult:
        """The round, `evidence[i]` the decoded evidence of `steps[i]`."""
        return RoundResult(
            target=self.target,
            source=self.source,
            started_at=self.started_at,
            steps=tuple(
                StepResult(
                    step=s.step,
                    status=s.status,
                    reason=s.reason,
                    duration_s=s.duration_ms / 1000.0,
                    detail=s.detail,
                    evidence=typed,
                )
                for s, typed in zip(self.steps, evidence, strict=True)
            ),
        )


class BatchIn(_Strict):
    source: Name
    source_kind: SourceKind | None = None
    source_node: Name | None = None  # the node the source ran on (a pod's NODE_NAME)
    batch_id: str = Field(min_length=1, max_length=BATCH_ID_MAX, pattern=NAME_PATTERN)
    rounds: list[RoundIn] = Field(min_length=1)

    def batch(self, evidence: list[list[Evidence]]) -> Batch:
        """The batch, `evidence[i][j]` the decoded evidence of `rounds[i].steps[j]`."""
        return Batch(
            source=self.source,
            source_kind=self.source_kind,
            source_node=self.source_node,
            batch_id=self.batch_id,
            rounds=[r.result(typed) for r, typed in zip(self.rounds, evidence, strict=True)],
        )


def field_name(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as the JSON path people read: `rounds[0].steps[2].status`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-"):
            continue
        else:
            path += f".{part}" if path else part
    return path or "body"


def parse_batch(body: bytes) -> Batch:
    """The validated batch; a 400 naming every bad field otherwise.

    What agents send is read by `plain_batch`; anything it does not take (a wrong batch, or an
    unusual one) by pydantic (`BatchIn`), which accepts it alike or names what is wrong."""
    no_nul = b"\\u0000" not in body and b"\x00" not in body
    if no_nul:  # plain_batch knows no NUL check: BatchIn's validators do it
        found = plain_batch(body)
        if found is not None:
            return found
    return validated(body, no_nul)


def validated(body: bytes, no_nul: bool) -> Batch:
    """`parse_batch` through pydantic (`BatchIn`) whatever the body: every batch, wrong or
    not, is answered as this answers it. `no_nul`: the body holds no NUL character."""
    try:
        batch = BatchIn.model_validate_json(body, context={_NO_NUL: no_nul})
    except ValidationError as exc:
        problems = [
            InvalidParam(field_name(e["loc"]), str(e["msg"]).removeprefix("Value error, "))
            for e in exc.errors(include_url=False)[:50]
        ]
        raise bad_request(problems) from None
    strangers = [
        InvalidParam(f"rounds[{i}].source", f"{r.source!r} is not the batch's source")
        for i, r in enumerate(batch.rounds)
        if r.source != batch.source
    ]
    if strangers:
        raise bad_request(strangers[:50])
    misfits: list[InvalidParam] = []
    evidence: list[list[Evidence]] = []
    for i, r in enumerate(batch.rounds):
        decoded = []
        for j, s in enumerate(r.steps):
            try:
                decoded.append(s.decoded_evidence())
            except EvidenceError as error:
                misfits.append(InvalidParam(_evidence_path(i, j, error.field), error.problem))
        evidence.append(decoded)
    if misfits:
        raise bad_request(misfits[:50])
    return batch.batch(evidence)


def _evidence_path(round_index: int, step_index: int, inside: str) -> str:
    """`rounds[0].steps[2].evidence.attempts[0].ms`: where in the batch the evidence is wrong."""
    path = f"rounds[{round_index}].steps[{step_index}].evidence"
    if not inside:
        return path
    return f"{path}{inside}" if inside.startswith("[") else f"{path}.{inside}"


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body as JSON bytes, at most `limit` of them (413 past it, 415 not JSON).

    Read from the stream, not with `request.read()`, so the application's own
    client_max_size does not apply and a body past the limit is cut off without being held.
    """
    if request.content_type != "application/json":
        raise ApiError(
            415, "Unsupported Media Type", "send the batch as Content-Type: application/json"
        )
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "Content Too Large", f"a batch is at most {limit} bytes: send fewer rounds at once"
    )

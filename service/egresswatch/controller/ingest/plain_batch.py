"""The plain case of an agent's batch, read without pydantic: what agents send every time.

Validating a batch with pydantic (`BatchIn`) built a model per round and per step and ran
Python validators on each, about half of the controller's CPU per ingested round with the
evidence decoding (docs/performance.md, "Issue 14, third pass"). `plain_batch` parses the
body with the same JSON parser (pydantic-core's, so duplicate keys, numbers and escapes read
the same) and checks, in one pass, exactly what `BatchIn` and `parse_batch` check, making the
rounds directly. It accepts only what they accept, with the same values, and returns None for
anything else, wrong or merely unusual (a NUL, a time or number at an edge): `parse_batch` then
takes the pydantic path, which accepts it or says what is wrong with the same problem
document. So no answer can differ; `tests/test_plain_batch.py` checks it on generated and
damaged bodies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from pydantic_core import from_json

from egresswatch.controller.api.query import parse_time
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

__all__ = ["Batch", "plain_batch"]

# The limits BatchIn declares (batch_body.py imports them from here: one place).
BATCH_ID_MAX = 128  # storage.tables.ingest_batches.batch_id
NAME_MAX = 253
DETAIL_MAX = 4096
DURATION_MS_MAX = 86_400_000.0  # a day: longer is not a step's duration but a clock error

# query.NAME_PATTERN (`^[^\u0000-\u001f\u007f]+$`) as Python's re reads it.
_NAME = re.compile("[^\x00-\x1f\x7f]+")
_BATCH_KEYS = frozenset({"source", "source_kind", "source_node", "batch_id", "rounds"})
_ROUND_KEYS = frozenset(
    {"target", "source", "started_at", "steps"}
    | {"url", "ok", "first_failing_step", "first_failing_reason", "next_command"}
)
_STEP_KEYS = frozenset({"step", "status", "reason", "duration_ms", "detail", "evidence"})
E = TypeVar("E", bound=Enum)


def _by_value(members: Any) -> dict[str, Any]:
    return {member.value: member for member in members}


_PROBE_STEPS: dict[str, Step] = _by_value(PROBE_STEPS)
_STEPS: dict[str, Step] = _by_value(Step)
_STATUSES: dict[str, Status] = _by_value(Status)
_REASONS: dict[str, Reason] = _by_value(Reason)
_KINDS: dict[str, SourceKind] = _by_value(SourceKind)


class _NotPlain(Exception):
    """Not an error: the signal to take the pydantic path."""


@dataclass(frozen=True)
class Batch:
    """An agent's batch, validated: its source, what it says of it, its id and its rounds."""

    source: str
    source_kind: SourceKind | None
    source_node: str | None
    batch_id: str
    rounds: list[RoundResult]


def plain_batch(body: bytes) -> Batch | None:
    """The batch `body` holds when it is the plain case (see the module), else None.

    The caller has made sure the body holds no NUL character (`\\u0000` or a raw one)."""
    try:
        data = from_json(body)
        return _batch(data)
    except (ValueError, _NotPlain):  # not JSON (ValueError), or not plain: pydantic decides
        return None


def _batch(data: object) -> Batch:
    if type(data) is not dict or not data.keys() <= _BATCH_KEYS:
        raise _NotPlain
    source = _name(data.get("source"))
    kind = data.get("source_kind")
    node = data.get("source_node")
    batch_id = data.get("batch_id")
    if type(batch_id) is not str or len(batch_id) > BATCH_ID_MAX or not _NAME.fullmatch(batch_id):
        raise _NotPlain
    rounds = data.get("rounds")
    if type(rounds) is not list or not rounds:
        raise _NotPlain
    return Batch(
        source=source,
        source_kind=None if kind is None else _member(_KINDS, kind),
        source_node=None if node is None else _name(node),
        batch_id=batch_id,
        rounds=[_round(r, source) for r in rounds],
    )


def _round(data: object, source: str) -> RoundResult:
    if type(data) is not dict or not data.keys() <= _ROUND_KEYS:
        raise _NotPlain
    if _name(data.get("source")) != source:
        raise _NotPlain  # a stranger's round: parse_batch names it
    started = data.get("started_at")
    steps = data.get("steps")
    if (
        type(started) is not str
        or type(steps) is not list
        or not 1 <= len(steps) <= len(PROBE_STEPS)
    ):
        raise _NotPlain
    if len(data) > 4:  # the derived fields: ignored, but checked as BatchIn checks them
        _derived(data)
    results = tuple([_step(s) for s in steps])
    if len({s.step for s in results}) != len(results):
        raise _NotPlain  # a step twice
    return RoundResult(
        target=_name(data.get("target")),
        source=source,
        started_at=_time(started),
        steps=results,
    )


def _step(data: object) -> StepResult:
    if type(data) is not dict or not data.keys() <= _STEP_KEYS:
        raise _NotPlain
    step = _member(_PROBE_STEPS, data.get("step"))
    reason = data.get("reason")
    detail = data.get("detail", "")
    if type(detail) is not str or len(detail) > DETAIL_MAX:
        raise _NotPlain
    evidence = data.get("evidence", _EMPTY)
    if type(evidence) is not dict:
        raise _NotPlain
    return StepResult(
        step=step,
        status=_member(_STATUSES, data.get("status")),
        reason=None if reason is None else _member(_REASONS, reason),
        duration_s=_duration_ms(data.get("duration_ms")) / 1000.0,
        detail=detail,
        evidence=_evidence(step, evidence),
    )


_EMPTY: Mapping[str, Any] = {}


def _evidence(step: Step, data: object) -> Evidence:
    try:
        return evidence_from_json(step, data)
    except EvidenceError:
        raise _NotPlain from None


def _derived(data: dict[str, Any]) -> None:
    """The fields a round document derives, each of the type BatchIn declares, or null."""
    for key in ("url", "next_command"):
        if type(data.get(key, "")) is not str and data.get(key) is not None:
            raise _NotPlain
    if type(data.get("ok", True)) is not bool and data.get("ok") is not None:
        raise _NotPlain
    if data.get("first_failing_step") is not None:
        _member(_STEPS, data["first_failing_step"])
    if data.get("first_failing_reason") is not None:
        _member(_REASONS, data["first_failing_reason"])


def _name(value: object) -> str:
    if type(value) is not str or len(value) > NAME_MAX or not _NAME.fullmatch(value):
        raise _NotPlain
    return value


def _member(members: dict[str, E], value: object) -> E:
    if type(value) is not str:
        raise _NotPlain
    found = members.get(value)
    if found is None:
        raise _NotPlain
    return found


def _duration_ms(value: object) -> float:
    # pydantic's strict float takes a JSON integer too, as a float.
    if type(value) is float and math.isfinite(value) and 0 <= value <= DURATION_MS_MAX:
        return value
    if type(value) is int and 0 <= value <= DURATION_MS_MAX:
        return float(value)
    raise _NotPlain


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise _NotPlain from None
